"""How well the same kernel shapes reproduce: on the same GPU (a repeat run) and on another GPU of the same
model (a grid sample against the shipped grid, timed the same way: alone, in random order).

This is the floor under every kernel-accuracy figure of the held-out sets: a predictor that returned the
shipped grid's own measurement exactly would still be this far from another GPU's measurement of the
same shape. Pairs (each file's shapes that the other also has; times are medians of reps):
- the first full grid of each GPU model (the raw runs the shipped tables began from: ``h100-run8/calib_shuf``,
  ``h200-run7/calib_shuf``, FP8 ``h100-run9/extras_fp8same``; attention: the shipped ``attention.csv``)
  against 10% grid samples timed alone in random order on other GPUs (``h100-run7/gridshuf``,
  ``h100-run13/clock_alone``, ``h200-run11/clock_alone``), against ``gemm_pick`` (``h100-run16``), and
  against the second full grid of the sixth session's same-GPU runs (``h100-run18``, ``h200-run12``),
  which the shipped tables now also hold;
- the same shapes in two random orders on one GPU, free and with a settle before each kernel
  (``h100-run20``), and the settled grid of ``h100-run21`` against those samples (another GPU);
- same GPU, another run: held-out set 9 on ``b97032b8`` (``h100-run9`` against ``h100-run10``), FP8 set 12
  likewise, and ``gemm_pick`` on ``7906ffde`` (``h100-run16`` against ``h100-run17``).

    python benchmarks/gemm_gpu_spread.py
"""

from __future__ import annotations

import csv
import itertools
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data"
TIMES = ("median_ms", "min_ms", "p90_ms", "reps", "kernels")

# the first full grids (relative to benchmarks/data), and the shipped attention tables (one grid each)
GRID = {("h100-sxm", "gemm"): "h100-run8/calib_shuf/gemm.csv", ("h200", "gemm"): "h200-run7/calib_shuf/gemm.csv",
        ("h100-sxm", "fp8"): "h100-run9/extras_fp8same/gemm_fp8_dense_same.csv"}
# (label, GPU id, table: gemm / fp8 / attention, sample file relative to benchmarks/data)
OTHER_GPU = (
    ("H100 5e5e5b13, 10% grid sample", "h100-sxm", "gemm", "h100-run7/gridshuf/gemm.csv"),
    ("H100 00899aad, 10% grid sample", "h100-sxm", "gemm", "h100-run13/clock_alone/gemm.csv"),
    ("H100 7906ffde, gemm_pick", "h100-sxm", "gemm", "h100-run16/gemm_pick/gemm_pick.csv"),
    ("H100 fafc3d94, whole grid", "h100-sxm", "gemm", "h100-run18/calib_gemm/gemm.csv"),
    ("H100 7906ffde, gemm_pick", "h100-sxm", "fp8", "h100-run16/gemm_pick/gemm_pick.csv"),
    ("H100 fafc3d94, whole FP8 grid", "h100-sxm", "fp8", "h100-run18/extras_fp8same/gemm_fp8_dense_same.csv"),
    ("H100 5e5e5b13, 10% grid sample", "h100-sxm", "attention", "h100-run7/gridshuf/attention.csv"),
    ("H100 00899aad, 10% grid sample", "h100-sxm", "attention", "h100-run13/clock_alone/attention.csv"),
    ("H200 05355a11, 10% grid sample", "h200", "gemm", "h200-run11/clock_alone/gemm.csv"),
    ("H200 320daf9d, whole grid", "h200", "gemm", "h200-run12/calib_gemm/gemm.csv"),
    ("H200 05355a11, 10% grid sample", "h200", "attention", "h200-run11/clock_alone/attention.csv"),
)


def reference(gpu: str, kind: str) -> Path:
    """The table a sample is compared with: the first full grid, or the shipped attention table."""
    if kind == "attention":
        return ROOT / "src" / "perfcast" / "profiles" / "data" / gpu / "attention.csv"
    return DATA / GRID[(gpu, kind)]
SAME_GPU = (
    ("H100 b97032b8, GEMM set 9", "h100-run9/heldout9/gemm.csv", "h100-run10/heldout9/gemm.csv"),
    ("H100 b97032b8, FP8 set 12", "h100-run9/extras_fp8held/gemm_fp8_heldout12.csv",
     "h100-run10/extras_fp8held/gemm_fp8_heldout12.csv"),
    ("H100 7906ffde, gemm_pick", "h100-run16/gemm_pick/gemm_pick.csv", "h100-run17/gemm_pick/gemm_pick.csv"),
)


