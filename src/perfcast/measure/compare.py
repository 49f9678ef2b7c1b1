"""Measured vs predicted, side by side: the report of ``perfcast measure`` (no torch needed).

Each measured line (from ``perfcast.measure.model_step``) is predicted with the same model, GPU,
batch, prompt, context, tp and runtime, with the GPU's own profile (or ``profile``), and the error
of every measured phase is shown. ``--layers`` overrides are predicted with that many layers.
Pipeline lines (``pp > 1``) are predicted with :func:`perfcast.pipeline` at their ``microbatches``:
the time of all micro-batches.
"""

from __future__ import annotations

import json
import warnings

from perfcast.models import get_model


def compare_lines(lines: list[dict], profile: str = "auto") -> list[dict]:
    from perfcast.step.predict import make_config, predict_many

    rows = []
    for d in lines:
        if "error" in d:
            rows.append({"case": d.get("case"), "model": d.get("model"), "error": d["error"]})
            continue
        if (d.get("runtime") == "eager" and int(d.get("tp", 1)) == 1 and int(d.get("pp", 1) or 1) == 1
                and "plain" in str(d.get("impl", ""))):
            continue  # the plain decoder run eagerly at tp 1 only calibrates host time (no contract runtime)
        try:
            from perfcast.hardware import get_gpu

            get_gpu(d.get("gpu_id") or d.get("gpu"))
        except ValueError as e:  # e.g. a CPU smoke run: nothing to compare against
            rows.append({"case": d.get("case"), "model": d.get("model"), "error": str(e).split(";")[0]})
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pp = int(d.get("pp", 1) or 1)
            spec = get_model(d["model"])
            if d.get("layers") and int(d["layers"]) != spec.n_layers:
                spec = spec.with_layers(int(d["layers"]))
            cfg = make_config(spec, d.get("gpu_id") or d.get("gpu"), int(d.get("tp", 1)), pp, "bf16",
                              d.get("runtime", "cuda-graph"), profile)
        if pp > 1:
            rows += pipeline_rows(cfg, d)
            continue
        pred = predict_many(cfg, d["batch"], d["prompt"], d["context"])[0]
        for phase in ("prefill", "decode"):
            meas = d.get(f"{phase}_ms")
            if meas is None:
                continue
            p = getattr(pred, f"{phase}_ms")
            rows.append({"case": d.get("case"), "model": d["model"], "gpu": cfg.gpu.id, "runtime": cfg.runtime,
                         "tp": cfg.tp, "batch": d["batch"], "prompt": d["prompt"], "context": d["context"],
                         "phase": phase, "measured_ms": meas, "predicted_ms": p,
                         "error_pct": (p - meas) / meas * 100, "profile": pred.profile})
    return rows


def pipeline_rows(cfg, d: dict) -> list[dict]:
    """Measured pipeline phases against :func:`perfcast.step.pipeline.pipeline_cfg` (all micro-batches)."""
    from perfcast.step.pipeline import pipeline_cfg

    rows = []
    m = int(d.get("microbatches", 1) or 1)
    for phase in ("prefill", "decode"):
        meas = d.get(f"{phase}_ms")
        if meas is None:
            continue
        pr = pipeline_cfg(cfg, phase, int(d["batch"]), int(d["prompt"]), int(d["context"]), m)
        rows.append({"case": d.get("case"), "model": d["model"], "gpu": cfg.gpu.id, "runtime": cfg.runtime,
                     "tp": cfg.tp, "pp": cfg.pp, "microbatches": m, "batch": d["batch"], "prompt": d["prompt"],
                     "context": d["context"], "phase": phase, "measured_ms": meas, "predicted_ms": pr.total_ms,
                     "error_pct": (pr.total_ms - meas) / meas * 100, "profile": pr.profile,
                     "measured_stage_ms": d.get(f"{phase}_stage_ms"),
                     # a stage takes its GPU time or, under eager, its host's issue time if longer
                     "predicted_stage_ms": [max(s["gpu_ms"], s["host_ms"]) for s in pr.stages],
                     "latency_pred_ms": pr.latency_ms, "bubble_pred": pr.bubble_fraction,
                     "send_ms": [s["send_ms"] for s in pr.stages[:-1]]})
    return rows


def format_rows(rows: list[dict]) -> str:
    out = [f"{'model':28s} {'gpu':9s} {'runtime':10s} {'tp':>2s} {'case':>18s} {'phase':7s} "
           f"{'measured':>9s} {'predicted':>9s} {'error':>7s}"]
    errs = []
    for r in rows:
        if "error" in r:
            out.append(f"{r.get('model')!s:28s} error: {r['error']}")
            continue
        case = f"b{r['batch']} p{r['prompt']} c{r['context']}"
        if r.get("pp", 1) > 1:
            case = f"pp{r['pp']}xM{r['microbatches']} " + case
        out.append(f"{r['model'][-28:]:28s} {r['gpu']:9s} {r['runtime']:10s} {r['tp']:2d} {case:>18s} "
                   f"{r['phase']:7s} {r['measured_ms']:9.3f} {r['predicted_ms']:9.3f} {r['error_pct']:+6.1f}%")
        errs.append(abs(r["error_pct"]))
    if errs:
        out.append(f"MAPE {sum(errs) / len(errs):.2f}% over {len(errs)} measured phases")
    return "\n".join(out)


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="perfcast measure --compare", description=__doc__.splitlines()[0])
    ap.add_argument("measured", help="JSONL written by perfcast.measure.model_step")
    ap.add_argument("--profile", default="auto")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    lines = [json.loads(x) for x in open(a.measured) if x.strip()]
    rows = compare_lines(lines, a.profile)
    print(json.dumps(rows, indent=1) if a.json else format_rows(rows))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
