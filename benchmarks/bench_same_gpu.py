"""Kernel accuracy when the profile comes from the very GPU that is predicted (the ``perfcast calibrate``
use: a user calibrates their own GPU), against the shipped profile (measured on another GPU of the model).

A same-GPU run (``h100-run18``) holds, from one call on one GPU: the whole bf16/fp16 GEMM grid in random
order (``calib_gemm``), the dense FP8 grid interleaved with FP8 set 11 (``extras_fp8same``), FP8 set 12
(``extras_fp8held``), and GEMM held-out sets 13 (new) and 9 (``heldout13``, ``heldout9``), the sets timed
after the grids. The own profile is the shipped one of that GPU model with ``gemm.csv`` and
``gemm_fp8_dense.csv`` replaced by the run's grids (attention, elementwise and the rest as shipped).
Each held-out set is predicted with both profiles; GEMMs are split into aligned (n, k multiples of 8)
and misaligned, as ``bench_kernels.py`` does. Then the SM clock and power while each part was timed
(the run's ``clocks_power.csv``, sampled every 100 ms, over each part's start and elapsed time from its
meta.json; samples above 150 W, i.e. with a kernel running): the grid runs in a heavier power state than
the held-out sets, whose mix of shapes is lighter.

    python benchmarks/bench_same_gpu.py [benchmarks/data/<run> ...]   (default: every run with both grids)
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from bench_kernels import predict_rows, rows

from perfcast.hardware import get_gpu
from perfcast.profiles.registry import resolve_profile, shipped_profile_dir

DATA = Path(__file__).resolve().parent / "data"
SETS = (("GEMM set 13", "heldout13/gemm.csv"), ("GEMM set 9", "heldout9/gemm.csv"),
        ("GEMM set 13, settled", "heldout13_settle/gemm.csv"), ("GEMM set 9, settled", "heldout9_settle/gemm.csv"),
        ("FP8 set 12", "extras_fp8held/gemm_fp8_heldout12.csv"),
        ("FP8 set 11 (same process as the grid)", "extras_fp8same/gemm_fp8_heldout11_same.csv"))


GRIDS = ("calib_gemm", "calib_gemm_settle")  # a same-GPU run's GEMM grid: timed free, or settled


def _grid(run: Path) -> Path | None:
    return next((run / g for g in GRIDS if (run / g / "gemm.csv").is_file()), None)


def runs() -> list[Path]:
    """Runs with a whole GEMM grid and held-out sets of the same GPU."""
    return sorted(d for d in DATA.iterdir() if d.is_dir() and _grid(d) is not None
                  and any((d / rel).is_file() for _, rel in SETS))


def own_profile_dir(run: Path, gpu_id: str, into: Path) -> Path:
    """The shipped profile of ``gpu_id`` with its GEMM grid (and FP8 grid, where the run has one)
    replaced by ``run``'s."""
    d = into / gpu_id
    shutil.copytree(shipped_profile_dir(gpu_id), d)
    shutil.copy(_grid(run) / "gemm.csv", d / "gemm.csv")
    fp8 = run / "extras_fp8same" / "gemm_fp8_dense_same.csv"
    if fp8.is_file():
        shutil.copy(fp8, d / "gemm_fp8_dense.csv")
    return d


def clock_windows(run: Path) -> list[tuple[str, int, float, float]]:
    """(part, busy samples, median SM MHz, median W) for the grid and the GEMM held-out sets of ``run``."""
    import datetime as dt

    from clock_join import clock_log

    log = run / "clocks_power.csv"
    if not log.is_file():
        return []
    ts, mhz, watts = clock_log(log).T
    out = []
    for part in (*GRIDS, "heldout13", "heldout9", "heldout13_settle", "heldout9_settle"):
        meta = run / part / "meta.json"
        if not meta.is_file():
            continue
        m = json.loads(meta.read_text())
        t0 = dt.datetime.fromisoformat(m["date_utc"]).timestamp()
        sel = (ts >= t0) & (ts <= t0 + float(m["elapsed_s"]["total"])) & (watts > 150.0)
        if sel.any():
            out.append((part, int(sel.sum()), float(np.median(mhz[sel])), float(np.median(watts[sel]))))
    return out


