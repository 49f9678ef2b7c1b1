"""Measure real model steps (prefill = TTFT, decode step = TPOT) to validate ``perfcast predict``.

    PYTHONPATH=src python3 -m perfcast.measure.model_step --cases CASES.jsonl --out OUT.jsonl
    PYTHONPATH=src python3 -m perfcast.measure.model_step --cases CASES.jsonl --out OUT.jsonl --tp 4

With ``--tp N > 1`` the script spawns N processes itself (one per GPU, ``torch.multiprocessing``);
it also runs under ``torchrun --nproc-per-node N -m perfcast.measure.model_step ... --tp N``. Only the
cases whose ``tp`` equals N are run; rank 0 writes. NVLink multicast is forced off before NCCL starts.

A case line holds ``perfcast predict``'s fields ``model, batch, prompt, context, tp, runtime`` and
optionally ``layers`` (fewer decoder layers, for quick runs), ``measure`` (``"prefill"``,
``"decode"`` or ``"both"``, the default) and ``impl`` (``"hf"`` or ``"plain"``; default: ``hf`` for
``eager`` at tp 1, else ``plain``). References, as the contract defines the runtimes:

- ``cuda-graph``: the plain decoder (decoder.py) captured whole in one ``torch.cuda.CUDAGraph`` after
  warm-up; replays timed with CUDA events.
- ``eager``: tp 1, the HF transformers model (hf_step.py); tp > 1, the plain decoder run eagerly.
  Host clock around the step after ``torch.cuda.synchronize()``.

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
            "sm_clock_mhz": m.get("clocks", {}).get("sm_clock_mhz")}


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

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    mode = "thread_local" if _dist_on() else "global"
    with torch.cuda.graph(g, capture_error_mode=mode):
        fn()
    g.replay()
    torch.cuda.synchronize()
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
    tp = int(case.get("tp", 1))
    default = "hf" if case.get("runtime", "cuda-graph") == "eager" and tp == 1 else "plain"
    impl = case.get("impl", default)
    if impl not in ("hf", "plain") or (impl == "hf" and tp > 1):
        raise CaseError(f"impl must be 'plain' or (at tp 1) 'hf', got {impl!r}")
    return impl


def _free_bytes(device) -> int:
    import torch

    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 1 << 62


class _Group:
    """One built model (plain decoder or HF) shared by consecutive cases with the same key."""

    def __init__(self, model: str, layers, impl: str, device, dtype, rank: int, world: int):
        import torch

        from perfcast.models import get_model

        self.impl, self.device = impl, device
        if impl == "hf":
            from perfcast.measure import hf_step

            self.m = hf_step.build(model, layers, device, dtype)
            self.n_layers = self.m.config.get_text_config().num_hidden_layers
            self.weights = hf_step.weight_bytes(self.m)
        else:
            from perfcast.measure.decoder import Decoder

            spec = get_model(model)
            if layers:
                spec = spec.with_layers(int(layers))
            self.m = Decoder(spec, device=device, dtype=dtype, tp_rank=rank, tp_size=world)
            self.n_layers = spec.n_layers
            self.weights = self.m.weight_bytes()
        if device.type == "cuda":
            torch.cuda.synchronize()

    def need_bytes(self, phase: str, batch: int, prompt: int, context: int) -> int:
        if self.impl == "hf":
            from perfcast.measure import hf_step

            if phase == "prefill":
                act = batch * prompt * 12 * (self.m.config.get_text_config().hidden_size
                                             + self.m.config.get_text_config().intermediate_size)
                return hf_step.cache_bytes(self.m, batch, prompt) + act
            return 2 * hf_step.cache_bytes(self.m, batch, context + 1) + batch * (1 << 20)
        length = prompt if phase == "prefill" else context + 1
        tokens = batch * (prompt if phase == "prefill" else 1)
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


def _build(model, layers, impl, device, dtype, rank, world):
    """``(group, None)`` or ``(None, error message)``; every rank learns whether all builds worked."""
    import torch

    group, err = None, None
    if model == "__bad__":
        return None, layers  # the key carries the message
    try:
        group = _Group(model, layers, impl, device, dtype, rank, world)
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


def run(cases: list[dict], out_path: str, device_kind: str = "cuda", dtype_name: str = "bf16",
        rank: int = 0, world: int = 1) -> int:
    """Run every case whose tp equals ``world``; rank 0 writes JSONL. Returns the number of errors."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    device = torch.device("cuda", torch.cuda.current_device()) if device_kind == "cuda" else torch.device("cpu")
    info = {**env_info(device_kind), "dtype": dtype_name}
    if world > 1 and device.type == "cuda":
        info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    todo = [(i, c) for i, c in enumerate(cases) if int(c.get("tp", 1)) == world]
    if rank == 0:
        print(f"{len(todo)} of {len(cases)} cases have tp={world}; device {info['gpu']} ({info['gpu_id']})",
              flush=True)
    rows, t_start = [], time.perf_counter()
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(out_path, "w")) if rank == 0 else None
        for (model, layers, impl), items in _group_cases(todo).items():
            group, err = _build(model, layers, impl, device, dtype, rank, world)
            for i, c in items:
                t0 = time.perf_counter()
                res = {"error": err} if err else _measure(group, c, device, world)
                rows.append({**c, "tp": world, "case": i, **res, **info})
                if out:  # written as measured: a killed run keeps what it has
                    out.write(json.dumps(rows[-1]) + "\n")
                    out.flush()
                    shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()
                             if k in ("prefill_ms", "decode_ms", "error")}
                    print(f"[{time.perf_counter() - t_start:6.1f}s] #{i} {model} L={c.get('layers', 'all')} "
                          f"{c.get('runtime')} b={c.get('batch')} p={c.get('prompt')} c={c.get('context')} "
                          f"{shown} ({time.perf_counter() - t0:.1f}s)", flush=True)
            group = None
            _cleanup(device)
    if out:  # finally in the case file's order
        with open(out_path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in sorted(rows, key=lambda r: r["case"]))
    return sum("error" in r for r in rows)


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
    if args.device == "cuda":
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local), timeout=timeout)
    else:  # gloo on the CPU: smoke tests of the tensor-parallel path
        dist.init_process_group("gloo", timeout=timeout)
    try:
        with torch.inference_mode():
            errs = run(_read_cases(args.cases), args.out, args.device, args.dtype, rank, world)
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
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: eager smoke tests only")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    args = p.parse_args(argv)
    if args.cases is None:
        if args.model is None:
            p.error("give --cases FILE or --model M (with --batch/--prompt/--context/--runtime/--tp)")
        import tempfile

        case = {"model": args.model, "batch": args.batch, "prompt": args.prompt,
                "context": args.prompt if args.context is None else args.context, "tp": args.tp,
                "runtime": args.runtime}
        fd, args.cases = tempfile.mkstemp(suffix=".jsonl")
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(case) + "\n")
    rc = _run_cases(p, args)
    if not args.no_compare and os.path.isfile(args.out) and int(os.environ.get("RANK", "0")) == 0:
        from perfcast.measure.compare import compare_lines, format_rows

        lines = [json.loads(x) for x in open(args.out) if x.strip()]
        print(format_rows(compare_lines(lines)))
    return rc


def _run_cases(p, args) -> int:
    set_safe_env()
    if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun
        return 1 if _main_dist(args) else 0
    if args.tp > 1:
        import torch.multiprocessing as mp

        try:
            mp.spawn(_worker, args=(args, args.tp, _free_port()), nprocs=args.tp, join=True)
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
