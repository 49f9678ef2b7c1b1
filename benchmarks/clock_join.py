"""Join a calibration's timeline (calibrate --timeline) with an nvidia-smi clock log sampled every 10 ms:
the SM clock and board power each kernel was timed at, by kernel family and alone rate.

    python benchmarks/clock_join.py benchmarks/data/h200-run11
(the folder holds clocks_power_10ms.csv and clock_alone/{timeline,gemm,attention}.csv)
"""

from __future__ import annotations

import csv
import datetime as dt
import sys
from pathlib import Path

import numpy as np

BANDS = ((0, 200), (200, 400), (400, 550), (550, 650), (650, 750), (750, 2000))


def clock_log(path: Path) -> np.ndarray:
    """(unix seconds, SM MHz, W) per sample of ``nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw``
    (its timestamps are the host's UTC wall clock)."""
    out = []
    for r in list(csv.reader(open(path)))[1:]:
        try:
            t = dt.datetime.strptime(r[0].strip(), "%Y/%m/%d %H:%M:%S.%f").replace(tzinfo=dt.UTC).timestamp()
            out.append((t, float(r[1].split()[0]), float(r[2].split()[0])))
        except (ValueError, IndexError):
            continue  # a short row, or a sample nvidia-smi could not read
    return np.array(out).reshape(-1, 3)


def flops(family: str, r: dict) -> float:
    if family == "gemm":
        return 2.0 * int(r["m"]) * int(r["n"]) * int(r["k"])
    b, h, hd, q, kv = (int(r[k]) for k in ("batch", "heads", "head_dim", "q_len", "kv_len"))
    causal = str(r["causal"]).lower() in ("true", "1") and q == kv
    return 4.0 * b * h * hd * q * kv * (0.5 if causal else 1.0)


def join(run: Path) -> list[tuple[str, float, float, float]]:
    """(family, alone TFLOP/s, median SM MHz, median W) of every timed case with two or more samples."""
    smi = clock_log(run / "clocks_power_10ms.csv")
    cal = run / "clock_alone"
    rows = {f: list(csv.DictReader(open(cal / f"{f}.csv"))) for f in ("gemm", "attention")}
    out = []
    for t in csv.DictReader(open(cal / "timeline.csv")):
        s, e = float(t["start_unix_s"]), float(t["end_unix_s"])
        m = (smi[:, 0] >= s) & (smi[:, 0] <= e)
        if m.sum() < 2 or t["family"] not in rows:
            continue
        r = rows[t["family"]][int(t["row"])]
        rate = flops(t["family"], r) / float(r["median_ms"]) / 1e9
        out.append((t["family"], rate, float(np.median(smi[m, 1])), float(np.median(smi[m, 2]))))
    return out


def main(argv=None) -> int:
    run = Path((argv or sys.argv[1:] or ["benchmarks/data/h200-run11"])[0])
    pts = join(run)
    print(f"{run.name}: {len(pts)} timed cases with >= 2 clock samples")
    for fam in ("gemm", "attention"):
        for lo, hi in BANDS:
            sel = [p for p in pts if p[0] == fam and lo <= p[1] < hi]
            if sel:
                print(f"{fam:9s} {lo:4d}-{hi:<4d} TFLOP/s alone  n={len(sel):3d}  SM clock median "
                      f"{np.median([p[2] for p in sel]):6.0f} MHz  power median {np.median([p[3] for p in sel]):5.0f} W")
    return 0


if __name__ == "__main__":
    sys.exit(main())