def bias_bound(gpu, prof, rs) -> tuple[float, float, float, float]:
    """Aligned GEMMs of one set: (MAPE %, mean signed error % of M > 4096, of kernels under 0.03 ms, and the
    MAPE with those two groups' predictions scaled by 0.97 and 1.02): how much the two biases that repeat
    on every set are worth, an oracle bound, not a model."""
    pr = [(int(r["m"]), p, m) for r, (fam, p, m, _) in zip(rs, predict_rows(gpu, prof, "gemm", rs)) if fam == "gemm"]
    m_ = np.array([x[0] for x in pr])
    p_ = np.array([x[1] for x in pr])
    t_ = np.array([x[2] for x in pr])
    big, small = m_ > 4096, t_ < 0.03
    fixed = np.where(small, 1.02, 1.0) * np.where(big, 0.97, 1.0) * p_
    err = p_ / t_ - 1.0
    return (100 * float(np.mean(np.abs(err))), 100 * float(err[big].mean()), 100 * float(err[small].mean()),
            100 * float(np.mean(np.abs(fixed / t_ - 1.0))))


def stats(preds) -> dict:
    out = {}
    for fam, p, m, _ in preds:
        out.setdefault(fam, []).append(abs(p / m - 1.0) * 100)
    return {f: (len(e), float(np.mean(e)), float(np.percentile(e, 90))) for f, e in out.items()}


def main(argv=None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    todo = [Path(a) for a in args] or runs()
    if not todo:
        print("no same-GPU run (calib_gemm/ and extras_fp8same/) under benchmarks/data")
        return 0
    for run in todo:
        meta = json.loads((_grid(run) / "meta.json").read_text())
        gpu = get_gpu(meta["gpu_id"])
        with tempfile.TemporaryDirectory() as tmp:
            profs = {"own grid": resolve_profile(gpu, str(own_profile_dir(run, gpu.id, Path(tmp)))),
                     "shipped": resolve_profile(gpu, "auto")}
            settled = float(meta.get("timing", {}).get("settle_ms") or 0) > 0
            print(f"\n== {run.name} ({meta.get('gpu_name')}): held-out sets predicted from this GPU's own grid"
                  f" (timed {'settled' if settled else 'free'}) and from the shipped profile")
            print(f"   {'set':40s} {'family':16s} {'n':>4s} | {'own MAPE':>8s} {'p90':>6s} | {'shipped':>8s} {'p90':>6s}")
            for label, rel in SETS:
                rs = rows(run / rel)
                if not rs:
                    continue
                res = {name: stats(predict_rows(gpu, p, "gemm", rs)) for name, p in profs.items()}
                for fam in sorted(res["own grid"]):
                    n, mo, po = res["own grid"][fam]
                    _, ms, ps = res["shipped"][fam]
                    fam_label = "gemm_fp8" if "FP8" in label else fam
                    print(f"   {label:40s} {fam_label:16s} {n:4d} | {mo:7.3f}% {po:5.1f}% | {ms:7.3f}% {ps:5.1f}%")
            for label, rel in SETS[:2]:
                rs = rows(run / rel)
                if rs:
                    mape, b_big, b_small, fixed = bias_bound(gpu, profs["shipped"], rs)
                    print(f"   {label} (shipped): MAPE {mape:.2f}%; bias M > 4096 {b_big:+.1f}%, under 0.03 ms "
                          f"{b_small:+.1f}%; both removed (x0.97, x1.02): {fixed:.2f}%")
        for part, n, mhz, w in clock_windows(run):
            print(f"   while timing {part:11s}: {n:4d} busy samples, SM clock median {mhz:5.0f} MHz, power median {w:4.0f} W")
    return 0


if __name__ == "__main__":
    sys.exit(main())
