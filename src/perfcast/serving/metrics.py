"""From a finished simulation to the report: latency percentiles, throughput, goodput under an SLA,
KV-cache occupancy over time, and whether the system is past capacity."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from perfcast.serving.simulator import Simulator

METRICS = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")
SERIES_POINTS = 200
# past capacity: completions during the arrivals fall this far behind arrivals, with a queue left
OVERLOAD_RATE_RATIO = 0.85
OVERLOAD_MIN_QUEUE = 5
OVERLOAD_QUEUE_FRACTION = 0.05


@dataclass
class Report:
    """``summary`` is the JSON object ``perfcast simulate --json`` prints; ``per_request()`` its rows."""

    summary: dict
    columns: dict[str, np.ndarray] = field(repr=False)
    engines: list = field(repr=False, default_factory=list)

    def per_request(self) -> list[dict]:
        c = self.columns
        rows = []
        for i in range(len(c["id"])):
            rows.append({"id": int(c["id"][i]), "arrival_s": float(c["arrival_s"][i]),
                         "ttft_ms": float(c["ttft_ms"][i]), "e2e_ms": float(c["e2e_ms"][i]),
                         "output_tokens": int(c["output_tokens"][i]), "input_tokens": int(c["input_tokens"][i]),
                         "tpot_ms": None if np.isnan(c["tpot_ms"][i]) else float(c["tpot_ms"][i]),
                         "preemptions": int(c["preemptions"][i])})
        return rows

    def to_dict(self, per_request: bool = False) -> dict:
        return {**self.summary, "per_request": self.per_request()} if per_request else dict(self.summary)


def stats(x: np.ndarray) -> dict:
    """``{mean, p50, p90, p99}`` of ``x`` (NaNs dropped; None when nothing is left)."""
    x = x[~np.isnan(x)]
    if x.size == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    p = np.percentile(x, [50, 90, 99])
    return {"mean": float(x.mean()), "p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2])}


def weighted_stats(v: np.ndarray, w: np.ndarray) -> dict:
    """The same for samples ``v`` that occur ``w`` times each (inverse-CDF percentiles)."""
    if v.size == 0 or w.sum() == 0:
        return stats(np.array([]))
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    cw = np.cumsum(w)
    idx = np.searchsorted(cw, np.array([0.5, 0.9, 0.99]) * cw[-1])
    p = v[np.minimum(idx, v.size - 1)]
    return {"mean": float((v * w).sum() / cw[-1]), "p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2])}


def summarize(sim: Simulator) -> Report:
    cfg, reqs = sim.cfg, sim.requests
    arr = np.array([r.arrival for r in reqs])
    first = np.array([r.first_t for r in reqs])
    fin = np.array([r.finish_t for r in reqs])
    sched = np.array([r.sched_t for r in reqs])
    out = np.array([r.output for r in reqs], dtype=np.int64)
    inp = np.array([r.prompt for r in reqs], dtype=np.int64)
    ttft, e2e = (first - arr) * 1e3, (fin - arr) * 1e3
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(out > 1, (fin - first) * 1e3 / np.maximum(out - 1, 1), np.nan)
    itl_s = np.concatenate([np.asarray(e.itl_s, dtype=float) for e in sim.engines])
    itl_n = np.concatenate([np.asarray(e.itl_n, dtype=float) for e in sim.engines])
    t0 = float(arr.min())
    duration = max(float(fin.max()) - t0, 1e-12)
    s: dict = {
        "model": sim.step.model.name, "gpu": sim.step.gpu.id, "tp": cfg.tp, "pp": cfg.pp,
        "replicas": cfg.replicas if cfg.disaggregated is None else None, "gpus": cfg.gpus,
        "scheduler": cfg.scheduler, "runtime": cfg.runtime,
        "disaggregated": None if cfg.disaggregated is None else vars(cfg.disaggregated),
        "requests": len(reqs), "duration_s": duration,
        "output_tokens_per_s": float(out.sum()) / duration,
        "input_tokens_per_s": float(inp.sum()) / duration,
        "requests_per_s": len(reqs) / duration,
        "ttft_ms": stats(ttft), "tpot_ms": stats(tpot), "itl_ms": weighted_stats(itl_s * 1e3, itl_n),
        "e2e_ms": stats(e2e), "queue_ms": stats((sched - arr) * 1e3),
        "preemptions": int(sum(e.preemptions for e in sim.engines)),
        "kv_cache": kv_occupancy(sim.engines, t0, t0 + duration, cfg.block_size),
    }
    if cfg.iteration_overhead is not None or cfg.eager_host_scale != 1.0:  # a measured engine's calibration
        s["calibration"] = {"iteration_overhead": None if cfg.iteration_overhead is None else
                            vars(cfg.iteration_overhead), "eager_host_scale": cfg.eager_host_scale}
    s.update(load_check(arr, fin, sched))
    if cfg.sla is not None:
        s["goodput"] = goodput(cfg.sla, ttft, tpot, out, duration)
    cols = {"id": np.array([r.id for r in reqs]), "arrival_s": arr, "ttft_ms": ttft, "e2e_ms": e2e,
            "tpot_ms": tpot, "output_tokens": out, "input_tokens": inp,
            "preemptions": np.array([r.preemptions for r in reqs])}
    return Report(s, cols, sim.engines)


def goodput(sla, ttft: np.ndarray, tpot: np.ndarray, out: np.ndarray, duration: float) -> dict:
    ok = np.ones(ttft.shape, dtype=bool)
    if sla.ttft_ms is not None:
        ok &= ttft <= sla.ttft_ms
    if sla.tpot_ms is not None:
        ok &= np.isnan(tpot) | (tpot <= sla.tpot_ms)
    n = int(ok.sum())
    return {"sla": {"ttft_ms": sla.ttft_ms, "tpot_ms": sla.tpot_ms}, "requests_meeting_sla": n,
            "fraction": n / max(len(ok), 1), "requests_per_s": n / duration,
            "output_tokens_per_s": float(out[ok].sum()) / duration}


def kv_occupancy(engines, t0: float, t1: float, block_size: int) -> dict:
    """Fraction of the KV blocks in use, over all engines: time-average, peak and a series."""
    grid = np.linspace(t0, t1, 2000)
    used = np.zeros(grid.shape)
    total = sum(e.total_blocks for e in engines)
    peak = 0.0
    for e in engines:
        if not e.kv_t:
            continue
        t, u = np.asarray(e.kv_t), np.asarray(e.kv_used, dtype=float)
        k = np.searchsorted(t, grid, side="right") - 1
        used += np.where(k >= 0, u[np.maximum(k, 0)], 0.0)
        peak = max(peak, float(u.max()) / e.total_blocks)
    frac = used / total
    pick = np.linspace(0, grid.size - 1, SERIES_POINTS).round().astype(int)
    return {"block_size": block_size, "blocks_per_engine": engines[0].total_blocks, "engines": len(engines),
            "mean_used_fraction": float(frac.mean()), "peak_used_fraction": peak,
            "series": {"t_s": [round(float(x), 6) for x in grid[pick]],
                       "used_fraction": [round(float(x), 5) for x in frac[pick]]}}


def load_check(arr: np.ndarray, fin: np.ndarray, sched: np.ndarray) -> dict:
    """Past capacity when, while requests arrive, they complete well below the arrival rate and a
    queue that never drains is left at the last arrival (the waiting time grows with every
    request: no steady state exists)."""
    n = arr.size
    a0, a1 = float(arr.min()), float(arr.max())
    span = a1 - a0
    out = {"overloaded": False, "overload_message": None,
           "load": {"arrival_rate_per_s": None, "completion_rate_per_s": None, "queue_at_last_arrival": 0}}
    if n < 10 or span <= 0:
        return out
    lam = (n - 1) / span
    w0 = a0 + 0.25 * span  # skip the warm-up
    done = int(((fin > w0) & (fin <= a1)).sum())
    mu = done / (a1 - w0)
    queue = int((sched > a1).sum())
    out["load"] = {"arrival_rate_per_s": lam, "completion_rate_per_s": mu, "queue_at_last_arrival": queue}
    if mu < OVERLOAD_RATE_RATIO * lam and queue >= max(OVERLOAD_MIN_QUEUE, OVERLOAD_QUEUE_FRACTION * n):
        out["overloaded"] = True
        out["overload_message"] = (
            f"past capacity: requests arrive at {lam:.3g}/s but complete at {mu:.3g}/s; {queue} were "
            "still queued at the last arrival, so waiting time (TTFT) grows with every request and "
            "the percentiles depend on how many are simulated. Lower the rate or add replicas.")
    return out
