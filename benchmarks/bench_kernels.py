"""Kernel accuracy on held-out measurements (shapes off the calibration grid, measured in a separate run).

For every benchmarks/data/<run>/heldout directory: predict each measured kernel with the GPU's own
shipped profile ("auto") and with "none" (datasheet + ratios learned on the other measured GPU), and
print MAPE / median / p90 absolute percentage error per op family. ``--json`` writes the table.

    python benchmarks/bench_kernels.py [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from perfcast.hardware import get_gpu
from perfcast.profiles.registry import resolve_profile

ROOT = Path(__file__).resolve().parent / "data"


def rows(path: Path):
    if not path.is_file():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def predict_rows(gpu, prof, family, rs, sustained: bool = False):
    """``sustained``: the set was timed with each kernel first run back to back (``calibrate
    --sustain-ms``), so GEMMs and attention are predicted as inside a step, under the power cap."""
    out = []
    for r in rs:
        if family == "gemm":
            n, k = int(r["n"]), int(r["k"])
            if r["dtype"] == "w4a16":  # weight-only int4 (bf16 activations)
                c = prof.gemm(int(r["m"]), n, k, "bf16", "int4")
            elif r["dtype"] == "w8a16c":  # weight-only int8 (bf16 activations, torch.compile'd)
                c = prof.gemm(int(r["m"]), n, k, "w8a16c")
            else:
                c = prof.gemm(int(r["m"]), n, k, r["dtype"])
            fam = "gemm" if n % 8 == 0 and k % 8 == 0 else "gemm_misaligned"
        elif family == "attention":
            q = int(r["q_len"])
            c = prof.attention(int(r["batch"]), int(r["heads"]), int(r["kv_heads"]), int(r["head_dim"]), q,
                               int(r["kv_len"]), str(r["causal"]).lower() in ("1", "true"), None, r["dtype"])
            fam = "attention_decode" if q == 1 else "attention_prefill"
        else:
            c = prof.elementwise(r["op"], int(r["tokens"]), int(r["width"]), r["dtype"])
            fam = "elementwise"
        if sustained and family in ("gemm", "attention") and r["dtype"] in ("bf16", "fp16"):
            c = prof.sustained(c, r["dtype"])
        out.append((fam, float(c.seconds) * 1e3, float(r["median_ms"]), int(c.source)))
    return out


def summarize(preds):
    fams = {}
    for fam, p, m, _ in preds:
        fams.setdefault(fam, []).append(abs(p - m) / m * 100)
    return {f: {"n": len(e), "mape": float(np.mean(e)), "median": float(np.median(e)),
                "p90": float(np.percentile(e, 90)), "max": float(np.max(e))} for f, e in fams.items()}


def heldout_sets():
    """(run dir, GPU id, [(family label, or None for the kernel's own; kernel kind; CSV)]) of every held-out
    set: the calibration harness's held-out runs (plus run 2's FP8 held-out beside its set 7) and the
    second extras session's (FP8 set 11 off the dense grid, MoE expert GEMMs, INT4 tinygemm), FP8 set 12 (random order, own process); plus the
    weight-only INT8 tables, which are on the shipped grid (see below)."""
    for run in sorted(ROOT.glob("*/heldout*/meta.json")):
        d = run.parent
        srcs = [(None, fam, d / f"{fam}.csv") for fam in ("gemm", "attention", "elementwise")]
        if d.name == "heldout7":
            srcs.append(("gemm_fp8", "gemm", d.parent / "extras" / "gemm_fp8_heldout.csv"))
        yield d, json.loads(run.read_text())["gpu_id"], srcs
    for run in sorted(ROOT.glob("*/extras2/extras_meta.json")):
        d = run.parent
        yield d, json.loads(run.read_text())["gpu_id"], [
            ("gemm_fp8", "gemm", d / "gemm_fp8_heldout11.csv"), ("gemm_moe", "gemm", d / "gemm_moe_heldout.csv"),
            ("gemm_int4", "gemm", d / "gemm_int4_heldout.csv")]
    # FP8 sets 12 and 13: timed in random order in a process of its own (extras_fp8held*); set 11 timed
    # interleaved with a grid (extras_fp8same*). Folders ending _settle: each kernel after a 20 ms idle, as
    # the shipped FP8 tables since the seventh session
    for run in sorted(ROOT.glob("*/extras_fp8held*/extras_meta.json")) + sorted(
            ROOT.glob("*/extras_fp8same*/extras_meta.json")):
        d = run.parent
        yield d, json.loads(run.read_text())["gpu_id"], [
            ("gemm_fp8", "gemm", f) for f in sorted(d.glob("gemm_fp8_heldout*.csv"))]
    # weight-only INT8 (torch.compile'd): no off-grid held-out exists, and these are the very rows shipped
    # as gemm_int8.csv, so "auto" only checks they come back; "none" is the transfer from the other GPU
    for run in sorted(ROOT.glob("*/extras_int8c/extras_meta.json")):
        d = run.parent
        yield d, json.loads(run.read_text())["gpu_id"], [("gemm_int8_ongrid", "gemm", d / "gemm_int8c.csv")]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    report = {}
    for d, gpu_id, srcs in heldout_sets():
        gpu = get_gpu(gpu_id)
        meta = d / "meta.json"
        sus = meta.is_file() and float(json.loads(meta.read_text()).get("timing", {}).get("sustain_ms") or 0) > 0
        for mode in ("auto", "none"):
            prof = resolve_profile(gpu, mode)
            preds = [(label or fam, p, m, src) for label, kind, path in srcs
                     for fam, p, m, src in predict_rows(gpu, prof, kind, rows(path), sustained=sus)]
            report[f"{d.parent.name}/{d.name}:{gpu.id}:{mode}"] = {"profile": prof.name, "families": summarize(preds)}
    print(f"{'run:gpu:profile':42s} {'family':18s} {'n':>4s} {'MAPE%':>7s} {'med%':>6s} {'p90%':>6s} {'max%':>7s}")
    for key, r in report.items():
        for fam, s in sorted(r["families"].items()):
            print(f"{key:42s} {fam:18s} {s['n']:4d} {s['mape']:7.2f} {s['median']:6.2f} {s['p90']:6.2f} {s['max']:7.1f}")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
