"""GEMMs as a step runs them: predicted vs measured time of a captured stack of decoder-layer GEMMs
(``python -m perfcast.measure.extras --parts gemmstack``), FP8 and bf16.

Each record is ``layers`` layers of one model's per-layer GEMMs (qkv, o, gate/up, down at the record's TP
shard), every layer with its own weights, back to back in one CUDA graph. The prediction is the profile's
GEMM tables (kernels timed alone, settled) at the stack's power state (``perfcast.step.costs.step_costs``:
the cap of the record's dtype, power.json's bf16 cap or its ``fp8`` section, over the stack's mean demand),
summed under the cuda-graph runtime, as a model step costs them; "alone" is the same sum without the cap,
to show what the cap carries.

    python benchmarks/bench_gemm_stack.py [benchmarks/data/<run>/extras_gemmstack/gemm_stack.jsonl ...] [--json F]

Without paths: every shipped run's hot records (h100-run25, h200-run16); a path given is read whole.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from perfcast.hardware import get_gpu
from perfcast.ops.base import Op
from perfcast.profiles.registry import resolve_profile
from perfcast.step.costs import step_costs
from perfcast.step.runtime import cuda_graph

ROOT = Path(__file__).resolve().parent / "data"


def predict(rec: dict, prof) -> float:
    """The stack's predicted ms under ``prof`` (its power model decides capped or alone)."""
    gpu = prof.gpu
    ops = [Op(name, "gemm", {"m": int(m), "n": int(n), "k": int(k)}, rec["layers"], rec["dtype"])
           for name, m, n, k in rec["gemms"]]
    costs = step_costs(ops, gpu, prof)
    host = dataclasses.replace(prof.host("cuda-graph"), graph_launch_s=0.0)
    return float(cuda_graph(ops, costs, host, prof.eff).seconds) * 1e3


def records(paths, hot_only: bool):
    """The records of ``paths``; ``hot_only``: those timed after >= 500 ms of replays (``times_ms`` kept),
    not h100-run24's first protocol (25 replays: short stacks were timed before the clocks fell)."""
    for p in paths:
        for line in open(p):
            rec = json.loads(line)
            if not hot_only or "times_ms" in rec:
                yield rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    paths = a.paths or sorted(ROOT.glob("*/extras_gemmstack/gemm_stack.jsonl"))
    rows = []
    print(f"{'gpu':9s} {'model':26s} {'tp':>2s} {'tok':>5s} {'dtype':5s} {'meas ms':>8s} {'pred ms':>8s} {'err':>7s}"
          f" {'alone':>7s}")
    for rec in records(paths, hot_only=not a.paths):
        gpu = get_gpu(rec["gpu_id"])
        prof = resolve_profile(gpu, "auto")
        p, p_alone = predict(rec, prof), predict(rec, prof.alone())
        e, ea = (p / rec["ms"] - 1) * 100, (p_alone / rec["ms"] - 1) * 100
        rows.append({"gpu_id": gpu.id, "model": rec["model"], "tp": rec["tp"], "tokens": rec["tokens"],
                     "dtype": rec["dtype"], "measured_ms": rec["ms"], "predicted_ms": p, "err_pct": e,
                     "alone_err_pct": ea})
        print(f"{gpu.id:9s} {rec['model'].split('/')[-1]:26s} {rec['tp']:2d} {rec['tokens']:5d} {rec['dtype']:5s} "
              f"{rec['ms']:8.3f} {p:8.3f} {e:+6.1f}% {ea:+6.1f}%")
    summary = {}
    for gid in sorted({r["gpu_id"] for r in rows}):
        for dt in ("fp8", "bf16"):
            sel = [r for r in rows if r["gpu_id"] == gid and r["dtype"] == dt]
            if sel:
                e = np.abs([r["err_pct"] for r in sel])
                ea = np.abs([r["alone_err_pct"] for r in sel])
                summary[f"{gid}:{dt}"] = {"n": len(sel), "mape": float(e.mean()), "max": float(e.max()),
                                          "mape_alone": float(ea.mean())}
                print(f"{gid} {dt}: MAPE {e.mean():.2f}% (max {e.max():.1f}%) over {len(sel)} stacks; "
                      f"without the power cap {ea.mean():.2f}%")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "summary": summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
