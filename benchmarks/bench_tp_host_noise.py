"""Host-bound TP eager steps: how much they move on one host within minutes, with ranks free and with
each rank pinned to its own cores (``model_step --pin``; ``run_multi.sh tppin``, ``h200x4-run7/tppin``).

The same 12 cases (Llama-3.1-8B and Qwen2.5-14B at TP 2 and 4: decode at batch 1 over 2,048 keys,
prefill of 512 tokens, and the batch-1 16-token ``host`` case) were run four times per TP size, free and
pinned alternated (free, pinned, then pinned, free). For each phase this prints the four medians and:
- free r1 vs free r2: the run-to-run change of the same harness on the same host, minutes apart;
- pinned vs free: the mean of the two pinned medians over the mean of the two free ones.

    python benchmarks/bench_tp_host_noise.py [RUN_DIR/tppin]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

DEFAULT = Path(__file__).resolve().parent / "data" / "h200x4-run7" / "tppin"
TAGS = ("free_r1", "pin_r1", "pin_r2", "free_r2")


def medians(folder: Path) -> dict:
    """{(tp, model, measure, prompt, phase): {tag: median ms}} of every tppin line."""
    out: dict = {}
    for f in sorted(folder.glob("step_tp*_*_r*.jsonl")):
        tag = f.stem.split("_", 2)[2]
        for line in f.read_text().splitlines():
            r = json.loads(line)
            for ph in ("prefill", "decode"):
                if f"{ph}_ms" in r and r["measure"] in (ph, "both"):
                    key = (r["tp"], r["model"].split("/")[-1], r["measure"], r["prompt"], ph)
                    out.setdefault(key, {})[tag] = r[f"{ph}_ms"]
    return out


def main(argv=None) -> int:
    folder = Path((argv or sys.argv[1:] or [DEFAULT])[0])
    rows = medians(folder)
    if not rows:
        print(f"no tppin lines under {folder}")
        return 1
    print(f"{'tp':>2s} {'model':14s} {'case':14s} {'phase':7s} " + " ".join(f"{t:>8s}" for t in TAGS)
          + f" {'free r2/r1':>10s} {'pin/free':>8s}")
    rr, pf, spread = [], [], []
    for key, v in sorted(rows.items()):
        if not all(t in v for t in TAGS):
            continue
        tp, model, measure, prompt, ph = key
        r21 = v["free_r2"] / v["free_r1"]
        p = (v["pin_r1"] + v["pin_r2"]) / (v["free_r1"] + v["free_r2"])
        rr.append(abs(r21 - 1))
        pf.append(p)
        spread.append(max(v[t] for t in TAGS) / min(v[t] for t in TAGS))
        print(f"{tp:2d} {model:14s} {measure + ' ' + str(prompt):14s} {ph:7s} "
              + " ".join(f"{v[t]:8.2f}" for t in TAGS) + f" {r21:10.2f} {p:8.2f}")
    print(f"\n{len(rr)} phases: free round 2 vs round 1, mean |change| {100 * np.mean(rr):.1f}% "
          f"(max {100 * max(rr):.0f}%); pinned/free mean {np.mean(pf):.2f} (range {min(pf):.2f}-{max(pf):.2f}); "
          f"max/min of the four medians: median {np.median(spread):.2f}x, max {max(spread):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
