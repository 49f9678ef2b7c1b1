"""Measure offloaded model steps (CPU-GPU splits) to validate ``perfcast predict`` with ``offload``.

    PYTHONPATH=src python3 -m perfcast.measure.offload_step --cases benchmarks/device/cases_offload.jsonl --out OUT.jsonl
    PYTHONPATH=src python3 -m perfcast.measure.offload_step --cases CASES.jsonl --out OUT.jsonl --device cpu

A case line holds ``model``, ``offload`` (``{"plan": "layers", "gpu_layers": N}``, ``{"plan": "ffn_cpu"}``
or ``{"plan": "cpu"}``), ``batch``, ``prompt``, ``context``, optionally ``dtype`` (default bf16) and
``layers`` (fewer decoder layers, for quick runs). The reference is the contract's: PyTorch eager,
the same dtype on both devices, a plain random-weight decoder (RMSNorm, fused QKV, RoPE, static KV
cache, SDPA, SwiGLU) whose layers (attention + KV cache, MLP) sit on the device the plan says, with
blocking ``.to()`` copies wherever the device changes; embedding and LM head on the GPU (``cpu``: all
on the CPU). CPU ops run on every core (``torch.set_num_threads``).

Before the cases it runs ``calibrate-cpu --quick`` at that thread count into ``<out>_cpu/`` (skip with
``--cpu-profile DIR``, or ``--no-calibrate``) so the predictions can use this host's measured CPU.
Each output line is the case plus ``prefill_ms`` / ``decode_ms`` (median; min, p90, reps beside),
the CPU model and threads, GPU, torch version and the CPU profile's directory (relative to the output).
Plans that change devices also get ``{phase}_seg_ms``: the step's wall time per device, median over the
timed reps, each segment from the end of the ``.to()`` that entered it to the end of the blocking
``.to()`` that leaves it (so a device's share includes the copy out and, on the GPU, the wait for its
kernels), and ``{phase}_switches`` (device changes per step).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import sys
import time
from pathlib import Path

EPS = 1e-6
TARGET_S = 0.6  # measuring time per phase and case
POOL = 1 << 22  # elements of the random pool that CPU weights are tiled from (fast, never zeros)


def placement(spec, off: dict, has_gpu: bool) -> tuple[str, list[tuple[str, str]]]:
    """(device of embedding/head, [(attention device, MLP device)] per layer) for a plan."""
    L, plan = spec.n_layers, off.get("plan")
    if plan == "cpu" or not has_gpu:
        if plan != "cpu":
            raise ValueError(f"plan {plan!r} needs a CUDA device (use plan 'cpu' with --device cpu)")
        return "cpu", [("cpu", "cpu")] * L
    if plan == "layers":
        n = int(off["gpu_layers"])
        if not 0 <= n <= L:
            raise ValueError(f"gpu_layers={n} outside 0..{L}")
        return "cuda", [("cuda", "cuda")] * n + [("cpu", "cpu")] * (L - n)
    if plan == "ffn_cpu":
        return "cuda", [("cuda", "cpu")] * L
    raise ValueError(f"offload_step measures plans layers, ffn_cpu and cpu, not {plan!r}")


class Segments:
    """Wall time per device between device changes (the blocking ``.to()`` makes wall time exact)."""

    def __init__(self, clock=time.perf_counter):
        self.clock, self.dev, self.t0 = clock, None, 0.0
        self.acc: dict[str, float] = {}
        self.switches = 0

    def start(self, dev: str) -> None:
        self.dev, self.t0, self.acc, self.switches = dev, self.clock(), {}, 0

    def switch(self, dev: str) -> None:
        """Call right after the ``.to(dev)`` that left ``self.dev`` (the copy is the old device's)."""
        t = self.clock()
        self.acc[self.dev] = self.acc.get(self.dev, 0.0) + t - self.t0
        self.dev, self.t0 = dev, t
        self.switches += 1

    def stop(self) -> dict[str, float]:
        t = self.clock()
        self.acc[self.dev] = self.acc.get(self.dev, 0.0) + t - self.t0
        return self.acc


class SplitDecoder:
    """A random-weight decoder whose attention and MLP blocks each live on a chosen device."""

    def __init__(self, spec, ends: str, where: list[tuple[str, str]], dtype, seed: int = 0):
        import torch

        if spec.is_moe or spec.is_mla or spec.norm != "rmsnorm" or spec.mlp_act != "swiglu":
            raise NotImplementedError(f"{spec.name}: offload_step runs dense RMSNorm/SwiGLU decoders only")
        torch.manual_seed(seed)
        self.spec, self.ends, self.where, self.dtype = spec, ends, where, dtype
        self.hd, self.hq, self.hkv = spec.head_dim, spec.n_heads, spec.n_kv_heads
        self._pool = {}
        h = spec.hidden
        qkv = (self.hq + 2 * self.hkv) * self.hd
        self.embed = self._rand((spec.vocab, h), ends)
        self.lm_head = self.embed if spec.tied_embeddings else self._rand((spec.vocab, h), ends)
        self.final_norm = torch.ones(h, dtype=dtype, device=ends)
        self.layers = []
        for a_dev, m_dev in where:
            self.layers.append({
                "ln1": torch.ones(h, dtype=dtype, device=a_dev), "wqkv": self._rand((qkv, h), a_dev),
                "bqkv": self._rand((qkv,), a_dev) if spec.attn_bias else None,
                "qn": torch.ones(self.hd, dtype=dtype, device=a_dev) if spec.qk_norm else None,
                "wo": self._rand((h, self.hq * self.hd), a_dev),
                "ln2": torch.ones(h, dtype=dtype, device=m_dev),
                "wgu": self._rand((2 * spec.intermediate, h), m_dev), "wd": self._rand((h, spec.intermediate), m_dev)})
        self.cache = []
        self._pool.clear()
        self.seg = Segments()
        self.last_seg: tuple[dict, int] = ({}, 0)

    def _rand(self, shape, dev):
        import torch

        t = torch.empty(shape, dtype=self.dtype, device=dev)
        if dev != "cpu":
            return t.normal_(0.0, 0.02)
        if "cpu" not in self._pool:
            self._pool["cpu"] = (torch.randn(POOL) * 0.02).to(self.dtype)
        pool, flat = self._pool["cpu"], t.view(-1)
        for s in range(0, flat.numel(), POOL):
            n = min(POOL, flat.numel() - s)
            flat[s:s + n].copy_(pool[:n])
        return t

    def weight_bytes(self, dev: str) -> int:
        seen, total = set(), 0
        for t in [self.embed, self.lm_head, self.final_norm] + [v for L in self.layers for v in L.values()]:
            if t is not None and t.device.type == dev and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
        return total

    def alloc(self, batch: int, max_len: int) -> None:
        import torch

        self.cache = []
        for (a_dev, _), _L in zip(self.where, self.layers):
            shape = (batch, self.hkv, max_len, self.hd)
            self.cache.append((torch.randn(shape, device=a_dev).to(self.dtype),
                               torch.randn(shape, device=a_dev).to(self.dtype)))
        inv = 1.0 / (self.spec.rope_theta ** (torch.arange(0, self.hd, 2, dtype=torch.float32) / self.hd))
        f = torch.outer(torch.arange(max_len, dtype=torch.float32), inv)
        emb = torch.cat((f, f), dim=-1)
        self.rope = {d: (emb.cos().to(self.dtype).to(d), emb.sin().to(self.dtype).to(d))
                     for d in {a for a, _ in self.where} | {self.ends}}

    def forward(self, ids, pos_list: list[int], kv_len: int | None):
        import torch
        import torch.nn.functional as F

        b, q = ids.shape
        hq, hkv, hd = self.hq, self.hkv, self.hd
        seg = self.seg
        seg.start(self.ends)
        x, dev = F.embedding(ids, self.embed), self.ends
        pos = {d: torch.tensor(pos_list, device=d) for d in self.rope}
        for i, (L, (a_dev, m_dev)) in enumerate(zip(self.layers, self.where)):
            if a_dev != dev:
                x, dev = x.to(a_dev), a_dev
                seg.switch(dev)
            cos, sin = (t.index_select(0, pos[dev]) for t in self.rope[dev])
            hs = F.rms_norm(x, (x.shape[-1],), L["ln1"], EPS)
            qh, k, v = F.linear(hs, L["wqkv"], L["bqkv"]).split([hq * hd, hkv * hd, hkv * hd], dim=-1)
            qh, k, v = (t.view(b, q, -1, hd) for t in (qh, k, v))
            if L["qn"] is not None:
                qh, k = F.rms_norm(qh, (hd,), L["qn"], EPS), F.rms_norm(k, (hd,), L["qn"], EPS)
            qh, k, v = (t.transpose(1, 2) for t in (qh, k, v))
            qh = qh * cos + torch.cat((-qh[..., hd // 2:], qh[..., :hd // 2]), -1) * sin
            k = k * cos + torch.cat((-k[..., hd // 2:], k[..., :hd // 2]), -1) * sin
            kc, vc = self.cache[i]
            kc.index_copy_(2, pos[dev], k)
            vc.index_copy_(2, pos[dev], v)
            if kv_len is None:
                o = F.scaled_dot_product_attention(qh, k, v, is_causal=True, enable_gqa=hq != hkv)
            else:
                o = F.scaled_dot_product_attention(qh, kc[:, :, :kv_len], vc[:, :, :kv_len], enable_gqa=hq != hkv)
            x = x + F.linear(o.transpose(1, 2).reshape(b, q, hq * hd), L["wo"])
            if m_dev != dev:
                x, dev = x.to(m_dev), m_dev
                seg.switch(dev)
            g, u = F.linear(F.rms_norm(x, (x.shape[-1],), L["ln2"], EPS), L["wgu"]).chunk(2, dim=-1)
            x = x + F.linear(F.silu(g) * u, L["wd"])
        if dev != self.ends:
            x = x.to(self.ends)
            seg.switch(self.ends)
        x = F.rms_norm(x, (x.shape[-1],), self.final_norm, EPS)
        out = F.linear(x[:, -1], self.lm_head)
        self.last_seg = (seg.stop(), seg.switches)  # the ends' tail is timed up to here (before the sync)
        return out


def _median(v) -> float:
    v, n = sorted(v), len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def _time(fn, sync) -> list[float]:
    """Wall ms of ``fn(); sync()``; warm-up, then reps for ~TARGET_S (3..30)."""
    for _ in range(2):
        t0 = time.perf_counter()
        fn()
        sync()
        one = time.perf_counter() - t0
        if one > 0.5:
            break
    out = []
    for _ in range(int(min(30, max(3, math.ceil(TARGET_S / max(one, 1e-6)))))):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def measure_case(case: dict, has_gpu: bool, wait_s: float = 30.0) -> dict:
    """Build the split model of one case and time its phases (re-timed while other processes load the host)."""
    import torch

    from perfcast.measure.cpu_calibrate import guarded
    from perfcast.models import get_model

    spec = get_model(case["model"])
    if case.get("layers"):
        spec = spec.with_layers(int(case["layers"]))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[case.get("dtype", "bf16")]
    ends, where = placement(spec, case["offload"], has_gpu)
    b, p, c = int(case.get("batch", 1)), int(case.get("prompt", 128)), int(case.get("context", 512))
    m = SplitDecoder(spec, ends, where, dtype)
    sync = torch.cuda.synchronize if has_gpu else (lambda: None)
    res = {"layers": spec.n_layers, "weights_gpu_gib": m.weight_bytes("cuda") / 2**30,
           "weights_cpu_gib": m.weight_bytes("cpu") / 2**30}
    for phase in ("prefill", "decode") if case.get("measure", "both") == "both" else (case["measure"],):
        m.alloc(b, p if phase == "prefill" else c + 1)
        q = p if phase == "prefill" else 1
        ids = torch.randint(0, spec.vocab, (b, q), device=ends)
        pos = list(range(p)) if phase == "prefill" else [c]
        kv = None if phase == "prefill" else c + 1
        segs: list = []

        def step(ids=ids, pos=pos, kv=kv, segs=segs):
            out = m.forward(ids, pos, kv)
            segs.append(m.last_seg)
            return out

        times, share = guarded(lambda step=step: _time(step, sync), wait_s=wait_s)
        times, n = sorted(times), len(times)
        res.update({f"{phase}_ms": _median(times), f"{phase}_min_ms": times[0],
                    f"{phase}_p90_ms": times[min(n - 1, int(0.9 * n))],
                    f"{phase}_reps": n, f"{phase}_others_busy": round(share, 3)})
        timed = segs[-n:]  # the reps of the accepted try (warm-ups and re-timed tries come before)
        if timed and timed[-1][1]:
            res[f"{phase}_seg_ms"] = {d: round(_median([a.get(d, 0.0) for a, _ in timed]) * 1e3, 4)
                                      for d in sorted({d for a, _ in timed for d in a})}
            res[f"{phase}_switches"] = timed[-1][1]
        m.cache = []
    return res


def run(cases: list[dict], out_path: str, device: str, cpu_profile: str | None, calibrate: bool,
        threads: int | None = None, wait_idle_s: float = 0.0) -> int:
    import torch

    from perfcast.measure.cpu_calibrate import calibrate_cpu, cpu_facts, wait_for_idle

    threads = threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    torch.set_num_threads(threads)
    has_gpu = device == "cuda"
    if has_gpu and not torch.cuda.is_available():
        raise SystemExit("perfcast: no CUDA device; use --device cpu (plan 'cpu' only)")
    out = Path(out_path)
    facts = cpu_facts()
    info = {"device": device, "runtime": "eager", "impl": "plain", "cpu_name": facts["cpu_name"], "cpu_threads": threads,
            "torch": torch.__version__, "cuda": torch.version.cuda, "date": _dt.date.today().isoformat(),
            "gpu": torch.cuda.get_device_name() if has_gpu else None}
    if has_gpu:
        from perfcast.measure.env import gpu_id_guess

        info["gpu_id"] = gpu_id_guess(info["gpu"], torch.cuda.get_device_properties(0).total_memory)
    if cpu_profile is None and calibrate:
        cpu_profile = str(out.with_name(out.stem + "_cpu"))
        t0 = time.perf_counter()
        calibrate_cpu(cpu_profile, threads=[threads], quick=True, progress=False, wait_idle_s=wait_idle_s)
        print(f"[{time.perf_counter() - t0:5.1f}s] CPU profile -> {cpu_profile}", flush=True)
    if cpu_profile:
        info["cpu_profile"] = os.path.relpath(Path(cpu_profile).resolve(), out.resolve().parent)
    errors, t_start = 0, time.perf_counter()
    with open(out, "w") as f:
        for i, case in enumerate(cases):
            busy = wait_for_idle(wait_idle_s) if wait_idle_s > 0 else None
            t0 = time.perf_counter()
            try:
                res = measure_case(case, has_gpu, min(max(wait_idle_s, 1.0), 15.0))
            except torch.OutOfMemoryError:
                res = {"error": "oom"}
            except Exception as e:
                res = {"error": f"{type(e).__name__}: {e}"}
            errors += "error" in res
            gc.collect()
            if has_gpu:
                torch.cuda.empty_cache()
            res["load_avg_1m"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            if busy is not None:
                res["busy_before"] = round(busy, 3)
            f.write(json.dumps({**case, "case": i, **res, **info}) + "\n")
            f.flush()
            shown = {k: round(v, 2) for k, v in res.items() if k in ("prefill_ms", "decode_ms")}
            print(f"[{time.perf_counter() - t_start:6.1f}s] #{i} {case['model']} {case['offload']} "
                  f"{shown or res.get('error')} ({time.perf_counter() - t0:.1f}s)", flush=True)
    return errors


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perfcast.measure.offload_step", description=__doc__.split("\n")[0])
    ap.add_argument("--cases", required=True, help="JSONL case file ('-' = stdin)")
    ap.add_argument("--out", required=True, help="JSONL output")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: plan 'cpu' cases only")
    ap.add_argument("--cpu-profile", default=None, help="an existing calibrate-cpu directory to cite")
    ap.add_argument("--no-calibrate", action="store_true", help="skip the quick CPU calibration")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads [default: every usable core]")
    ap.add_argument("--wait-idle", type=float, default=0.0, help="shared host: wait up to S s for idle CPUs")
    a = ap.parse_args(argv)
    text = sys.stdin.read() if a.cases == "-" else Path(a.cases).read_text()
    cases = [json.loads(x) for x in text.splitlines() if x.strip() and not x.lstrip().startswith("#")]
    import torch

    with torch.inference_mode():
        errs = run(cases, a.out, a.device, a.cpu_profile, not a.no_calibrate, a.threads, a.wait_idle)
    return 1 if errs else 0


if __name__ == "__main__":
    sys.exit(main())
