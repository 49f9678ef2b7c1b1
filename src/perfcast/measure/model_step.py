"""Measure real model steps (prefill = TTFT, decode step = TPOT) to validate ``perfcast predict``.

    PYTHONPATH=src python3 -m perfcast.measure.model_step --cases CASES.jsonl --out OUT.jsonl
    PYTHONPATH=src python3 -m perfcast.measure.model_step --cases CASES.jsonl --out OUT.jsonl --tp 4

    PYTHONPATH=src python3 -m perfcast.measure.model_step --cases CASES.jsonl --out OUT.jsonl --pp 4
    PYTHONPATH=src python3 -m perfcast.measure.model_step --cases CASES.jsonl --out OUT.jsonl --tp 2 --pp 2

With ``--tp T`` and ``--pp P`` (world ``T * P > 1``) the script spawns the processes itself (one per
GPU, ``torch.multiprocessing``); it also runs under ``torchrun --nproc-per-node T*P -m
perfcast.measure.model_step ... --tp T --pp P``. Only the cases whose ``tp`` and ``pp`` equal the run's are
run (a case without them has 1); rank 0 writes. NVLink multicast is forced off before NCCL starts.

A case line holds ``perfcast predict``'s fields ``model, batch, prompt, context, tp, runtime`` and
optionally ``layers`` (fewer decoder layers, for quick runs), ``measure`` (``"prefill"``,
``"decode"`` or ``"both"``, the default) and ``impl`` (``"hf"`` or ``"plain"``; default: ``hf`` for
``eager`` at tp 1, else ``plain``). References, as the contract defines the runtimes:

- ``cuda-graph``: the plain decoder (decoder.py) captured whole in one ``torch.cuda.CUDAGraph`` after
  warm-up; replays timed with CUDA events.
- ``eager``: tp 1, the HF transformers model (hf_step.py); tp > 1, the plain decoder run eagerly.
  Host clock around the step after ``torch.cuda.synchronize()``.

Pipeline parallel (``--pp N``, case fields ``pp`` and ``microbatches``): stage r holds its
contiguous slice of the plain decoder's layers, split as vLLM splits them
(``perfcast.step.memory.stage_layers``; the embedding on rank 0, the final norm and LM head on the
last). The batch runs as ``microbatches`` (default 1, must divide ``batch``) equal micro-batches, GPipe
forward only: per micro-batch, ``recv`` the hidden states from rank r-1, run the stage, ``send`` to
rank r+1 (``torch.distributed`` send/recv: NCCL on GPUs, gloo with ``--device cpu``). Decode attends
over a KV cache of ``context`` tokens per stage, each micro-batch over its own batch rows.
``cuda-graph``: each rank captures its stage's forward, one CUDA graph per micro-batch, and the
send/recv run eagerly between replays (as vLLM runs its pipeline stages); ``eager``: the stages run
eagerly. Each rep: barrier, then the host clock around the whole schedule until the GPU is done; the
slowest rank sets the rep (``{phase}_ms`` is the time of all micro-batches). ``{phase}_stage_ms`` lists
each stage's median compute time for one micro-batch (CUDA events around the stage's forward, so
without its send/recv waits).

Tensor and pipeline parallel together (``--tp T --pp P``, world ``T * P``): ranks laid out as vLLM and
Megatron lay them, stage s on ranks ``[s*T, (s+1)*T)`` (rank ``s*T + t`` is TP rank t of stage s). Each
stage is the TP plain decoder over its layers, its all-reduces (and the last stage's logits gather) on
that stage's own TP group (``new_group`` per stage, all created on every rank in stage order). The
hidden states after a stage's last all-reduce are replicated over its TP ranks, so rank (s, t) sends
its full copy to rank (s+1, t) and receives from (s-1, t), as vLLM does. Timing as above; under
cuda-graph each rank's captured stage graph holds its TP all-reduces. ``{phase}_stage_ms[s]`` is the
max over stage s's TP ranks of their median forward time (the line says ``stage_ms_over_tp: "max"``).

Each rep count adapts to about one second per measurement (at least 10 for graphs, 5 for eager);
the median, min and p90 are written (under TP, per rep the slowest rank). A case that does not fit
in free GPU memory writes ``{"error": "oom", ...}``; any other failure writes its message; the run goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import socket
import sys
import time

SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
MARGIN_BYTES = 1 << 30  # headroom kept free beyond the estimate
TARGET_S = float(os.environ.get("PERFCAST_MEASURE_TARGET_S", "1.0"))  # seconds of reps per measurement


def set_safe_env() -> None:
    """NVLink multicast off (it can hang shared hosts). Call before torch.distributed starts."""
    os.environ.update(SAFE_ENV)


def gpu_id(name: str, total_bytes: int = 80 * 10**9) -> str:
    """perfcast's GPU id for a CUDA device name, by the calibration harness's rule (env.gpu_id_guess)."""
    from perfcast.measure.env import gpu_id_guess

    return gpu_id_guess(name, total_bytes)


def env_info(device: str = "cuda") -> dict:
    """GPU name and id, software versions and the date (from env.collect): provenance for every line."""
    import torch

    from perfcast.measure.env import collect

    m = collect(torch, device if torch.cuda.is_available() else "cpu")
    try:
        import transformers

        tf = transformers.__version__
    except ImportError:
        tf = None
    return {"gpu": m["gpu_name"], "gpu_id": m["gpu_id"], "torch": m["torch_version"], "cuda": m["cuda_version"],
            "transformers": tf, "driver": m.get("driver_version"), "date": m["date_utc"][:10],
            "sm_clock_mhz": m.get("clocks", {}).get("sm_clock_mhz"),
            "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "pinned": os.environ.get("PERFCAST_PINNED") == "1"}


def _core_of(cpu: int) -> int:
    """The physical core a logical CPU belongs to (the first CPU of its hyperthread siblings)."""
    try:
        with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") as f:
            first = f.read().strip().split(",")[0]
        return int(first.split("-")[0])
    except (OSError, ValueError):
        return cpu


def pin_slices(cpus, world: int, core_of=None) -> list[list[int]]:
    """Disjoint CPU sets, one per rank: the physical cores among ``cpus`` (hyperthread siblings kept
    together, by ``core_of``) split into ``world`` contiguous runs of equal size (the remainder unused).
    Fewer cores than ranks: whole cores round-robin (ranks then share cores)."""
    core_of = core_of or (lambda c: c)
    cores: dict[int, list[int]] = {}
    for c in sorted(cpus):
        cores.setdefault(core_of(c), []).append(c)
    groups = [cores[k] for k in sorted(cores)]
    if not groups or world < 1:
        raise ValueError("pin_slices: no CPUs or no ranks")
    per = len(groups) // world
    if per == 0:
        return [groups[r % len(groups)] for r in range(world)]
    return [[c for g in groups[r * per:(r + 1) * per] for c in g] for r in range(world)]


def _pin(local: int, world: int, torch) -> None:
    """``--pin``: bind this rank to its own slice of physical cores (:func:`pin_slices`) and size torch's
    CPU thread pool to it, so ranks' Python dispatch threads do not migrate or share cores."""
    mine = pin_slices(os.sched_getaffinity(0), world, _core_of)[local]
    os.sched_setaffinity(0, mine)
    torch.set_num_threads(max(1, len({_core_of(c) for c in mine})))
    os.environ["PERFCAST_PINNED"] = "1"


