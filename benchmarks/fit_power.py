"""Fit a profile's power model (power.json) from two timings of the same GEMMs on one GPU.

The kernel tables are times of kernels run alone, in random order (``calibrate --shuffle``): each starts
at full clocks. Inside a model step, kernels run back to back and a GEMM near the tensor-core peak holds
the board at its power limit, which lowers the SM clock. ``calibrate --sustain-ms 100`` times a sample
of the same grid with each kernel first run back to back for 100 ms. From the pairs this script fits the
soft cap of :class:`perfcast.profiles.PowerModel` (sustained rate ``r * (1 + (r/c)^p)^(-1/p)``, with
``c = cap_frac * bf16 peak``) by least squares on log(sustained / alone), over aligned bf16/fp16 GEMMs of
at least ``--min-ms``.

    python benchmarks/fit_power.py --alone benchmarks/data/h100-run8/calib_shuf/gemm.csv \\
        --sustained benchmarks/data/h100-run8/gemm_sustain/gemm.csv --gpu h100-sxm \\
        --out src/perfcast/profiles/data/h100-sxm/power.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from perfcast.hardware import get_gpu
from perfcast.profiles import PowerModel


def pairs(alone: Path, sustained: Path, min_ms: float):
    def load(p):
        return {(r["dtype"], int(r["m"]), int(r["n"]), int(r["k"])): float(r["median_ms"])
                for r in csv.DictReader(open(p)) if r.get("median_ms")}

    a, s = load(alone), load(sustained)
    out = []
    for key, t in a.items():
        dt, m, n, k = key
        if key not in s or dt not in ("bf16", "fp16") or n % 8 or k % 8 or t < min_ms:
            continue
        out.append((2.0 * m * n * k, t * 1e-3, s[key] * 1e-3))
    return np.array(out)


def fit(p: np.ndarray, peak: float) -> tuple[float, float, float]:
    """(cap_frac, knee, rms of the log residual) on a grid of caps and knees."""
    flops, ta, ts = p.T
    y = np.log(ts / ta)
    best = (0.0, 8.0, float(np.sqrt(np.mean(y ** 2))))
    for cap in np.arange(0.40, 1.001, 0.005):
        for knee in (2, 3, 4, 6, 8, 10, 12, 16, 24):
            f = PowerModel(cap_frac=float(cap), knee=float(knee)).factor(flops, ta, peak)
            rms = float(np.sqrt(np.mean((y - np.log(f)) ** 2)))
            if rms < best[2]:
                best = (float(cap), float(knee), rms)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alone", required=True, help="gemm.csv of kernels timed alone (calibrate --shuffle)")
    ap.add_argument("--sustained", required=True, help="gemm.csv of the same shapes, calibrate --sustain-ms")
    ap.add_argument("--gpu", required=True)
    ap.add_argument("--min-ms", type=float, default=0.02)
    ap.add_argument("--out", default=None, help="power.json to write (default: print only)")
    a = ap.parse_args(argv)
    gpu = get_gpu(a.gpu)
    peak = gpu.flops("bf16")
    p = pairs(Path(a.alone), Path(a.sustained), a.min_ms)
    if len(p) < 20:
        print(f"fit_power: only {len(p)} pairs of at least {a.min_ms} ms", file=sys.stderr)
        return 2
    cap, knee, rms = fit(p, peak)
    flops, ta, ts = p.T
    rate = flops / ta
    f = PowerModel(cap_frac=cap, knee=knee).factor(flops, ta, peak)
    err = np.abs(ta * f / ts - 1) * 100
    err0 = np.abs(ta / ts - 1) * 100
    bins = {}
    for lo in (0, 300, 500, 600, 700, 800):
        s = (rate >= lo * 1e12) & (rate < (lo + (200 if lo < 300 else 100 if lo < 800 else 1e6)) * 1e12)
        if lo == 0:
            s = rate < 300e12
        if s.any():
            bins[f">={lo} TFLOP/s alone"] = {"n": int(s.sum()), "sustained_over_alone": float(np.median(ts[s] / ta[s])),
                                             "model": float(np.median(f[s]))}
    out = {
        "source": f"fitted by benchmarks/fit_power.py on {len(p)} GEMMs: {a.alone} (alone) and {a.sustained}",
        "gpu_id": gpu.id,
        "cap_frac": cap, "knee": knee,
        "cap_tflops": cap * peak / 1e12,
        "fit": {"pairs": len(p), "rms_log": rms, "mape_pct_with_model": float(err.mean()),
                "mape_pct_without": float(err0.mean()), "by_rate": bins},
    }
    text = json.dumps(out, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
