"""A CPU profile directory (written by ``perfcast calibrate-cpu``) -> a :class:`CPUModel`.

The measured ceilings at the requested thread count are interpolated linearly between the measured
thread counts (clamped at the ends):

- STREAM bandwidth: the best of ``copy`` and ``triad``;
- GEMV bandwidth per dtype class: bytes / time of the ``m = 1`` GEMM (weights streamed from DRAM);
- GEMM FLOP/s per dtype class: the best FLOP/s over the measured ``m``;
- the shape ratio: measured time / roofline on those two ceilings, as a function of ``log m``
  (taken at the measured thread count nearest the request);
- which GEMM rows timed a cache-resident weight: ``calibrate-cpu`` streams rotating weight copies from
  DRAM up to m = 16 and reuses one weight above; where that weight fits half the L3 cache (meta
  ``l3_bytes``), the rows above m = 16 are hot and a step's GEMM adds the weight's DRAM read
  (:meth:`CPUModel.cold_weights`);
- attention: decode (one query) as ``call + per element x batch x heads x kv_len x head_dim``, least
  squares over the ``attn_decode`` rows; prefill at the best FLOP/s of the ``attn_prefill`` rows;
- the per-op overhead: the time per small eager op (norm, mul, add, silu, cat on one token);
- the hand-off of serial plans, per streamed size S: ``chain(S) - chain(0)`` (an attention block's
  dispatch right after an S-byte weight sweep minus warm; log S from 0 at 8 MiB), clipped at 0, plus the
  threads' resume, the median over S of ``resume(S) - sweep(S)`` (the sweep right after the chain minus
  back to back), clipped at 0; from the ``cuda`` rows when the calibration saw a GPU, else the ``cpu``
  rows (a CPU chain stands in for the GPU's dispatch), at the measured thread count nearest the request;
- the link: per (direction, pinned/pageable) ``latency = time of the smallest copy`` and
  ``bandwidth = slope between the smallest and the largest copy``. Without CUDA at calibration time
  the link falls back to the datasheet prior of the GPU it is paired with.
"""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import numpy as np

from perfcast.hardware.spec import GPUSpec
from perfcast.offload.cpu import DIRECTIONS, PRIOR, CPUModel, Link, dtype_class, prior_links

FORMAT = "perfcast-cpu-profile"
ROTATE_MAX_M = 16  # calibrate-cpu's GEMM rows rotate DRAM-resident weights up to this m, reuse one above


@functools.cache
def _read(root: str) -> tuple[dict, tuple[dict, ...]]:
    p = Path(root)
    meta_p, csv_p = p / "meta.json", p / "cpu.csv"
    if not meta_p.is_file() or not csv_p.is_file():
        raise ValueError(f"{root} is not a CPU profile: it needs meta.json and cpu.csv "
                         "(write one with `perfcast calibrate-cpu --out DIR`)")
    meta = json.loads(meta_p.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_p} is not a perfcast CPU profile (format {meta.get('format')!r}); "
                         "GPU profiles come from `perfcast calibrate`, CPU ones from `perfcast calibrate-cpu`")
    with open(csv_p, newline="") as f:
        rows = tuple(r for r in csv.DictReader(f) if r.get("median_ms"))
    return meta, rows


def _per_thread(rows, value) -> tuple[np.ndarray, np.ndarray]:
    """(thread counts, best ``value(row)`` at each), sorted by threads."""
    best: dict[int, float] = {}
    for r in rows:
        t = int(r["threads"])
        best[t] = max(best.get(t, 0.0), value(r))
    ts = sorted(best)
    return np.array(ts, dtype=float), np.array([best[t] for t in ts])


def _at(threads: int, pts: tuple[np.ndarray, np.ndarray]) -> float:
    ts, vs = pts
    return float(np.interp(threads, ts, vs))


def _rate(r, key: str) -> float:
    return float(r[key]) / (float(r["median_ms"]) * 1e-3)


