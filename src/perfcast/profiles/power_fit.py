"""Fit a profile's power model (power.json) from two timings of the same GEMMs on one GPU.

The kernel tables are times of kernels run alone, in random order (``calibrate --shuffle``, the default
for GEMMs): each starts at full clocks. Inside a model step kernels run back to back, and a GEMM near the
tensor-core peak holds the board at its power limit, which lowers the SM clock. ``calibrate --power``
(or ``--sustain-ms 100`` on a grid sample) times the same shapes with each kernel first run back to back
for 100 ms. From the pairs this fits the soft cap of :class:`perfcast.profiles.PowerModel` (sustained
rate ``r (1 + (r/c)^p)^(-1/p)``, ``c = cap_frac * bf16 peak``) by least squares on log(sustained / alone)
over aligned bf16/fp16 GEMMs of at least ``min_ms``. FP8 GEMMs get a cap of their own (a fraction of the FP8
peak), fitted the same way from FP8 tables (``extras --parts fp8same --settle-ms 20`` alone, ``--parts
fp8sus --sustain-ms 100`` sustained) into power.json's ``fp8`` section.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from perfcast.hardware.spec import GPUSpec
from perfcast.profiles import POWER_DTYPES, PowerModel

CAPS = np.arange(0.40, 1.001, 0.005)
KNEES = (2, 3, 4, 6, 8, 10, 12, 16, 24)


def pairs(alone, sustained, min_ms: float = 0.02, dtypes=POWER_DTYPES) -> np.ndarray:
    """Rows (flops, seconds alone, seconds sustained) of the ``dtypes`` GEMMs timed both ways."""
    def load(p):
        with open(p) as f:
            return {(r["dtype"], int(r["m"]), int(r["n"]), int(r["k"])): float(r["median_ms"])
                    for r in csv.DictReader(f) if r.get("median_ms")}

    a, s = load(alone), load(sustained)
    out = []
    for key, t in a.items():
        dt, m, n, k = key
        if key not in s or dt not in dtypes or n % 8 or k % 8 or t < min_ms:
            continue
        out.append((2.0 * m * n * k, t * 1e-3, s[key] * 1e-3))
    return np.array(out).reshape(-1, 3)


def fit(p: np.ndarray, peak: float) -> tuple[float, float, float]:
    """(cap_frac, knee, rms of the log residual) on a grid of caps and knees (cap 0: no cap fits better);
    ``peak``: the dtype's tensor-core peak."""
    flops, ta, ts = p.T
    y = np.log(ts / ta)
    best = (0.0, 8.0, float(np.sqrt(np.mean(y ** 2))))
    for cap in CAPS:
        for knee in KNEES:
            f = PowerModel(cap_frac=float(cap), knee=float(knee)).factor(flops, ta, peak)
            rms = float(np.sqrt(np.mean((y - np.log(f)) ** 2)))
            if rms < best[2]:
                best = (float(cap), float(knee), rms)
    return best


BINS_TFLOPS = {"bf16": ((0, 300), (300, 500), (500, 600), (600, 700), (700, 800), (800, 10 ** 6)),
               "fp8": ((0, 600), (600, 1000), (1000, 1200), (1200, 1400), (1400, 1600), (1600, 10 ** 6))}


def fit_files(alone, sustained, gpu: GPUSpec, min_ms: float = 0.02, dtype: str = "bf16") -> dict:
    """The power.json content for ``gpu`` from the two tables of the same columns (ValueError under 20
    pairs): the main cap from bf16/fp16 rows (``dtype`` bf16), or the ``fp8`` section's from FP8 rows."""
    if dtype not in ("bf16", "fp8"):
        raise ValueError(f"power caps are fitted for bf16 (with fp16) or fp8, not {dtype!r}")
    p = pairs(alone, sustained, min_ms, POWER_DTYPES if dtype == "bf16" else (dtype,))
    if len(p) < 20:
        raise ValueError(f"only {len(p)} {dtype} GEMMs of at least {min_ms} ms were timed both ways (need 20)")
    peak = gpu.flops(dtype)
    cap, knee, rms = fit(p, peak)
    flops, ta, ts = p.T
    rate = flops / ta
    f = PowerModel(cap_frac=cap, knee=knee).factor(flops, ta, peak)
    bins = {}
    for lo, hi in BINS_TFLOPS[dtype]:
        sel = (rate >= lo * 1e12) & (rate < hi * 1e12)
        if sel.any():
            bins[f"{lo}-{hi if hi < 10 ** 6 else ''} TFLOP/s alone"] = {
                "n": int(sel.sum()), "sustained_over_alone": float(np.median(ts[sel] / ta[sel])),
                "model": float(np.median(f[sel]))}
    return {
        "source": f"fitted by perfcast.profiles.power_fit on {len(p)} {'' if dtype == 'bf16' else dtype + ' '}GEMMs: "
                  f"{alone} (alone) and {sustained}",
        "gpu_id": gpu.id, "cap_frac": cap, "knee": knee, "cap_tflops": cap * peak / 1e12,
        "fit": {"pairs": len(p), "rms_log": rms, "mape_pct_with_model": float(np.mean(np.abs(ta * f / ts - 1)) * 100),
                "mape_pct_without": float(np.mean(np.abs(ta / ts - 1)) * 100), "by_rate": bins},
    }


def write(out: dict, path, dtype: str = "bf16") -> None:
    """Write a fit into power.json: the main cap (``dtype`` bf16) keeping the file's ``fp8`` and ``clock`` sections, or
    the ``fp8`` section into the file's main cap (which must be there)."""
    path = Path(path)
    old = json.loads(path.read_text()) if path.is_file() else {}
    if dtype == "bf16":  # a refit of the main cap keeps the file's other sections (fp8, clock)
        out = dict(out, **{k: old[k] for k in ("fp8", "clock") if k in old and k not in out})
    else:
        if "cap_frac" not in old:
            raise ValueError(f"{path} has no main (bf16) power cap to add the {dtype} section to")
        out = dict(old, **{dtype: out})
    path.write_text(json.dumps(out, indent=1) + "\n")
