"""Collective accuracy, leave-one-out: each measured size (>= 1 MiB) is predicted from the same
collective's curve with that size removed (log-log interpolation of the ratio over the link
roofline), and from a second run on another host where one exists (run-to-run noise).

    python benchmarks/bench_collectives.py
"""

import csv
import sys
from pathlib import Path

import itertools

import numpy as np

from perfcast.hardware import get_gpu
from perfcast.ops import analytical as an
from perfcast.profiles.interp import Curve
from perfcast.profiles.measured import IDEAL

ROOT = Path(__file__).resolve().parent / "data"


def load(path):
    by = {}
    for r in csv.DictReader(open(path)):
        by.setdefault((r["op"], int(r["gpus"])), []).append((float(r["bytes"]), float(r["median_ms"])))
    return {k: sorted(v) for k, v in by.items()}


def main():
    gpu = get_gpu("h200")
    runs = sorted(ROOT.glob("*/coll/collectives.csv"))
    print(f"{'run':14s} {'op':15s} {'gpus':>4s} {'n':>3s} {'LOO MAPE%':>9s} {'p90%':>6s}")
    allerr = []
    for path in runs:
        for (op, g), pts in sorted(load(path).items()):
            if op == "send_recv":
                continue
            b = np.array([p[0] for p in pts])
            t = np.array([p[1] for p in pts]) * 1e-3
            base = an.collective_cost(gpu, op, b, g, IDEAL).seconds
            lr = np.log(t / base)
            errs = []
            for i in range(1, len(b) - 1):  # interior points only: interpolation, not extrapolation
                if b[i] < 1 << 20:
                    continue
                keep = np.arange(len(b)) != i
                pred = base[i] * np.exp(Curve(b[keep], lr[keep])(b[i]))
                errs.append(abs(pred - t[i]) / t[i] * 100)
            if errs:
                allerr += errs
                print(f"{path.parent.parent.name:14s} {op:15s} {g:4d} {len(errs):3d} {np.mean(errs):9.2f} "
                      f"{np.percentile(errs, 90):6.2f}")
    for r0, r1 in itertools.combinations(runs, 2):  # every pair of hosts that measured the same points
        a, b2 = load(r0), load(r1)
        diffs = []
        for key in set(a) & set(b2):
            da, db = dict(a[key]), dict(b2[key])
            for s in set(da) & set(db):
                if s >= 1 << 20:
                    diffs.append(abs(da[s] - db[s]) / db[s] * 100)
        if diffs:
            print(f"run-to-run ({r0.parent.parent.name} vs {r1.parent.parent.name}, same sizes >= 1 MiB): "
                  f"mean |diff| {np.mean(diffs):.2f}% over {len(diffs)} points")
    if allerr:
        print(f"all collectives >= 1 MiB, leave-one-out: MAPE {np.mean(allerr):.2f}% (p90 {np.percentile(allerr, 90):.2f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