def _links(rows, gpu: GPUSpec | None) -> dict:
    prior = prior_links(32e9, gpu, PRIOR)
    out = dict(prior)
    for d in DIRECTIONS:
        for kind in ("pinned", "pageable"):
            rs = sorted((float(r["bytes"]), float(r["median_ms"]) * 1e-3) for r in rows
                        if r["kind"] == f"{d}_{kind}")
            if len(rs) < 2:
                continue
            (b0, t0), (b1, t1) = rs[0], rs[-1]
            bw = (b1 - b0) / max(t1 - t0, 1e-9)
            out[(d, kind)] = Link(latency_s=max(t0 - b0 / bw, 1e-6), bytes_per_s=bw)
    return out


def _ratio(gemm_rows, threads_near: int, gemv_bw: float, flops: float):
    """(log m, log ratio) of measured time over the two-ceiling roofline, at one thread count."""
    by_m: dict[float, list[float]] = {}
    for r in gemm_rows:
        if int(r["threads"]) != threads_near:
            continue
        t = float(r["median_ms"]) * 1e-3
        roof = max(float(r["flops"]) / flops, float(r["bytes"]) / gemv_bw)
        by_m.setdefault(float(r["m"]), []).append(np.log(t / roof))
    if not by_m:
        return None
    ms = sorted(by_m)
    return np.log(np.array(ms)), np.array([float(np.mean(by_m[m])) for m in ms])


def _hot_rows(gemm_rows, l3_bytes: float):
    """(m_cold, m_hot) when the GEMM rows above ``ROTATE_MAX_M`` timed one weight that half the L3 cache
    holds (the last rotating m and the first reused m measured), else None."""
    cold = [float(r["m"]) for r in gemm_rows if float(r["m"]) <= ROTATE_MAX_M]
    warm = [r for r in gemm_rows if float(r["m"]) > ROTATE_MAX_M]
    if not cold or not warm or l3_bytes <= 0:
        return None
    w = float(warm[0]["n"]) * float(warm[0]["k"]) * (4.0 if dtype_class(warm[0]["dtype"]) == "fp32" else 2.0)
    if w > 0.5 * l3_bytes:
        return None
    return max(cold), min(float(r["m"]) for r in warm)


def _attn_fit(rows, threads: int):
    """(seconds per call, seconds per element) at the measured thread count nearest ``threads``."""
    if not rows:
        return None
    ts = sorted({int(r["threads"]) for r in rows})
    near = min(ts, key=lambda x: abs(x - threads))
    pts = [(float(r["m"]) * float(r["n"]) * float(r["k"]), float(r["median_ms"]) * 1e-3) for r in rows
           if int(r["threads"]) == near]
    x, y = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    if len(pts) < 2 or np.ptp(x) == 0:
        return 0.0, float(np.mean(y / x))
    b, a = np.polyfit(x, y, 1)
    if a < 0 or b <= 0:  # keep it physical: no negative call cost; else a line through the origin
        a, b = 0.0, float(np.sum(x * y) / np.sum(x * x))
    return float(a), float(b)


def _handoff(rows, threads: int):
    """(device, streamed bytes, cold-dispatch seconds at each, resume seconds) from the chain/resume/sweep
    rows, or None."""
    for dev in ("cuda", "cpu"):
        rs = [r for r in rows if r["kind"] in (f"chain_{dev}", f"resume_{dev}", f"sweep_{dev}")]
        if not rs:
            continue
        ts = sorted({int(r["threads"]) for r in rs})
        near = min(ts, key=lambda x: abs(x - threads))
        t = {(r["kind"].split("_")[0], int(float(r["m"]))): float(r["median_ms"]) * 1e-3 for r in rs
             if int(r["threads"]) == near}
        warm = t.get(("chain", 0))
        sizes = sorted(s for k, s in t if k == "chain" and s > 0)
        if warm is None or not sizes:
            continue
        # the threads' resume does not depend on S: one figure, the median over the sizes (a large sweep's
        # own noise would swamp it at that size alone), clipped at 0
        diffs = [t[("resume", s)] - t[("sweep", s)] for s in sizes if ("resume", s) in t and ("sweep", s) in t]
        resume = max(0.0, float(np.median(diffs))) if diffs else 0.0
        cold = [max(0.0, t[("chain", s)] - warm) for s in sizes]
        return dev, np.array(sizes, dtype=float), np.array(cold), resume
    return None