# (label, file a, file b) relative to benchmarks/data: the same shapes in two random orders, free and
# settled (calibrate --settle-ms), and a settled sample against a settled whole grid on another GPU
ORDER_PAIRS = (
    ("H100 f8edac23, 10% sample, order 1 vs order 2, free", "h100-run20/free_o1/gemm.csv", "h100-run20/free_o2/gemm.csv"),
    ("H100 f8edac23, 10% sample, order 1 vs order 2, settled 30 ms", "h100-run20/settle_o1/gemm.csv",
     "h100-run20/settle_o2/gemm.csv"),
    ("settled grid (H100 7b51da3d) vs settled sample (f8edac23, order 1)", "h100-run21/calib_gemm_settle/gemm.csv",
     "h100-run20/settle_o1/gemm.csv"),
    ("settled grid (H100 7b51da3d) vs free sample (f8edac23, order 1)", "h100-run21/calib_gemm_settle/gemm.csv",
     "h100-run20/free_o1/gemm.csv"),
)


def table(path: Path) -> dict:
    """{shape key (every non-timing column): [median ms, ...]} of one measurement CSV."""
    out: dict = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            key = tuple((k, v) for k, v in r.items() if k not in TIMES)
            out.setdefault(key, []).append(float(r["median_ms"]))
    return out


def spread(a: dict, b: dict) -> dict | None:
    """Shapes in both (a shape measured twice in one file counts by its geometric mean): count, mean and
    p90 of |b/a - 1| in %, and the median b/a."""
    keys = [k for k in a if k in b]
    if not keys:
        return None
    r = np.array([np.exp(np.mean(np.log(b[k])) - np.mean(np.log(a[k]))) for k in keys])
    d = np.abs(r - 1.0)
    return {"shapes": len(keys), "mean_pct": 100 * float(d.mean()), "p90_pct": 100 * float(np.percentile(d, 90)),
            "median_ratio": float(np.median(r))}


def by_time(a: dict, b: dict, ref: dict, edges=(0.0, 0.02, 0.1, 1.0, 1e9)) -> list[tuple[float, float, int, float]]:
    """(lo, hi, shapes, mean |b/a - 1| %) by the kernel's time in ``ref`` (ms)."""
    keys = [k for k in a if k in b and k in ref]
    t = {k: np.exp(np.mean(np.log(ref[k]))) for k in keys}
    out = []
    for lo, hi in itertools.pairwise(edges):
        s = spread({k: a[k] for k in keys if lo <= t[k] < hi}, b)
        if s is not None:
            out.append((lo, hi, s["shapes"], s["mean_pct"]))
    return out


def _line(label: str, s: dict | None) -> str:
    if s is None:
        return f"{label:58s} no shapes in common"
    return (f"{label:58s} {s['shapes']:5d} {s['mean_pct']:7.2f}% {s['p90_pct']:7.2f}% {s['median_ratio']:8.3f}")


def main(argv=None) -> int:
    print(f"{'pair':58s} {'shapes':>5s} {'mean':>8s} {'p90':>8s} {'median':>8s}")
    print("another GPU of the same model against the first full grid (attention: the shipped table):")
    for label, gpu, kind, sample in OTHER_GPU:
        path = DATA / sample
        if not path.is_file():
            continue
        print(_line(f"  {label} ({kind})", spread(table(reference(gpu, kind)), table(path))))
    print("the same shapes in other orders, free and settled:")
    for label, a, b in ORDER_PAIRS:
        if (DATA / a).is_file() and (DATA / b).is_file():
            print(_line(f"  {label}", spread(table(DATA / a), table(DATA / b))))
    o = {n: DATA / f"h100-run20/{n}/gemm.csv" for n in ("free_o1", "free_o2", "settle_o1", "settle_o2")}
    if all(p.is_file() for p in o.values()):
        ref = table(o["settle_o1"])
        for kind in ("free", "settle"):
            parts = [f"{lo:g}-{hi:g} ms ({n}): {d:.2f}%" for lo, hi, n, d in
                     by_time(table(o[f"{kind}_o1"]), table(o[f"{kind}_o2"]), ref)]
            print(f"  {kind} orders by kernel time: " + "; ".join(parts))
    print("the same GPU, another run:")
    for label, a, b in SAME_GPU:
        if (DATA / a).is_file() and (DATA / b).is_file():
            print(_line(f"  {label}", spread(table(DATA / a), table(DATA / b))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
