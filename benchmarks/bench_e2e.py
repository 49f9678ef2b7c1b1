"""End-to-end step accuracy: predictions against every measured model step under benchmarks/data.

Each measured line (written by ``perfcast.measure.model_step``) is predicted with the same model,
GPU (the line's ``gpu_id``), batch, prompt, context, tp and runtime; lines that only calibrate host
overhead (``tag: host``, a ``layers`` override, or the plain decoder under eager at tp 1) are skipped,
and so are pipeline-parallel lines (``pp > 1``, ``step_pp*.jsonl``): benchmarks/bench_pp.py compares
those with ``perfcast.pipeline`` at their micro-batches.

    python benchmarks/bench_e2e.py [--profile auto|none] [--json out.json] [--cases] [--own-host]

``--own-host``: eager runs are host-bound at small batch, and hosts differ (two 4xH200 hosts ran the
same TP4 decode 27 and 20 ms). With this flag each eager run is predicted with the host constants
(eager-tp<N> for multi-GPU runs, eager-hf for single-GPU ones) fitted by benchmarks/fit_host.py's rule
on that run's own ``tag: host`` cases (batch 1, 16 tokens, which are never evaluated), as a user does
who calibrates their own host.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from perfcast.models import get_model
from perfcast.step.predict import make_config, predict_many

ROOT = Path(__file__).resolve().parent / "data"


def measured_lines():
    for f in sorted(ROOT.glob("*/step_*.jsonl")):
        if "smoke" in f.name:
            continue
        for line in f.read_text().splitlines():
            d = json.loads(line)
            if "error" in d or d.get("tag") == "host" or int(d.get("pp", 1) or 1) > 1:
                continue
            spec = get_model(d["model"])
            if d.get("layers") and int(d["layers"]) != spec.n_layers:
                continue
            if d["runtime"] == "eager" and int(d.get("tp", 1)) == 1 and "hf" not in str(d.get("impl", "hf")):
                continue
            yield f.parent.name, d


def own_host_profiles(runs, gpu_of) -> dict:
    """{run: profile dir}: a copy of the run's GPU profile whose host.json carries the host constants
    (eager-tp<N> of a multi-GPU run, eager-hf of a single-GPU one) fitted on that run's own host cases."""
    import shutil
    import tempfile

    from fit_host import fit_hf, fit_tp

    from perfcast.profiles.registry import shipped_profile_dir

    out, tmp = {}, Path(tempfile.mkdtemp(prefix="perfcast-ownhost-"))
    for run in runs:
        fitted = fit_tp(ROOT / run) or fit_hf(ROOT / run)
        if not fitted:
            continue
        dst = tmp / run
        shutil.copytree(str(shipped_profile_dir(gpu_of[run])), dst)
        host = json.loads((dst / "host.json").read_text())
        for name, v in fitted.items():
            host["runtimes"][name] = {**host["runtimes"].get(name, {}), **v}
        host["source"] = f"{', '.join(fitted)} refitted on {run}'s own host cases"
        (dst / "host.json").write_text(json.dumps(host))
        out[run] = str(dst)
    return out


def group_of(d, phase):
    tp = int(d.get("tp", 1))
    dt = "" if d.get("dtype", "bf16") == "bf16" else f"{d['dtype']} "  # fp8: e4m3 linears (model_step --dtype fp8)
    if tp > 1:
        return f"{dt}tp{tp} {phase} ({d['runtime']})"
    return f"{dt}{phase} ({d['runtime']})"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="auto")
    ap.add_argument("--json", default=None)
    ap.add_argument("--cases", action="store_true", help="print every case")
    ap.add_argument("--own-host", action="store_true",
                    help="multi-GPU eager runs with host constants fitted on the run's own host cases")
    a = ap.parse_args(argv)
    rows = []
    warnings.simplefilter("ignore")
    lines = list(measured_lines())
    own = {}
    if a.own_host:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        own = own_host_profiles(sorted({r for r, d in lines if d["runtime"] == "eager"}),
                                {r: d["gpu_id"] for r, d in lines})
    for run, d in lines:
        prof = own.get(run, a.profile) if d["runtime"] == "eager" else a.profile
        cfg = make_config(d["model"], d["gpu_id"], int(d.get("tp", 1)), 1, d.get("dtype", "bf16"), d["runtime"], prof)
        pred = predict_many(cfg, d["batch"], d["prompt"], d["context"])[0]
        for phase in ("prefill", "decode"):
            if d.get(f"{phase}_ms") is None:
                continue
            meas = float(d[f"{phase}_ms"])
            p = getattr(pred, f"{phase}_ms")
            rows.append({"run": run, "gpu": d["gpu_id"], "group": group_of(d, phase), "model": d["model"],
                         "batch": d["batch"], "prompt": d["prompt"], "context": d["context"], "tp": d.get("tp", 1),
                         "runtime": d["runtime"], "dtype": d.get("dtype", "bf16"), "phase": phase,
                         "measured_ms": meas, "predicted_ms": p,
                         "err_pct": (p - meas) / meas * 100})
    if a.cases:
        for r in rows:
            print(f"{r['gpu']:9s} {r['group']:22s} {r['model']:26s} b{r['batch']:<4d} p{r['prompt']:<5d} "
                  f"c{r['context']:<5d} meas {r['measured_ms']:9.3f} pred {r['predicted_ms']:9.3f} {r['err_pct']:+6.1f}%")
    summary = {}
    for r in rows:
        summary.setdefault((r["gpu"], r["group"]), []).append(abs(r["err_pct"]))
    print(f"{'gpu':9s} {'case family':24s} {'n':>4s} {'MAPE%':>7s} {'p90%':>7s} {'max%':>7s}   (profile={a.profile}{', own host' if a.own_host else ''})")
    out = {}
    for (g, grp), e in sorted(summary.items()):
        e = np.array(e)
        out[f"{g}:{grp}"] = {"n": len(e), "mape": float(e.mean()), "p90": float(np.percentile(e, 90)),
                             "max": float(e.max())}
        print(f"{g:9s} {grp:24s} {len(e):4d} {e.mean():7.2f} {np.percentile(e, 90):7.2f} {e.max():7.1f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"summary": out, "cases": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
