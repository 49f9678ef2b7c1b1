"""Measure this host's CPU (and its PCIe link to a GPU, when one is present) into a CPU profile.

    perfcast calibrate-cpu --out DIR [--quick] [--threads 1,8,16] [--dtypes bf16,fp32]
    PYTHONPATH=src python3 -m perfcast.measure.cpu_calibrate --out DIR

What is measured (PyTorch on the CPU; numpy when torch is missing, fp32 only):

- ``copy`` and ``triad`` (STREAM-style, fp32 arrays of at least 4x the L3 cache) at each thread count;
- ``gemm``: ``F.linear(x[m,k], w[n,k])`` per dtype at m = 1 .. 1024; small m rotates through enough
  weight matrices to stream from DRAM (as a model step does); a dtype stops growing m once one call
  passes ``max_call_s`` (CPUs without native bf16 are slow);
- ``attn_decode`` / ``attn_prefill``: ``scaled_dot_product_attention`` with one query over 128..2048
  cached keys (batch 1 and 4, 32 heads, 8 KV heads), and causal over 256..1024 tokens;
- ``op``: the small eager ops a decode step runs between GEMVs (norm, mul, add, silu, cat), per op;
- ``chain_<dev>``, ``sweep_<dev>``, ``resume_<dev>`` (dev ``cpu``; ``cuda`` too with CUDA): the hand-off of an
  offload plan. A chain is one attention block of the harness's plain decoder (RMSNorm, fused QKV, RoPE,
  KV-cache write, SDPA, O projection, residual; tiny width, one token) dispatched eagerly on that device
  behind the ``.to(device)`` and ahead of the blocking ``.to("cpu")`` of a device change. It is timed warm
  (``m = 0``: right after itself) and cold (``m = S``: right after the CPU streamed ``S`` bytes of weights
  with multi-threaded GEMVs, as an offloaded MLP does; this evicts the dispatch path of Python, PyTorch
  and the driver from the caches). ``sweep`` is the ``S``-byte GEMV sweep back to back, ``resume`` the same
  sweep right after the chain (the CPU's worker threads idled meanwhile); ``m`` = ``bytes`` = S,
  ``n`` = eager calls per chain;
- with CUDA: ``h2d`` / ``d2h`` blocking copies (``copy_`` + synchronize), pinned and pageable, 4 KB..256 MB.

Output: ``meta.json`` (CPU model name from /proc/cpuinfo, cores, flags, memory, software versions) and
``cpu.csv`` (``kind,dtype,threads,m,n,k,bytes,flops,median_ms,min_ms,p90_ms,reps``).
``perfcast.offload.cpu_profile`` reads it back.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import os
import platform
import socket
import sys
import time
from pathlib import Path

import numpy as np

COLUMNS = ("kind", "dtype", "threads", "m", "n", "k", "bytes", "flops", "median_ms", "min_ms", "p90_ms", "reps",
           "others_busy")
FORMAT = "perfcast-cpu-profile"
M_FULL = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
M_QUICK = (1, 4, 16, 64, 256, 1024)
LINK_SIZES = (4 << 10, 256 << 10, 4 << 20, 64 << 20, 256 << 20)
STREAM_MIN_BYTES = 256 << 20  # STREAM arrays: at least this, and 4x the L3 cache
GEMM_NK = 4096  # weight matrix n = k of the GEMM sweep
SWEEP_BYTES = (16 << 20, 64 << 20, 256 << 20, 1 << 30)  # weights streamed before a cold chain
SWEEP_QUICK = (64 << 20, 256 << 20)
SWEEP_NK = 2048  # fp32 matrices of 16 MiB streamed by the sweep
# weight shapes (n, k) of one-token GEMVs: LLM projections from 0.5B to 8B-class models, so the CPU model
# can take a GEMV's rate by its weight size (small weights pay the per-call cost more)
GEMV_SHAPES = ((896, 4864), (4864, 896), (2048, 2048), (2048, 8192), (8192, 2048), (3072, 8192), (8192, 3072),
               (4096, 4096), (4096, 14336), (14336, 4096), (3584, 18944), (18944, 3584))
GEMV_SHAPES_QUICK = ((2048, 8192), (8192, 2048), (3584, 18944))
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "asimd", "sve")


# ------------------------------------------------------------------------------ host facts
def cpu_facts() -> dict:
    """Model name, usable cores, flags, L3 and memory from /proc and /sys (best effort)."""
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and not name:
                    name = val.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(val.split())
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    l3 = 32 << 20
    try:
        for idx in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
            if (idx / "level").read_text().strip() == "3":
                s = (idx / "size").read_text().strip().upper()
                l3 = int(s[:-1]) * {"K": 1 << 10, "M": 1 << 20}.get(s[-1], 1) if s[-1] in "KM" else int(s)
    except (OSError, ValueError):
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = next((int(x.split()[1]) * 1024 for x in f if x.startswith("MemTotal:")), 0)
    except OSError:
        pass
    from perfcast.hardware import get_cpu

    try:
        cpu_id = get_cpu(name).id
    except ValueError:  # an unknown CPU is fine: the profile stands alone
        cpu_id = None
    return {"cpu_name": name, "cpu_id": cpu_id, "cores": cores, "l3_bytes": l3, "mem_total_bytes": mem,
            "flags": sorted(f for f in FLAGS if f in flags)}


def _snapshot() -> tuple[float, float, float]:
    """(all-CPU jiffies, idle jiffies, this process's jiffies) now."""
    with open("/proc/stat") as f:
        v = [float(x) for x in f.readline().split()[1:]]
    t = os.times()
    return sum(v), v[3] + (v[4] if len(v) > 4 else 0.0), (t.user + t.system) * os.sysconf("SC_CLK_TCK")


def guarded(measure, tries: int = 3, threshold: float | None = None, wait_s: float = 10.0):
    """Run ``measure()`` until other processes used under ``threshold`` of the host's CPUs meanwhile
    (shared hosts: OpenMP threads that share a core stall at every barrier). The default threshold
    leaves the cores this process does not use to others. Returns (result, their share)."""
    if threshold is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = _threads()
        threshold = max(0.10, (cores - threads) / cores + 0.02)
    share = 0.0
    for i in range(tries):
        try:
            a = _snapshot()
        except (OSError, ValueError):
            return measure(), 0.0
        res = measure()
        b = _snapshot()
        dt = max(b[0] - a[0], 1e-9)
        share = max(0.0, (dt - (b[1] - a[1]) - (b[2] - a[2])) / dt)
        if share < threshold or i == tries - 1:
            return res, share
        wait_for_idle(wait_s)
    return res, share


def _threads() -> int:
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:
        return os.cpu_count() or 1


def busy_fraction(interval_s: float = 0.5) -> float:
    """Fraction of all CPUs busy over ``interval_s`` (from /proc/stat; 0.0 where unavailable)."""
    def snap():
        with open("/proc/stat") as f:
            v = [float(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + (v[4] if len(v) > 4 else 0.0)

    try:
        t0, i0 = snap()
        time.sleep(interval_s)
        t1, i1 = snap()
    except (OSError, ValueError):
        return 0.0
    return 1.0 - (i1 - i0) / max(t1 - t0, 1e-9)


def wait_for_idle(timeout_s: float, threshold: float = 0.15) -> float:
    """On a shared host, wait (up to ``timeout_s``) until other work leaves the CPUs; returns the busy
    fraction last seen. OpenMP threads that share a core with another process stall at every barrier."""
    end, busy = time.perf_counter() + timeout_s, 0.0
    while True:
        busy = busy_fraction()
        if busy < threshold or time.perf_counter() >= end:
            return busy


def default_threads(cores: int, quick: bool) -> list[int]:
    pts = {1, cores} if quick else {1, max(1, cores // 4), max(1, cores // 2), cores}
    return sorted(pts)


# ------------------------------------------------------------------------------ timing
def _time(fn, sync=lambda: None, target_s: float = 0.2, lo: int = 3, hi: int = 50) -> tuple[list[float], float]:
    """Wall times (ms) of ``fn(); sync()`` (one warm-up, then reps for ~``target_s``), re-measured while
    other processes load the host; returns (times, their CPU share meanwhile)."""
    return guarded(lambda: _time_once(fn, sync, target_s, lo, hi))


def _time_once(fn, sync, target_s: float, lo: int, hi: int) -> list[float]:
    fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    one = time.perf_counter() - t0
    reps = int(min(hi, max(lo, math.ceil(target_s / max(one, 1e-7)))))
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _row(kind, dtype, threads, timed, m=0, n=0, k=0, nbytes=0.0, flops=0.0, per_call: int = 1) -> dict:
    times_ms, share = timed
    a = np.asarray(times_ms, dtype=float) / per_call
    return {"kind": kind, "dtype": dtype, "threads": threads, "m": m, "n": n, "k": k, "bytes": float(nbytes),
            "flops": float(flops), "median_ms": float(np.median(a)), "min_ms": float(a.min()),
            "p90_ms": float(np.percentile(a, 90)), "reps": len(a), "others_busy": round(share, 3)}


def _stream_elems(facts: dict) -> int:
    """fp32 elements per STREAM array: >= 4x L3 and STREAM_MIN_BYTES, <= 1/24 of memory."""
    want = max(4 * facts["l3_bytes"], STREAM_MIN_BYTES)
    return int(min(want, max(facts["mem_total_bytes"], 4 << 30) / 24) // 4)


# ------------------------------------------------------------------------------ torch backend
def _torch_stream(torch, threads: int, n_el: int, target: float) -> list[dict]:
    a, b, c = torch.rand(n_el), torch.rand(n_el), torch.empty(n_el)
    return [_row("copy", "fp32", threads, _time(lambda: c.copy_(a), target_s=target), nbytes=8.0 * n_el),
            _row("triad", "fp32", threads, _time(lambda: torch.add(a, b, alpha=1.5, out=c), target_s=target),
                 nbytes=12.0 * n_el)]


def _weights(torch, n: int, k: int, tdtype, l3_bytes: float) -> list:
    """Copies of an [n, k] weight that together exceed 4x the L3 cache (at least 2, at most 64): a GEMV
    over them streams its weights from memory, as a decode step does."""
    esz = torch.finfo(tdtype).bits // 8
    n_w = max(2, math.ceil(4 * l3_bytes / (n * k * esz)))
    return [(torch.rand(n, k) - 0.5).to(tdtype) for _ in range(min(n_w, 64))]


def _time_linear(F, ws: list, x, target: float):
    """``_time`` of ``F.linear(x, w)`` over every weight of ``ws`` in turn (per call: divide by len(ws))."""

    def run():
        for w in ws:
            F.linear(x, w)

    return _time(run, target_s=target, lo=2)


def _gemv_shape_rows(torch, F, threads: int, dtypes, tdt: dict, facts: dict, quick: bool, target: float):
    """One-token GEMVs (``gemv_shape`` rows) over LLM weight shapes, each streaming weight copies that
    together exceed 4x the L3 cache, as a decode step streams its weights from memory."""
    rows = []
    for dt in dtypes:
        esz = torch.finfo(tdt[dt]).bits // 8
        for n, k in GEMV_SHAPES_QUICK if quick else GEMV_SHAPES:
            ws = _weights(torch, n, k, tdt[dt], facts["l3_bytes"])
            times = _time_linear(F, ws, (torch.rand(1, k) - 0.5).to(tdt[dt]), target)
            rows.append(_row("gemv_shape", dt, threads, times, 1, n, k, k * esz + n * k * esz + n * esz,
                             2.0 * n * k, per_call=len(ws)))
            del ws
    return rows


def _torch_rows(torch, threads: int, dtypes, facts: dict, quick: bool, max_call_s: float) -> list[dict]:
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    target = 0.1 if quick else 0.25
    rows = _torch_stream(torch, threads, _stream_elems(facts), target)
    tdt = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
    n = k = GEMM_NK
    for dt in dtypes:
        esz = torch.finfo(tdt[dt]).bits // 8
        ws = _weights(torch, n, k, tdt[dt], facts["l3_bytes"])
        for m in M_QUICK if quick else M_FULL:
            use = ws if m <= 16 else ws[:1]
            times = _time_linear(F, use, (torch.rand(m, k) - 0.5).to(tdt[dt]), target)
            nbytes = m * k * esz + n * k * esz + m * n * esz
            rows.append(_row("gemm", dt, threads, times, m, n, k, nbytes, 2.0 * m * n * k, per_call=len(use)))
            if rows[-1]["median_ms"] * 1e-3 > max_call_s:
                break
        del ws
    rows += _gemv_shape_rows(torch, F, threads, dtypes, tdt, facts, quick, target)
    rows += _attn_rows(torch, threads, dtypes, quick, target)
    x, y, w = torch.rand(1, 1024), torch.rand(1, 4096), torch.ones(1024)

    def small_ops():  # what a decode step dispatches between its GEMVs: norms, adds, activations, concats
        for _ in range(50):
            F.rms_norm(x, (1024,), w, 1e-6), x * x, x + x, F.silu(y) * y, torch.cat((x, x), -1)

    rows.append(_row("op", "fp32", threads, _time(small_ops, target_s=target), per_call=300))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows += _handoff_rows(torch, threads, devices, dtypes[0], facts, quick)
    return rows


def _attn_chain(torch, dev: str, dtype):
    """One attention block of ``perfcast.measure.offload_step.SplitDecoder`` on one token at tiny width,
    on ``dev``, fed from the CPU and handed back to it (``.to(dev)`` ... blocking ``.to("cpu")``): what
    plan ``ffn_cpu`` dispatches once per layer between two CPU MLPs. Returns (fn, eager calls per fn)."""
    import torch.nn.functional as F

    h, hq, hkv, hd, T = 256, 4, 2, 64, 64

    def g(*shape):
        return (torch.rand(*shape) - 0.5).to(dtype).to(dev)

    ln, wqkv, wo = torch.ones(h, dtype=dtype, device=dev), g((hq + 2 * hkv) * hd, h), g(h, hq * hd)
    cos, sin, kc, vc = g(T, hd), g(T, hd), g(1, hkv, T, hd), g(1, hkv, T, hd)
    x0, pos = (torch.rand(1, 1, h) - 0.5).to(dtype), torch.tensor([T - 1], device=dev)

    def rope(t, c, s):
        return t * c + torch.cat((-t[..., hd // 2:], t[..., :hd // 2]), -1) * s

    def chain():
        x = x0.to(dev)
        c, s = cos.index_select(0, pos), sin.index_select(0, pos)
        q, k, v = F.linear(F.rms_norm(x, (h,), ln, 1e-6), wqkv).split([hq * hd, hkv * hd, hkv * hd], dim=-1)
        q, k, v = (t.view(1, 1, -1, hd).transpose(1, 2) for t in (q, k, v))
        q, k = rope(q, c, s), rope(k, c, s)
        kc.index_copy_(2, pos, k)
        vc.index_copy_(2, pos, v)
        o = F.scaled_dot_product_attention(q, kc, vc, enable_gqa=hq != hkv)
        return (x + F.linear(o.transpose(1, 2).reshape(1, 1, hq * hd), wo)).to("cpu")

    # .to, 2 index_select, rms_norm, linear, split, 3 x (view, transpose), 2 x rope (mul, 2 slices, neg,
    # cat, mul, add), 2 index_copy_, sdpa, transpose, reshape, linear, add, .to
    return chain, 34


def _handoff_rows(torch, threads: int, devices, dtype: str, facts: dict, quick: bool) -> list[dict]:
    """The hand-off of an offload plan's serial device switches (see the module docstring): per device
    and sweep size S, the attention chain warm and right after an S-byte weight sweep, the sweep back to
    back and the sweep right after the chain. Sizes, devices and the sweep order are interleaved per rep
    so that slow drifts of a shared host hit them alike."""
    import random

    import torch.nn.functional as F

    tdt = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[dtype]
    sizes = SWEEP_QUICK if quick else SWEEP_BYTES
    nk = SWEEP_NK
    mat = nk * nk * 4
    n_w = max(2, math.ceil(max(4 * facts["l3_bytes"], 2 * max(sizes)) / mat))
    ws = [torch.full((nk, nk), 1e-3) for _ in range(n_w)]
    x = torch.rand(1, nk)
    state = {"i": 0}

    def sweep(nbytes, ws=ws, x=x):  # multi-threaded GEMVs streaming nbytes of DRAM-resident weights
        for _ in range(max(1, math.ceil(nbytes / mat))):
            F.linear(x, ws[state["i"] % n_w])
            state["i"] += 1

    chains = {d: _attn_chain(torch, d, tdt) for d in devices}
    reps = 12 if quick else 24

    def measure():
        res: dict = {}
        rng = random.Random(0)
        for d in devices:
            chains[d][0]()
        for _ in range(reps):
            order = [(d, s) for d in devices for s in sizes]
            rng.shuffle(order)
            for d, s in order:
                fn = chains[d][0]
                fn()
                t0 = time.perf_counter()
                fn()
                t1 = time.perf_counter()
                res.setdefault((f"chain_{d}", 0), []).append((t1 - t0) * 1e3)
                sweep(s)
                t0 = time.perf_counter()
                fn()  # cold: the sweep evicted the dispatch path
                t1 = time.perf_counter()
                sweep(s)  # the CPU's threads resume after the chain
                t2 = time.perf_counter()
                sweep(s)  # back to back
                t3 = time.perf_counter()
                res.setdefault((f"chain_{d}", s), []).append((t1 - t0) * 1e3)
                res.setdefault((f"resume_{d}", s), []).append((t2 - t1) * 1e3)
                res.setdefault((f"sweep_{d}", s), []).append((t3 - t2) * 1e3)
        return res

    res, share = guarded(measure)
    rows = []
    for (kind, s), times in sorted(res.items()):
        n = chains[kind.rsplit("_", 1)[1]][1] if kind.startswith("chain") else 0
        rows.append(_row(kind, dtype, threads, (times, share), m=s, n=n, nbytes=s))
    return rows


def _attn_rows(torch, threads: int, dtypes, quick: bool, target: float) -> list[dict]:
    """CPU SDPA: decode (one query; m = kv_len, n = batch x heads, k = head_dim) and causal prefill
    (m = tokens, n = heads, k = head_dim)."""
    import torch.nn.functional as F

    tdt = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
    rows, h, hkv = [], 32, 8
    decode = ((1, 64, 512), (4, 128, 2048)) if quick else (
        (1, 64, 128), (1, 64, 512), (4, 64, 512), (1, 128, 2048), (4, 128, 2048))
    for dt in dtypes:
        esz = torch.finfo(tdt[dt]).bits // 8
        for b, hd, kv in decode:
            q = torch.rand(b, h, 1, hd).to(tdt[dt])
            k, v = (torch.rand(b, hkv, kv, hd).to(tdt[dt]) for _ in range(2))
            timed = _time(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
                          target_s=target)
            rows.append(_row("attn_decode", dt, threads, timed, kv, b * h, hd, 2.0 * b * hkv * kv * hd * esz,
                             4.0 * b * h * kv * hd))
        for n in (256,) if quick else (256, 1024):
            q = torch.rand(1, h, n, 64).to(tdt[dt])
            k, v = (torch.rand(1, hkv, n, 64).to(tdt[dt]) for _ in range(2))
            timed = _time(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
                          target_s=target)
            rows.append(_row("attn_prefill", dt, threads, timed, n, h, 64, 2.0 * (h + 2 * hkv) * n * 64 * esz,
                             4.0 * h * 64 * n * (n + 1) / 2))
    return rows


def _link_rows(torch, quick: bool) -> list[dict]:
    """Blocking host<->device copies, as ``tensor.to()`` does them, pinned and pageable."""
    rows = []
    sync = torch.cuda.synchronize
    for size in (LINK_SIZES[0], LINK_SIZES[2], LINK_SIZES[3]) if quick else LINK_SIZES:
        dev = torch.empty(size, dtype=torch.uint8, device="cuda")
        for kind in ("pinned", "pageable"):
            host = torch.empty(size, dtype=torch.uint8, pin_memory=(kind == "pinned"))
            host.fill_(1)
            h2d = _time(lambda d=dev, h=host: d.copy_(h), sync, 0.1)
            d2h = _time(lambda d=dev, h=host: h.copy_(d), sync, 0.1)
            rows += [_row(f"h2d_{kind}", "u8", 0, h2d, nbytes=size), _row(f"d2h_{kind}", "u8", 0, d2h, nbytes=size)]
    return rows


# ------------------------------------------------------------------------------ numpy fallback
def _numpy_rows(facts: dict, quick: bool, max_call_s: float) -> list[dict]:
    target, rows, thr = (0.1 if quick else 0.25), [], facts["cores"]
    n_el = _stream_elems(facts)
    a, b, c = (np.random.rand(n_el).astype(np.float32) for _ in range(3))
    rows.append(_row("copy", "fp32", thr, _time(lambda: np.copyto(c, a), target_s=target), nbytes=8.0 * n_el))
    rows.append(_row("triad", "fp32", thr, _time(lambda: np.add(a, b, out=c), target_s=target),
                     nbytes=12.0 * n_el))
    n = k = GEMM_NK
    ws = [np.random.rand(n, k).astype(np.float32) for _ in range(max(2, math.ceil(4 * facts["l3_bytes"] / (n * k * 4))))]
    for m in M_QUICK if quick else M_FULL:
        x = np.random.rand(m, k).astype(np.float32)
        use = ws if m <= 16 else ws[:1]
        times = _time(lambda use=use, x=x: [x @ w.T for w in use], target_s=target, lo=2)
        rows.append(_row("gemm", "fp32", thr, times, m, n, k, 4.0 * (m * k + n * k + m * n), 2.0 * m * n * k,
                         per_call=len(use)))
        if rows[-1]["median_ms"] * 1e-3 > max_call_s:
            break
    x = np.random.rand(1, 1024).astype(np.float32)
    rows.append(_row("op", "fp32", thr, _time(lambda: [x + x for _ in range(200)], target_s=target), per_call=200))
    return rows


# ------------------------------------------------------------------------------ driver
def calibrate_cpu(out_dir, threads: list[int] | None = None, dtypes=("bf16", "fp32"), quick: bool = False,
                  backend: str = "auto", max_call_s: float = 0.5, progress: bool = True,
                  wait_idle_s: float = 0.0) -> dict:
    """Measure and write ``out_dir/meta.json`` and ``out_dir/cpu.csv``; returns the meta dict."""
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    facts = cpu_facts()
    torch = None
    if backend in ("auto", "torch"):
        try:
            import torch
        except ImportError:
            if backend == "torch":
                raise SystemExit("perfcast: --backend torch needs PyTorch (pip install 'perfcast[gpu]')") from None
    for dt in dtypes:
        if dt not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"unknown dtype {dt!r}; choose from bf16, fp16, fp32")
    ths = sorted({min(int(t), facts["cores"]) for t in threads}) if threads else default_threads(facts["cores"], quick)
    rows: list[dict] = []
    if torch is not None:
        prev = torch.get_num_threads()
        try:
            for t in ths:
                if wait_idle_s > 0:
                    wait_for_idle(wait_idle_s)
                if progress:
                    print(f"calibrate-cpu: {t} thread(s)", file=sys.stderr, flush=True)
                rows += _torch_rows(torch, t, dtypes, facts, quick, max_call_s)
        finally:
            torch.set_num_threads(prev)
        if torch.cuda.is_available():
            rows += _link_rows(torch, quick)
    else:
        ths = [facts["cores"]]
        rows += _numpy_rows(facts, quick, max_call_s)
    with open(out / "cpu.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    meta = {
        "format": FORMAT, "format_version": 1, **facts, "threads": ths,
        "dtypes": list(dtypes) if torch is not None else ["fp32"],
        "backend": "torch" if torch is not None else "numpy", "quick": quick,
        "torch_version": getattr(torch, "__version__", None), "numpy_version": np.__version__,
        "python_version": platform.python_version(), "hostname": socket.gethostname(),
        "gpu": torch.cuda.get_device_name() if torch is not None and torch.cuda.is_available() else None,
        "date_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv), "elapsed_s": round(time.perf_counter() - t_start, 2), "complete": True,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="perfcast calibrate-cpu", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="profile directory to write (meta.json, cpu.csv)")
    p.add_argument("--quick", action="store_true", help="fewer sizes and thread counts (~20 s)")
    p.add_argument("--threads", default=None, help="comma-separated thread counts [default: 1, n/4, n/2, n]")
    p.add_argument("--dtypes", default="bf16,fp32")
    p.add_argument("--backend", choices=("auto", "torch", "numpy"), default="auto")
    p.add_argument("--max-call-s", type=float, default=0.5, help="stop growing m past this time per call")
    p.add_argument("--wait-idle", type=float, default=0.0, help="shared host: wait up to S s for idle CPUs")
    a = p.parse_args(argv)
    try:
        threads = [int(x) for x in a.threads.split(",")] if a.threads else None
        if threads and min(threads) < 1:
            raise ValueError("--threads must be positive integers")
        meta = calibrate_cpu(a.out, threads, tuple(x.strip() for x in a.dtypes.split(",") if x.strip()), a.quick,
                             a.backend, a.max_call_s, wait_idle_s=a.wait_idle)
    except ValueError as e:
        print(f"perfcast: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out}/meta.json and cpu.csv ({meta['cpu_name']}, {meta['cores']} cores, "
          f"{meta['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