def summarize(times_ms: list[float]) -> dict:
    """median / min / p90 (nearest rank) of a list of times in ms."""
    t = sorted(times_ms)
    n = len(t)
    med = t[n // 2] if n % 2 else 0.5 * (t[n // 2 - 1] + t[n // 2])
    return {"ms": med, "min_ms": t[0], "p90_ms": t[min(n - 1, int(0.9 * n))], "reps": n}


# ---------------------------------------------------------------------------------- timing
def _dist_on() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _all_max(values: list[float], device) -> list[float]:
    """Element-wise max over the ranks (the slowest rank sets each rep's time)."""
    import torch
    import torch.distributed as dist

    if not _dist_on():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def _n_reps(t_one_ms: float, lo: int, hi: int, device) -> int:
    t = max(_all_max([t_one_ms], device)[0], 1e-3)
    return int(min(hi, max(lo, round(TARGET_S * 1e3 / t))))


def time_eager(fn, prep, device, warmup: int = 3, lo: int = 5, hi: int = 100) -> list[float]:
    """Host clock around ``fn()`` + synchronize; ``prep()`` (untimed) runs before each call."""
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def once() -> float:
        if prep:
            prep()
        if _dist_on():
            torch.distributed.barrier()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return (time.perf_counter() - t0) * 1e3

    for _ in range(warmup):
        once()
    reps = _n_reps(once(), lo, hi, device)
    gc.collect()
    gc.disable()  # no collector pauses inside the timed host loop
    try:
        times = [once() for _ in range(reps)]
    finally:
        gc.enable()
    return _all_max(times, device)


def time_graph(fn, device, lo: int = 10, hi: int = 200) -> list[float]:
    """Capture ``fn`` in a CUDA graph after a warm-up on a side stream; time replays with events."""
    import torch

    from perfcast.measure.timing import capture_graph

    g = capture_graph(torch, fn, warmup=2, error_mode="thread_local" if _dist_on() else "global")
    t0 = time.perf_counter()
    g.replay()
    torch.cuda.synchronize()
    reps = _n_reps((time.perf_counter() - t0) * 1e3, lo, hi, device)
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for a, b in ev:
        a.record()
        g.replay()
        b.record()
    torch.cuda.synchronize()
    times = [a.elapsed_time(b) for a, b in ev]
    del g
    return _all_max(times, device)


# ---------------------------------------------------------------------------------- cases
class CaseError(ValueError):
    """A case line that cannot be run as written (found before any GPU work, the same on every rank)."""


def _phases(case: dict) -> list[str]:
    m = case.get("measure", "both")
    if m not in ("prefill", "decode", "both"):
        raise CaseError(f"measure must be prefill, decode or both, got {m!r}")
    return ["prefill", "decode"] if m == "both" else [m]


def _impl(case: dict) -> str:
    tp, pp = int(case.get("tp", 1)), _pp(case)
    default = "hf" if case.get("runtime", "cuda-graph") == "eager" and tp == 1 and pp == 1 else "plain"
    impl = case.get("impl", default)
    if impl not in ("hf", "plain") or (impl == "hf" and tp * pp > 1):
        raise CaseError(f"impl must be 'plain' or (at tp 1 and pp 1) 'hf', got {impl!r}")
    return impl


def _pp(case: dict) -> int:
    try:
        pp = int(case.get("pp", 1) or 1)
    except (TypeError, ValueError):
        raise CaseError(f"pp must be a positive integer, got {case.get('pp')!r}") from None
    if pp < 1:
        raise CaseError(f"pp must be a positive integer, got {pp}")
    return pp


def _microbatches(case: dict, batch: int) -> int:
    """Micro-batches of a pipeline case: a positive divisor of ``batch`` (default 1)."""
    m = case.get("microbatches", 1)
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise CaseError(f"microbatches must be a positive integer, got {m!r}")
    if m > batch or batch % m:
        raise CaseError(f"microbatches={m} must divide batch={batch} (equal micro-batches of at least one sequence)")
    return m


def _free_bytes(device) -> int:
    import torch

    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 1 << 62


class _Group:
    """One built model (plain decoder or HF) shared by consecutive cases with the same key."""

    def __init__(self, model: str, layers, impl: str, device, dtype, rank: int, world: int, pp: int = 1,
                 tp_group=None, fp8: bool = False):
        import torch

        from perfcast.models import get_model

        self.impl, self.device, self.pp, self.rank = impl, device, pp, rank
        self.tp = world // pp  # ranks per stage (tensor-parallel group size)
        if impl == "hf":
            if fp8:
                raise CaseError("fp8 runs the plain decoder only (impl hf has no FP8 path here)")
            from perfcast.measure import hf_step

            self.m = hf_step.build(model, layers, device, dtype)
            self.n_layers = self.m.config.get_text_config().num_hidden_layers
            self.weights = hf_step.weight_bytes(self.m)
        else:
            from perfcast.measure.decoder import Decoder

            spec = get_model(model)
            if layers:
                spec = spec.with_layers(int(layers))
            if pp > 1:
                from perfcast.step.memory import stage_layers

                if pp > spec.n_layers:
                    raise CaseError(f"pp={pp} exceeds the {spec.n_layers} layers")
                stage = stage_layers(spec.n_layers, pp)[rank // self.tp]  # stage s: ranks [s*tp, (s+1)*tp)
                self.m = Decoder(spec, device=device, dtype=dtype, stage=stage, tp_rank=rank % self.tp,
                                 tp_size=self.tp, group=tp_group, fp8=fp8)
                self.stage = [stage.start, stage.stop]
            else:
                self.m = Decoder(spec, device=device, dtype=dtype, tp_rank=rank, tp_size=world, fp8=fp8)
            self.n_layers = spec.n_layers
            self.weights = self.m.weight_bytes()
        if device.type == "cuda":
            torch.cuda.synchronize()

    def need_bytes(self, phase: str, batch: int, prompt: int, context: int, microbatches: int = 1) -> int:
        if self.impl == "hf":
            from perfcast.measure import hf_step

            if phase == "prefill":
                act = batch * prompt * 12 * (self.m.config.get_text_config().hidden_size
                                             + self.m.config.get_text_config().intermediate_size)
                return hf_step.cache_bytes(self.m, batch, prompt) + act
            return 2 * hf_step.cache_bytes(self.m, batch, context + 1) + batch * (1 << 20)
        length = prompt if phase == "prefill" else context + 1
        tokens = batch * (prompt if phase == "prefill" else 1)
        if self.pp > 1:  # one micro-batch's activations, plus each micro-batch's input and output buffers
            esz = torch_esz(self.m.dtype)
            return (self.m.cache_bytes(batch, length) + self.m.activation_bytes(tokens // microbatches)
                    + 2 * tokens * self.m.spec.hidden * esz)
        return self.m.cache_bytes(batch, length) + self.m.activation_bytes(tokens)

    def step(self, phase: str, batch: int, prompt: int, context: int):
        """``(prep, fn)`` for one phase; allocates what the phase needs."""
        import torch

        if self.impl == "hf":
            from perfcast.measure import hf_step

            if phase == "prefill":
                return hf_step.prefill_step(self.m, batch, prompt)
            return hf_step.decode_step(self.m, batch, context)
        d = self.m
        q_len = prompt if phase == "prefill" else 1
        d.alloc_cache(batch, prompt if phase == "prefill" else context + 1)
        ids = torch.randint(0, d.spec.vocab, (batch, q_len), device=self.device)
        if phase == "prefill":
            pos = torch.arange(prompt, device=self.device)
            return None, lambda: d.forward(ids, pos, None)
        pos = torch.tensor([context], device=self.device)
        return None, lambda: d.forward(ids, pos, context + 1)

    def release(self) -> None:
        if self.impl == "plain":
            self.m.free_cache()


def torch_esz(dtype) -> int:
    import torch

    return torch.finfo(dtype).bits // 8


class _Pipe:
    """One rank's part of a pipeline phase: ``microbatches`` x (recv -> this stage -> send).

    ``graphs``: the stage's forward is captured once per micro-batch (static input and output
    buffers, one shared memory pool) and replayed; the send/recv stay eager, between replays."""

    def __init__(self, d, phase: str, batch: int, prompt: int, context: int, microbatches: int, rank: int,
                 graphs: bool, tp: int = 1):
        import torch

        dev = d.device
        self.d, self.rank, self.n, self.tp = d, rank, microbatches, tp
        bm = batch // microbatches
        q = prompt if phase == "prefill" else 1
        d.alloc_cache(batch, prompt if phase == "prefill" else context + 1)
        if phase == "prefill":
            self.pos, self.kv_len = torch.arange(prompt, device=dev), None
        else:
            self.pos, self.kv_len = torch.tensor([context], device=dev), context + 1
        self.rows = [slice(m * bm, (m + 1) * bm) for m in range(microbatches)]
        if d.first:
            self.inp = [torch.randint(0, d.spec.vocab, (bm, q), device=dev) for _ in range(microbatches)]
        else:  # receive buffers (random until the first receive: never NaN in a warm-up)
            self.inp = [torch.empty((bm, q, d.spec.hidden), device=dev, dtype=d.dtype).normal_(0.0, 1.0)
                        for _ in range(microbatches)]
        self.graphs = self.out = None
        if graphs:
            self._capture()

    def _stage(self, m: int):
        return self.d.forward_stage(self.inp[m], self.pos, self.kv_len, self.rows[m])

    def _capture(self) -> None:
        import torch

        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                for m in range(self.n):
                    self._stage(m)
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        pool = torch.cuda.graph_pool_handle()
        self.graphs, self.out = [], []
        for m in range(self.n):  # replayed in capture order, so the micro-batches may share one pool
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool, capture_error_mode="thread_local"):
                y = self._stage(m)
            self.graphs.append(g)
            self.out.append(y)
        torch.cuda.synchronize()

    def run(self, stamps=None) -> None:
        import torch.distributed as dist

        d = self.d
        for m in range(self.n):
            if not d.first:
                dist.recv(self.inp[m], self.rank - self.tp)  # same TP rank, previous stage
            if stamps is not None:
                stamps.begin()
            if self.graphs is not None:
                self.graphs[m].replay()
                y = self.out[m]
            else:
                y = self._stage(m)
            if stamps is not None:
                stamps.end()
            if not d.last:
                dist.send(y, self.rank + self.tp)  # replicated hidden states: each TP rank its peer

    def close(self) -> None:
        self.graphs = self.out = self.inp = None
        self.d.free_cache()


class _Stamps:
    """Start/end marks around each stage forward: CUDA events on a GPU, the host clock on the CPU."""

    def __init__(self, device, n: int):
        import torch

        self.cuda = device.type == "cuda"
        if self.cuda:
            self.ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                       for _ in range(n)]
        else:
            self.ev = [[0.0, 0.0] for _ in range(n)]
        self.i = 0

    def begin(self) -> None:
        if self.cuda:
            self.ev[self.i][0].record()
        else:
            self.ev[self.i][0] = time.perf_counter()

    def end(self) -> None:
        if self.cuda:
            self.ev[self.i][1].record()
        else:
            self.ev[self.i][1] = time.perf_counter()
        self.i += 1

    def ms(self) -> list[float]:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in self.ev[: self.i]]
        return [(b - a) * 1e3 for a, b in self.ev[: self.i]]