def load_cpu_profile(root, threads: int | None = None, gpu: GPUSpec | None = None) -> CPUModel:
    """The CPU model of a measured profile at ``threads`` (default: every core it was measured with)."""
    meta, rows = _read(str(Path(root).resolve()))
    cores = int(meta.get("cores") or 1)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                or threads < 1):
        raise ValueError(f"cpu_threads must be a positive integer, got {threads!r}")
    t = min(int(threads or cores), cores)
    stream_rows = [r for r in rows if r["kind"] in ("copy", "triad")]
    if not stream_rows:
        raise ValueError(f"{root}/cpu.csv has no copy/triad rows: rerun `perfcast calibrate-cpu`")
    stream = _at(t, _per_thread(stream_rows, lambda r: _rate(r, "bytes")))
    gemv, flops, ratio, hot = {}, {}, {}, {}
    l3 = float(meta.get("l3_bytes") or 0.0)
    for dc in ("fp32", "bf16"):
        g = [r for r in rows if r["kind"] == "gemm" and dtype_class(r["dtype"]) == dc]
        if not g:
            continue
        h = _hot_rows(g, l3)
        if h is not None:
            hot[dc] = h
        gemv_pts = _per_thread([r for r in g if int(r["m"]) == 1], lambda r: _rate(r, "bytes"))
        flop_pts = _per_thread(g, lambda r: _rate(r, "flops"))
        if not len(gemv_pts[0]):
            continue
        gemv[dc], flops[dc] = _at(t, gemv_pts), _at(t, flop_pts)
        ts = flop_pts[0]
        near = int(ts[np.argmin(np.abs(ts - t))])
        r = _ratio(g, near, _at(near, gemv_pts), _at(near, flop_pts))
        if r is not None:
            ratio[dc] = r
    if not gemv:
        raise ValueError(f"{root}/cpu.csv has no m=1 GEMM rows: rerun `perfcast calibrate-cpu`")
    for a, b in (("bf16", "fp32"), ("fp32", "bf16")):  # a dtype class not measured borrows the other
        if a not in gemv:
            gemv[a], flops[a] = gemv[b], flops[b]
            if b in ratio:
                ratio[a] = ratio[b]
            if b in hot:
                hot[a] = hot[b]
    attn_decode, attn_flops = {}, {}
    for dc in ("fp32", "bf16"):
        fit = _attn_fit([r for r in rows if r["kind"] == "attn_decode" and dtype_class(r["dtype"]) == dc], t)
        if fit:
            attn_decode[dc] = fit
        pre = [r for r in rows if r["kind"] == "attn_prefill" and dtype_class(r["dtype"]) == dc]
        if pre:
            attn_flops[dc] = _at(t, _per_thread(pre, lambda r: _rate(r, "flops")))
    op_rows = [r for r in rows if r["kind"] == "op"]
    over = PRIOR.op_overhead_s
    if op_rows:
        near = min(op_rows, key=lambda r: abs(int(r["threads"]) - t))
        over = float(near["median_ms"]) * 1e-3
    return CPUModel(
        id=str(meta.get("cpu_id") or "measured"), name=str(meta.get("cpu_name", "measured CPU")), threads=t,
        cores=cores, mem_capacity_bytes=float(meta.get("mem_total_bytes") or 0.0), stream_bw=stream,
        gemv_bw=gemv, gemm_flops=flops, op_overhead_s=over, links=_links(rows, gpu), eff=PRIOR, ratio=ratio, gemm_hot=hot,
        attn_decode=attn_decode, attn_flops=attn_flops, handoff_pts=_handoff(rows, t),
        source=f"measured:{Path(root).name}",
    )
