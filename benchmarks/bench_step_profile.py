"""Where a step's error sits: measured kernel time per family against perfcast's per-op prediction.

For every ``benchmarks/data/*/step_profile/step_profile.jsonl`` (``perfcast.measure.step_profile``: a
model step captured in one CUDA graph, replayed under torch.profiler), print per case the measured graph
time and the summed GPU time of its GEMM, attention and elementwise kernels, beside perfcast's
prediction of the same step (``perfcast.predict(..., breakdown=True)``, ops summed by kind). The
"other" column is the graph time not inside any kernel (measured) and the step time outside the op
costs (predicted).

    python benchmarks/bench_step_profile.py [--profile auto|none|DIR] [--kernels N]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from perfcast.measure.step_profile import FAMILIES, compare

ROOT = Path(__file__).resolve().parent / "data"


def records(root: Path = ROOT):
    for path in sorted(root.glob("*/*profile*/step_profile.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                if "error" not in rec:
                    yield path.parent.parent.name, rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="auto")
    ap.add_argument("--kernels", type=int, default=0, help="also list each case's N slowest kernels")
    a = ap.parse_args(argv)
    head = (f"{'run':12s} {'model':24s} {'phase':7s} {'b':>4s} {'step ms meas/pred':>18s} {'err':>6s} "
            + " ".join(f"{f + ' meas/pred':>20s}" for f in FAMILIES + ("other",)))
    print(head)
    n = 0
    errs: dict = {}  # (phase, family) -> |predicted / measured - 1| per step
    for run, rec in records():
        c = compare(rec, a.profile)
        phase = rec.get("measure", "decode")
        pairs = [("step", c["measured_ms"], c["predicted_ms"]), ("other", c["measured_other_ms"], c["predicted_other_ms"])]
        pairs += [(f, c["measured_family_ms"][f], c["predicted_family_ms"][f]) for f in FAMILIES]
        for f, m, p in pairs:
            if m > 0:
                errs.setdefault((phase, f), []).append(abs(p / m - 1.0) * 100)
        err = (c["predicted_ms"] - c["measured_ms"]) / c["measured_ms"] * 100
        cols = [f"{c['measured_family_ms'][f]:9.3f}/{c['predicted_family_ms'][f]:<9.3f}" for f in FAMILIES]
        cols.append(f"{c['measured_other_ms']:9.3f}/{c['predicted_other_ms']:<9.3f}")
        print(f"{run:12s} {rec['model'][-24:]:24s} {rec.get('measure', 'decode'):7s} {rec['batch']:>4} "
              f"{c['measured_ms']:8.3f}/{c['predicted_ms']:<9.3f} {err:+5.1f}% " + " ".join(f"{x:>20s}" for x in cols))
        for k in rec.get("kernels", [])[:a.kernels]:
            print(f"    {k['family']:11s} {k['calls']:6.1f} calls {k['ms']:8.4f} ms  {k['name'][:110]}")
        n += 1
    if not n:
        print("no step_profile.jsonl under benchmarks/data (run perfcast.measure.step_profile on a GPU)")
        return 0
    for phase in ("decode", "prefill"):
        parts = [f"{f} {sum(v) / len(v):.1f}%" for f in ("step", *FAMILIES, "other")
                 if (v := errs.get((phase, f)))]
        if parts:
            print(f"{phase}: MAPE per family over {len(errs[(phase, 'step')])} steps: " + ", ".join(parts)
                  + " (other: measured graph time outside kernels; predicted graph launch and in-graph gaps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