def time_pipeline(pipe: _Pipe, device, pp: int, lo: int = 5, hi: int = 100) -> tuple[list[float], list[float]]:
    """Per rep: barrier, host clock around the whole schedule until this rank's GPU is done; the
    slowest rank sets each rep. Also each stage's median forward time per micro-batch (all ranks): under
    TP the max over the stage's TP ranks (stage ``rank // tp``)."""
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def once(stamps=None) -> float:
        if _dist_on():
            torch.distributed.barrier()
        sync()
        t0 = time.perf_counter()
        pipe.run(stamps)
        sync()
        return (time.perf_counter() - t0) * 1e3

    for _ in range(3):
        once()
    reps = _n_reps(once(), lo, hi, device)
    stamps = _Stamps(device, reps * pipe.n)
    gc.collect()
    gc.disable()
    try:
        times = [once(stamps) for _ in range(reps)]
    finally:
        gc.enable()
    own = summarize(stamps.ms())["ms"]
    stage = [own if s == pipe.rank // pipe.tp else 0.0 for s in range(pp)]
    return _all_max(times, device), _all_max(stage, device)


def _cleanup(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _agree(ok: bool, device) -> bool:
    """True when every rank says ok (a no-op without torch.distributed)."""
    return _all_max([0.0 if ok else 1.0], device)[0] == 0.0


def run_case(group: _Group, case: dict, device) -> dict:
    """Measure one case with a built group; returns the result fields (or an error)."""
    import torch

    try:
        b, prompt, context = int(case["batch"]), int(case["prompt"]), int(case["context"])
    except (KeyError, TypeError, ValueError) as e:
        raise CaseError(f"batch, prompt and context must be integers ({e})") from None
    if min(b, prompt, context) < 1:
        raise CaseError("batch, prompt and context must be positive")
    runtime = case.get("runtime", "cuda-graph")
    if runtime not in ("cuda-graph", "eager"):
        raise CaseError(f"runtime must be cuda-graph or eager, got {runtime!r}")
    if runtime == "cuda-graph" and device.type != "cuda":
        raise CaseError("runtime cuda-graph needs a CUDA device")
    res = {"impl": "hf-transformers" if group.impl == "hf" else "plain-decoder", "layers": group.n_layers,
           "weights_gib": round(group.weights / 2**30, 3)}
    if group.pp > 1:
        return _run_pipeline(group, case, device, b, prompt, context, runtime, res)
    for phase in _phases(case):
        need = group.need_bytes(phase, b, prompt, context)
        fits = need + MARGIN_BYTES < _free_bytes(device)
        if not _agree(fits, device):
            return {**res, "error": "oom", "need_gib": round(need / 2**30, 2)}
        try:
            prep, fn = group.step(phase, b, prompt, context)
            ok = True
        except torch.OutOfMemoryError:
            prep = fn = None
            ok = False
        if not _agree(ok, device):
            group.release()
            _cleanup(device)
            return {**res, "error": "oom", "need_gib": round(need / 2**30, 2)}
        try:
            if runtime == "cuda-graph":
                times = time_graph(fn, device)
            else:
                times = time_eager(fn, prep, device)
        finally:
            prep = fn = None
            group.release()
            _cleanup(device)
        st = summarize(times)
        res.update({f"{phase}_ms": st["ms"], f"{phase}_min_ms": st["min_ms"],
                    f"{phase}_p90_ms": st["p90_ms"], f"{phase}_reps": st["reps"]})
    if group.impl == "hf" and "decode" in _phases(case):
        res["hf_cache"] = "DynamicCache"
    return res


def _run_pipeline(group: _Group, case: dict, device, b: int, prompt: int, context: int, runtime: str,
                  res: dict) -> dict:
    """One pipeline case on this rank (every rank runs it; the slowest rank sets each rep)."""
    import torch

    m = _microbatches(case, b)
    pp, tp = group.pp, group.tp
    res = {**res, "impl": "plain-decoder-pp", "microbatches": m, "stages": _all_stages(group, device),
           "weights_gib": round(max(_all_max([group.weights / 2**30], device)[0], 0.0), 3),
           "pp_schedule": "gpipe-forward" + (": cuda graph per stage and micro-batch, eager send/recv"
                                             if runtime == "cuda-graph" else ": eager")}
    if tp > 1:  # each {phase}_stage_ms entry: the slowest of the stage's TP ranks
        res["stage_ms_over_tp"] = "max"
    for phase in _phases(case):
        need = group.need_bytes(phase, b, prompt, context, m)
        if not _agree(need + MARGIN_BYTES < _free_bytes(device), device):
            return {**res, "error": "oom", "need_gib": round(need / 2**30, 2)}
        pipe, err = None, "oom"
        try:  # set-up and graph capture touch no other rank: a failure here is an error line
            pipe = _Pipe(group.m, phase, b, prompt, context, m, group.rank, runtime == "cuda-graph", tp)
        except torch.OutOfMemoryError:
            pipe = None
        except Exception as e:
            pipe, err = None, f"{phase} set-up failed: {type(e).__name__}: {e}"
        if not _agree(pipe is not None, device):
            if pipe is not None:
                err = f"{phase} set-up failed on another rank (oom or graph capture)"
                pipe.close()
            group.release()
            _cleanup(device)
            return {**res, "error": err, "need_gib": round(need / 2**30, 2)}
        try:
            graph = runtime == "cuda-graph"
            times, stage = time_pipeline(pipe, device, pp, lo=10 if graph else 5, hi=200 if graph else 100)
        finally:
            pipe.close()
            pipe = None
            group.release()
            _cleanup(device)
        st = summarize(times)
        res.update({f"{phase}_ms": st["ms"], f"{phase}_min_ms": st["min_ms"], f"{phase}_p90_ms": st["p90_ms"],
                    f"{phase}_reps": st["reps"], f"{phase}_stage_ms": [round(x, 5) for x in stage]})
    return res


def _all_stages(group: _Group, device) -> list[list[int]]:
    """Every stage's [first layer, last layer + 1]."""
    flat = [0.0] * (2 * group.pp)
    s = group.rank // group.tp
    flat[2 * s: 2 * s + 2] = [float(x) for x in group.stage]
    flat = _all_max(flat, device)
    return [[int(flat[2 * r]), int(flat[2 * r + 1])] for r in range(group.pp)]


def _group_cases(todo: list) -> dict:
    """Cases keyed by model build (model, layers, impl), in the order of first appearance."""
    keys: dict = {}
    for i, c in todo:
        try:
            k = (c["model"], c.get("layers"), _impl(c))
        except KeyError as e:
            k = ("__bad__", f"missing field {e}", "")
        except CaseError as e:
            k = ("__bad__", str(e), "")
        keys.setdefault(k, []).append((i, c))
    return keys


def _build(model, layers, impl, device, dtype, rank, world, pp: int = 1, tp_group=None, fp8: bool = False):
    """``(group, None)`` or ``(None, error message)``; every rank learns whether all builds worked."""
    import torch

    group, err = None, None
    if model == "__bad__":
        return None, layers  # the key carries the message
    try:
        group = _Group(model, layers, impl, device, dtype, rank, world, pp, tp_group, fp8)
    except torch.OutOfMemoryError:
        err = "oom"
    except Exception as e:
        err = f"{type(e).__name__}: {e}"
    if not _agree(group is not None, device):
        return None, err or "model build failed on another rank"
    return group, None


def _measure(group, case: dict, device, world: int) -> dict:
    import torch

    try:
        return run_case(group, case, device)
    except CaseError as e:
        return {"error": str(e)}
    except torch.OutOfMemoryError:
        _cleanup(device)
        return {"error": "oom"}
    except Exception as e:
        if world > 1:
            raise  # ranks may be out of step: stop rather than hang
        _cleanup(device)
        return {"error": f"{type(e).__name__}: {e}"}


def _selected(c: dict, tp: int, pp: int) -> bool:
    try:
        return int(c.get("tp", 1) or 1) == tp and int(c.get("pp", 1) or 1) == pp
    except (TypeError, ValueError):
        return tp == 1 and pp == 1  # a malformed line errors in the single-GPU run


def run(cases: list[dict], out_path: str, device_kind: str = "cuda", dtype_name: str = "bf16",
        rank: int = 0, world: int = 1, pp: int = 1) -> int:
    """Run every case whose tp equals ``world // pp`` and whose pp equals ``pp`` (``pp`` 1: tensor
    parallel over all ranks; ``pp > 1``: ``world // pp`` ranks per stage); rank 0 writes JSONL. Returns
    the number of errors."""
    import torch

    # fp8: e4m3 linear weights and _scaled_mm, bf16 activations (decoder.Decoder fp8)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp8": torch.bfloat16}[dtype_name]
    device = torch.device("cuda", torch.cuda.current_device()) if device_kind == "cuda" else torch.device("cpu")
    info = {**env_info(device_kind), "dtype": dtype_name}
    if world > 1 and device.type == "cuda":
        info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    if pp < 1 or world % pp:
        raise ValueError(f"a pipeline run has tp ranks per stage: pp {pp} does not divide world {world}")
    tp = world // pp
    tp_group = _tp_groups(rank, tp, pp) if pp > 1 and tp > 1 else None
    todo = [(i, c) for i, c in enumerate(cases) if _selected(c, tp, pp)]
    if rank == 0:
        print(f"{len(todo)} of {len(cases)} cases have tp={tp} pp={pp}; device {info['gpu']} ({info['gpu_id']})",
              flush=True)
    rows, t_start = [], time.perf_counter()
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(out_path, "w")) if rank == 0 else None
        for (model, layers, impl), items in _group_cases(todo).items():
            group, err = _build(model, layers, impl, device, dtype, rank, world, pp, tp_group, dtype_name == "fp8")
            for i, c in items:
                t0 = time.perf_counter()
                res = {"error": err} if err else _measure(group, c, device, world)
                par = {"tp": tp, "pp": pp, "microbatches": c.get("microbatches", 1)} if pp > 1 else {"tp": world}
                rows.append({**c, **par, "case": i, **res, **info})
                if out:  # written as measured: a killed run keeps what it has
                    out.write(json.dumps(rows[-1]) + "\n")
                    out.flush()
                    shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()
                             if k in ("prefill_ms", "decode_ms", "error")}
                    mb = f" tp={tp} pp={pp} M={c.get('microbatches', 1)}" if pp > 1 else ""
                    print(f"[{time.perf_counter() - t_start:6.1f}s] #{i} {model} L={c.get('layers', 'all')} "
                          f"{c.get('runtime')} b={c.get('batch')} p={c.get('prompt')} c={c.get('context')}{mb} "
                          f"{shown} ({time.perf_counter() - t0:.1f}s)", flush=True)
            group = None
            _cleanup(device)
    if out:  # finally in the case file's order
        with open(out_path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in sorted(rows, key=lambda r: r["case"]))
    return sum("error" in r for r in rows)


