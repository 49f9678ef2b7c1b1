"""How much of the GEMM error is cuBLAS's kernel choice: every 8th M of a few grid weights, each with the
kernels it launched (``perfcast.measure.gemm_pick``, ``gemm_pick.csv``).

Per weight (dtype, n, k) and GPU it prints:
- ``kernel changes``: the share of neighbouring M (8 rows apart) that ran a different kernel set;
- ``step``: the median |time change| between neighbours 8 apart, when the kernel stayed and when it changed;
- ``interp dX``: the MAPE of log-log interpolation from the M that are multiples of X (a grid of that
  spacing) at every other measured M: the error a predictor that only interpolates cannot beat; and
  ``oracle dX``: the same when it knows which kernel runs and interpolates only among grid points that
  ran that kernel (where both neighbours did), with the count of points that had such neighbours;
- ``perfcast``: the shipped profile's prediction at the M that are not on its grid (a held-out set of
  mid-M shapes on grid weights).
- ``at shipped M``: taking as the grid the M this weight's shipped table measured, the MAPE at the other
  M of plain log-log interpolation and of perfcast's local fit (``_local_line``: a tricube-weighted line
  over 3 grid points each side, then interpolated), on this run's own times.
Then, per run, its times at the shapes the shipped grid also measured (``versus grid``: another GPU or
run than the grid's), and for two runs on one GPU their agreement and whether they picked the same kernels.

    python benchmarks/gemm_pick.py [benchmarks/data/<run>/gemm_pick/gemm_pick.csv ...]
    (no argument: every benchmarks/data/*/gemm_pick/gemm_pick.csv)
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
SPACINGS = (32, 64, 128)


def load(path: Path) -> dict:
    """{(dtype, n, k): (m sorted, median ms, kernel-set label)} of one gemm_pick.csv."""
    by: dict = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            by.setdefault((r["dtype"], int(r["n"]), int(r["k"])), []).append(
                (int(r["m"]), float(r["median_ms"]), r["kernels"]))
    out = {}
    for key, rows in by.items():
        rows.sort()
        out[key] = (np.array([x[0] for x in rows]), np.array([x[1] for x in rows]), [x[2] for x in rows])
    return out


def interp_error(m, t, spacing: int, labels=None) -> tuple[float, int]:
    """(MAPE %, points) of log-log interpolation at every M that is not a multiple of ``spacing`` from the
    nearest multiples on each side. ``labels``: only from grid points that ran the point's own kernel
    set (the nearest such on each side); points without one on both sides are left out."""
    lm, lt = np.log(m), np.log(t)
    grid = m % spacing == 0
    errs = []
    for i in np.flatnonzero(~grid):
        ok = grid if labels is None else grid & (np.array(labels) == labels[i])
        lo = np.flatnonzero(ok[:i])
        hi = np.flatnonzero(ok[i + 1:])
        if lo.size == 0 or hi.size == 0:
            continue
        a, b = lo[-1], i + 1 + hi[0]
        p = lt[a] + (lt[b] - lt[a]) * (lm[i] - lm[a]) / (lm[b] - lm[a])
        errs.append(abs(np.exp(p - lt[i]) - 1.0))
    return (100.0 * float(np.mean(errs)) if errs else float("nan")), len(errs)


def summarize(m, t, labels) -> dict:
    change = np.array([labels[i] != labels[i + 1] for i in range(len(labels) - 1)])
    step = np.abs(np.diff(np.log(t)))
    out = {"points": int(m.size), "kernel_sets": len(set(labels)),
           "change_share": float(change.mean()) if change.size else float("nan"),
           "step_same_pct": 100.0 * float(np.median(step[~change])) if (~change).any() else float("nan"),
           "step_change_pct": 100.0 * float(np.median(step[change])) if change.any() else float("nan")}
    for d in SPACINGS:
        out[f"interp_d{d}"] = interp_error(m, t, d)
        out[f"oracle_d{d}"] = interp_error(m, t, d, labels)
    return out


def shipped_grid_fit(m, t, grid_m) -> tuple[float, float, int]:
    """(plain interpolation MAPE %, local-fit MAPE %, points) at the M not in ``grid_m``, from this run's
    times at the M in ``grid_m`` (the shipped table's M for the weight)."""
    from perfcast.profiles.measured import _local_line

    g = np.isin(m, sorted(grid_m))
    if g.sum() < 3 or g.all():
        return float("nan"), float("nan"), 0
    lm, lt = np.log(m[g]), np.log(t[g])
    q = np.log(m[~g])
    plain = np.exp(np.interp(q, lm, lt))
    local = np.exp(np.interp(q, lm, _local_line(lm, lt, 3)))
    e = lambda p: 100.0 * float(np.mean(np.abs(p / t[~g] - 1.0)))
    return e(plain), e(local), int((~g).sum())


def perfcast_error(gpu_id: str, dtype: str, n: int, k: int, m, t) -> tuple[float, int, set]:
    """(MAPE %, points, the table's M for this weight) of the shipped profile at the M off its grid."""
    from perfcast.hardware import get_gpu
    from perfcast.profiles.registry import resolve_profile

    prof = resolve_profile(get_gpu(gpu_id), "auto")
    table = "gemm_fp8_dense.csv" if dtype == "fp8" else "gemm.csv"
    root = Path(__file__).resolve().parents[1] / "src" / "perfcast" / "profiles" / "data" / gpu_id / table
    with open(root) as f:
        grid_m = {int(r["m"]) for r in csv.DictReader(f)
                  if r["dtype"] == dtype and int(r["n"]) == n and int(r["k"]) == k}
    off = np.array([x not in grid_m for x in m])
    if not off.any():
        return float("nan"), 0, grid_m
    p = np.array([float(prof.gemm(int(x), n, k, dtype).seconds) * 1e3 for x in m[off]])
    return 100.0 * float(np.mean(np.abs(p / t[off] - 1.0))), int(off.sum()), grid_m


def _table_times(gpu_id: str) -> dict:
    """{(dtype, m, n, k): [median ms]} of the first full bf16 and FP8 grids of ``gpu_id`` (the raw runs the
    shipped tables began from; the shipped tables now hold a second GPU's grid as well)."""
    from gemm_gpu_spread import GRID

    acc: dict = {}
    for kind in ("gemm", "fp8"):
        path = DATA / GRID[(gpu_id, kind)] if (gpu_id, kind) in GRID else None
        if path is None or not path.is_file():
            continue
        with open(path) as f:
            for r in csv.DictReader(f):
                acc.setdefault((r["dtype"], int(r["m"]), int(r["n"]), int(r["k"])), []).append(float(r["median_ms"]))
    return acc


def _rows(path: Path) -> tuple[dict, dict]:
    """({(dtype, m, n, k): [median ms]}, {(dtype, m, n, k): kernels}) of one gemm_pick.csv."""
    times, kernels = {}, {}
    with open(path) as f:
        for r in csv.DictReader(f):
            key = (r["dtype"], int(r["m"]), int(r["n"]), int(r["k"]))
            times[key] = [float(r["median_ms"])]
            kernels[key] = r["kernels"]
    return times, kernels


def deviation(a: dict, b: dict, a_kernels: dict | None = None, b_kernels: dict | None = None) -> dict:
    """Per dtype: ``gemm_gpu_spread.spread`` of the shapes in both ({(dtype, m, n, k): [ms]}), and where
    both runs record kernels, the share of those shapes that ran the same kernels."""
    from gemm_gpu_spread import spread

    out = {}
    for dt in sorted({k[0] for k in a}):
        s = spread({k: v for k, v in a.items() if k[0] == dt}, b)
        if s is None:
            continue
        both = [k for k in a if k[0] == dt and k in b] if a_kernels and b_kernels else []
        s["same_kernels"] = float(np.mean([a_kernels[k] == b_kernels[k] for k in both])) if both else None
        out[dt] = s
    return out


def main(argv=None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    paths = [Path(p) for p in args] or sorted(DATA.glob("*/gemm_pick/gemm_pick.csv"))
    if not paths:
        print("no gemm_pick.csv found under benchmarks/data/*/gemm_pick/")
        return 0
    for path in paths:
        meta = json.loads((path.parent / "meta.json").read_text()) if (path.parent / "meta.json").is_file() else {}
        gpu_id = meta.get("gpu_id", "h100-sxm")
        print(f"\n== {path.relative_to(DATA) if DATA in path.parents else path} ({meta.get('gpu_name', gpu_id)})")
        print(f"   {'weight':22s} {'pts':>4s} {'sets':>4s} {'changes':>7s} {'step same':>9s} {'changed':>7s} "
              + " ".join(f"{'interp d' + str(d):>10s} {'oracle d' + str(d):>14s}" for d in SPACINGS)
              + f" {'perfcast':>14s} {'at shipped M: interp / local':>29s}")
        for (dt, n, k), (m, t, labels) in sorted(load(path).items()):
            s = summarize(m, t, labels)
            pe = perfcast_error(gpu_id, dt, n, k, m, t)
            pl, lo, _ = shipped_grid_fit(m, t, pe[2])
            cols = " ".join(f"{s[f'interp_d{d}'][0]:9.2f}% {s[f'oracle_d{d}'][0]:8.2f}% ({s[f'oracle_d{d}'][1]:3d})"
                            for d in SPACINGS)
            print(f"   {dt + ' ' + str(n) + 'x' + str(k):22s} {s['points']:4d} {s['kernel_sets']:4d} "
                  f"{100 * s['change_share']:6.0f}% {s['step_same_pct']:8.1f}% {s['step_change_pct']:6.1f}% "
                  f"{cols} {pe[0]:7.2f}% ({pe[1]:3d}) {pl:13.2f}% / {lo:6.2f}%")
        for dt, d in deviation(_table_times(gpu_id), _rows(path)[0]).items():
            print(f"   versus the first full grid ({dt}, its shapes): {d['shapes']} shapes, mean |dev| "
                  f"{d['mean_pct']:.1f}% (p90 {d['p90_pct']:.1f}%), this run / grid median {d['median_ratio']:.3f}")
    by_gpu: dict = {}
    for path in paths:
        meta = path.parent / "meta.json"
        uuid = json.loads(meta.read_text()).get("gpu_uuid") if meta.is_file() else None
        by_gpu.setdefault(uuid, []).append(path)
    for uuid, ps in by_gpu.items():
        for a, b in itertools.pairwise(ps):
            (ta, ka), (tb, kb) = _rows(a), _rows(b)
            for dt, d in deviation(ta, tb, ka, kb).items():
                print(f"\nrepeat on GPU {str(uuid)[4:12]} ({a.parent.parent.name} -> {b.parent.parent.name}, {dt}): "
                      f"{d['shapes']} shapes, mean |dev| {d['mean_pct']:.2f}% (p90 {d['p90_pct']:.2f}%), "
                      f"same kernels {100 * d['same_kernels']:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
