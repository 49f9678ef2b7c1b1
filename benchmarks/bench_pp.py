"""Pipeline-parallel accuracy: measured pipelines against ``perfcast.pipeline``.

Reads every ``benchmarks/data/*/step_pp*.jsonl`` and ``step_tppp*.jsonl`` (written by
``perfcast.measure.model_step --pp N`` and ``--tp T --pp P``, see benchmarks/device/run_multi.sh parts
``pp2``, ``pp4`` and ``tppp``) and predicts each measured phase with the same model (``layers`` overrides
included), GPU, batch, prompt, context, tp, pp, micro-batches and runtime: the time of all
micro-batches (``total_ms``). Under TP a measured stage time is the slowest of the stage's TP ranks. Three views of the error:

- ``total``: measured vs predicted time of the whole schedule (what a user gets);
- ``stage``: each stage's measured compute per micro-batch vs the predicted stage (kernels, or the
  host where it binds): the single-GPU step model on a slice of layers;
- ``schedule``: the GPipe composition alone: the measured stage times put through
  :func:`perfcast.step.pipeline.schedule` with the predicted send/recv, vs the measured total. Errors
  here are the pipeline model's own (bubble, transfers, rendezvous), not the kernels'.

    python benchmarks/bench_pp.py [--cases] [--json out.json] [--profile auto|none]
    python benchmarks/bench_pp.py --estimate [benchmarks/device/cases_pp.jsonl] [--gpu h100-sxm]
    python benchmarks/bench_pp.py --estimate benchmarks/device/cases_tppp.jsonl

``--estimate`` prints how long the device run of a cases file takes, from perfcast's own predictions
and the harness's rep rule (about PERFCAST_MEASURE_TARGET_S = 1 s of reps per measurement, at least 10
reps under cuda-graph and 5 under eager, plus 4 warm-up/probe runs, graph capture and set-up).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from perfcast.models import get_model
from perfcast.measure.compare import pipeline_rows
from perfcast.step.pipeline import pipeline_cfg, schedule
from perfcast.step.predict import make_config

ROOT = Path(__file__).resolve().parent / "data"
CASES = Path(__file__).resolve().parent / "device" / "cases_pp.jsonl"
STARTUP_S = 15.0  # per part: spawn, import torch, NCCL init (from the TP parts' logs)
CASE_OVERHEAD_S = 0.35  # per measurement: cache fill, barriers, empty_cache, the printout
TARGET_S = float(os.environ.get("PERFCAST_MEASURE_TARGET_S", "1.0"))


def measured_lines(root: Path = ROOT, smoke: bool = False):
    """Measured pipeline lines; the 4-layer plumbing cases (``tag: smoke``) only with ``smoke``."""
    for f in sorted([*root.glob("*/step_pp*.jsonl"), *root.glob("*/step_tppp*.jsonl")]):
        for line in f.read_text().splitlines():
            if not line.strip():
                continue
            d = json.loads(line)
            if "error" in d or int(d.get("pp", 1) or 1) < 2 or (d.get("tag") == "smoke" and not smoke):
                continue
            yield f.parent.name, d


def config_of(d: dict, profile: str = "auto"):
    spec = get_model(d["model"])
    if d.get("layers") and int(d["layers"]) != spec.n_layers:
        spec = spec.with_layers(int(d["layers"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_config(spec, d.get("gpu_id") or d["gpu"], int(d.get("tp", 1)), int(d["pp"]), "bf16",
                           d.get("runtime", "cuda-graph"), profile)


def compare(lines, profile: str = "auto") -> list[dict]:
    """perfcast.measure.compare's pipeline rows, plus the schedule check: the measured stage times put
    through the pipeline formula against the measured total."""
    rows = []
    for run, d in lines:
        cfg = config_of(d, profile)
        for r in pipeline_rows(cfg, d):
            meas, meas_stage, pred_stage = r["measured_ms"], r["measured_stage_ms"] or [], r["predicted_stage_ms"]
            sched = None
            if len(meas_stage) == cfg.pp:
                _, tot = schedule([x * 1e-3 for x in meas_stage], [x * 1e-3 for x in r["send_ms"]], r["microbatches"])
                sched = float(tot) * 1e3
            rows.append({
                "run": run, "gpu": r["gpu"], "model": r["model"], "layers": cfg.model.n_layers, "tp": cfg.tp,
                "pp": cfg.pp,
                "microbatches": r["microbatches"], "runtime": r["runtime"], "phase": r["phase"],
                "batch": r["batch"], "prompt": r["prompt"], "context": r["context"], "measured_ms": float(meas),
                "predicted_ms": r["predicted_ms"], "err_pct": r["error_pct"],
                "latency_pred_ms": r["latency_pred_ms"], "bubble_pred": r["bubble_pred"],
                "measured_stage_ms": meas_stage, "predicted_stage_ms": pred_stage,
                "stage_err_pct": [(p - q) / q * 100 for p, q in zip(pred_stage, meas_stage) if q > 0],
                "schedule_ms": sched,
                "schedule_err_pct": None if sched is None else (sched - meas) / meas * 100,
            })
    return rows


def summarize(rows: list[dict]) -> dict:
    groups: dict = {}
    for r in rows:
        par = f"tp{r['tp']}xpp{r['pp']}" if r.get("tp", 1) > 1 else f"pp{r['pp']}"
        for key in ((r["gpu"], r["phase"], "all"), (r["gpu"], r["phase"], f"{par} {r['runtime']}")):
            g = groups.setdefault(key, {"total": [], "stage": [], "schedule": []})
            g["total"].append(abs(r["err_pct"]))
            g["stage"] += [abs(x) for x in r["stage_err_pct"]]
            if r["schedule_err_pct"] is not None:
                g["schedule"].append(abs(r["schedule_err_pct"]))
    out = {}
    for (gpu, phase, fam), g in sorted(groups.items()):
        e = np.array(g["total"])
        out[f"{gpu}:{phase}:{fam}"] = {
            "n": len(e), "mape": float(e.mean()), "p90": float(np.percentile(e, 90)), "max": float(e.max()),
            "stage_mape": float(np.mean(g["stage"])) if g["stage"] else None,
            "schedule_mape": float(np.mean(g["schedule"])) if g["schedule"] else None}
    return out


def estimate(path: Path, gpu: str, profile: str = "auto") -> dict:
    """Seconds the device parts take for the cases of ``path``, per part ``(tp, pp)`` (see the module
    docstring)."""
    parts: dict = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        d = {**json.loads(line), "gpu_id": gpu}
        part = (int(d.get("tp", 1) or 1), int(d.get("pp", 1)))
        cfg = config_of(d, profile)
        m = int(d.get("microbatches", 1))
        phases = ["prefill", "decode"] if d.get("measure", "both") == "both" else [d["measure"]]
        t_case = CASE_OVERHEAD_S
        for phase in phases:
            t = pipeline_cfg(cfg, phase, int(d["batch"]), int(d["prompt"]), int(d["context"]), m).total_ms * 1e-3
            graph = cfg.runtime == "cuda-graph"
            lo, hi = (10, 200) if graph else (5, 100)
            reps = int(min(hi, max(lo, round(TARGET_S / max(t, 1e-6)))))
            t_case += (4 + reps) * t + (3 * t if graph else 0.0)  # warm-up + probe, reps, capture
        parts.setdefault(part, []).append((t_case, d))
    return {part: {"cases": len(v), "seconds": STARTUP_S + sum(t for t, _ in v),
                   "longest": max(v, key=lambda x: x[0])} for part, v in sorted(parts.items())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="auto")
    ap.add_argument("--json", default=None)
    ap.add_argument("--cases", action="store_true", help="print every case")
    ap.add_argument("--data", default=str(ROOT), help="folder of GPU runs (default benchmarks/data)")
    ap.add_argument("--smoke", action="store_true", help="include the 4-layer plumbing cases (tag smoke)")
    ap.add_argument("--estimate", nargs="?", const=str(CASES), default=None,
                    help="estimate the device run of a cases file instead (default cases_pp.jsonl)")
    ap.add_argument("--gpu", default="h100-sxm", help="GPU of the --estimate")
    a = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    if a.estimate:
        est = estimate(Path(a.estimate), a.gpu, a.profile)
        total = 0.0
        for (tp, pp), e in est.items():
            t, d = e["longest"]
            total += e["seconds"]
            name = f"tp{tp}xpp{pp}" if tp > 1 else f"pp{pp}"
            print(f"{name}: {e['cases']} cases, about {e['seconds']:.0f} s (longest {t:.1f} s: {d['model']} "
                  f"b{d['batch']} p{d['prompt']} c{d['context']} M{d.get('microbatches', 1)} {d.get('runtime')})")
        print(f"all parts: about {total:.0f} s on {a.gpu} (PERFCAST_MEASURE_TARGET_S={TARGET_S:g})")
        return 0
    rows = compare(measured_lines(Path(a.data), a.smoke), a.profile)
    if not rows:
        print("no PP measurements yet (run: bash benchmarks/device/run_multi.sh \"pp2 pp4 tppp\" on a 4-GPU host, "
              "then copy $OUT/<gpu>/step_pp*.jsonl and step_tppp*.jsonl under benchmarks/data/<run>/)")
        return 0
    if a.cases:
        for r in rows:
            st = " ".join(f"{x:+.0f}" for x in r["stage_err_pct"])
            sc = "" if r["schedule_err_pct"] is None else f" sched {r['schedule_err_pct']:+5.1f}%"
            print(f"{r['gpu']:9s} tp{r['tp']} pp{r['pp']} M{r['microbatches']} {r['runtime']:10s} {r['phase']:7s} "
                  f"{r['model'][-26:]:26s} L{r['layers']:<3d} b{r['batch']:<3d} p{r['prompt']:<5d} c{r['context']:<5d} "
                  f"meas {r['measured_ms']:9.3f} pred {r['predicted_ms']:9.3f} {r['err_pct']:+6.1f}%  "
                  f"stages [{st}]%{sc}")
    summary = summarize(rows)
    print(f"{'gpu':9s} {'phase':8s} {'family':18s} {'n':>4s} {'MAPE%':>7s} {'p90%':>7s} {'max%':>7s} "
          f"{'stage%':>7s} {'sched%':>7s}   (profile={a.profile})")
    for k, v in summary.items():
        gpu, phase, fam = k.split(":")
        f = lambda x: "    -" if x is None else f"{x:7.2f}"
        print(f"{gpu:9s} {phase:8s} {fam:18s} {v['n']:4d} {v['mape']:7.2f} {v['p90']:7.2f} {v['max']:7.1f} "
              f"{f(v['stage_mape'])} {f(v['schedule_mape'])}")
    if a.json:
        Path(a.json).write_text(json.dumps({"summary": summary, "cases": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