def _tp_groups(rank: int, tp: int, pp: int):
    """The TP group of ``rank``'s stage (stage s holds ranks [s*tp, (s+1)*tp), as vLLM and Megatron lay
    them out). ``new_group`` is collective: every rank creates every stage's group, in stage order."""
    import torch.distributed as dist

    mine = None
    for s in range(pp):
        g = dist.new_group(ranks=list(range(s * tp, (s + 1) * tp)))
        if rank // tp == s:
            mine = g
    return mine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(local_rank: int, args, world: int, port: int) -> None:
    os.environ.update({"RANK": str(local_rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    _main_dist(args)


def _main_dist(args) -> int:
    import datetime

    import torch
    import torch.distributed as dist

    set_safe_env()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    timeout = datetime.timedelta(minutes=5)
    if getattr(args, "pin", False):
        _pin(local, world, torch)
    if args.device == "cuda":
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local), timeout=timeout)
    else:  # gloo on the CPU: smoke tests of the tensor- and pipeline-parallel paths
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # ranks share the cores
        dist.init_process_group("gloo", timeout=timeout)
    try:
        with torch.inference_mode():
            errs = run(_read_cases(args.cases), args.out, args.device, args.dtype, rank, world, args.pp)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return errs


def _read_cases(path: str) -> list[dict]:
    with contextlib.ExitStack() as stack:
        f = sys.stdin if path == "-" else stack.enter_context(open(path))
        return [json.loads(line) for line in f if line.strip() and not line.lstrip().startswith("#")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m perfcast.measure.model_step", description=__doc__.split("\n")[0])
    p.add_argument("--cases", default=None, help="JSONL case file ('-' = stdin)")
    p.add_argument("--out", default="perfcast_measure.jsonl", help="JSONL output (rank 0 writes)")
    p.add_argument("--model", default=None, help="single case: a model id or config path (with --batch ...)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--context", type=int, default=None)
    p.add_argument("--runtime", default="cuda-graph", choices=("cuda-graph", "eager"))
    p.add_argument("--no-compare", action="store_true", help="do not print measured vs predicted")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size: run the cases with this tp")
    p.add_argument("--pp", type=int, default=1,
                   help="pipeline-parallel size: --tp processes per stage (world tp x pp, one per GPU); "
                        "run the cases with this tp and pp")
    p.add_argument("--microbatches", type=int, default=1, help="single case: micro-batches of a --pp run")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: eager smoke tests only")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32", "fp8"), default="bf16",
                   help="fp8: e4m3 weights of the layers' linears through torch._scaled_mm, bf16 activations")
    p.add_argument("--pin", action="store_true",
                   help="tp/pp > 1: bind each rank to its own slice of physical cores (an A/B of host noise)")
    args = p.parse_args(argv)
    if args.cases is None:
        if args.model is None:
            p.error("give --cases FILE or --model M (with --batch/--prompt/--context/--runtime/--tp)")
        import tempfile

        case = {"model": args.model, "batch": args.batch, "prompt": args.prompt,
                "context": args.prompt if args.context is None else args.context, "tp": args.tp,
                "runtime": args.runtime}
        if args.pp > 1:
            case.update({"pp": args.pp, "microbatches": args.microbatches})
        fd, args.cases = tempfile.mkstemp(suffix=".jsonl")
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(case) + "\n")
    rc = _run_cases(p, args)
    if not args.no_compare and os.path.isfile(args.out) and int(os.environ.get("RANK", "0")) == 0:
        from perfcast.measure.compare import compare_lines, format_rows

        lines = [json.loads(x) for x in open(args.out) if x.strip()]
        try:
            print(format_rows(compare_lines(lines)))
        except Exception as e:  # the measurements are written; a comparison bug must not cost them
            print(f"model_step: comparison failed ({type(e).__name__}: {e}); measurements in {args.out}",
                  file=sys.stderr)
    return rc


def _run_cases(p, args) -> int:
    set_safe_env()
    if args.tp < 1 or args.pp < 1:
        p.error("--tp and --pp must be positive")
    world = args.tp * args.pp
    if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun
        if args.pp > 1 and int(os.environ["WORLD_SIZE"]) != world:
            p.error(f"torchrun started {os.environ['WORLD_SIZE']} ranks; --tp {args.tp} x --pp {args.pp} needs {world}")
        return 1 if _main_dist(args) else 0
    if world > 1:
        import torch.multiprocessing as mp

        try:
            mp.spawn(_worker, args=(args, world, _free_port()), nprocs=world, join=True)
        except Exception as e:
            print(f"model_step: a rank failed: {e}", file=sys.stderr)
            return 3
        with open(args.out) as f:
            return 1 if any("error" in json.loads(x) for x in f if x.strip()) else 0
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device: use --device cpu for a smoke test")
    with torch.inference_mode():
        errs = run(_read_cases(args.cases), args.out, args.device, args.dtype)
    return 1 if errs else 0


if __name__ == "__main__":
    sys.exit(main())
