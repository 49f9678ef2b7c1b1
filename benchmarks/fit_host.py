"""Fit the host-side constants of a GPU's profile (host.json) from its own measured runs.

- eager-hf / eager-tp: host time per decoder layer and per forward, from the ``tag: host`` cases
  (batch 1, 16 tokens, where the GPU idles): full-depth minus 2-layer time over the layer difference.
- cuda-graph: the graph launch and the smallest in-graph kernel come from the kernel profile's
  launch.csv; the per-kernel discount (launch latency inside a standalone event-timed kernel that
  a graph replay does not pay) is fitted on ONE model's cuda-graph decode steps (Llama-3.2-1B) and
  validated on every other model by benchmarks/bench_e2e.py.

    python benchmarks/fit_host.py --run benchmarks/data/h200-run1 --profile src/perfcast/profiles/data/h200
"""

from __future__ import annotations

import argparse
import csv
import json
import warnings
from pathlib import Path

import numpy as np

FIT_MODEL = "meta-llama/Llama-3.2-1B"


def per_layer(lines, impl):
    full, two = {}, {}
    for d in lines:
        if d.get("runtime") != "eager" or impl not in str(d.get("impl")) or d.get("batch") != 1 or d.get("prompt") != 16:
            continue
        tgt = two if int(d.get("layers", 0)) == 2 else full
        tgt[d["model"]] = d
    lay, step = [], []
    for m, f in full.items():
        if m not in two:
            continue
        L = int(f["layers"])
        for ph in ("prefill_ms", "decode_ms"):
            pl = (f[ph] - two[m][ph]) / (L - 2) * 1e-3
            lay.append(pl)
            step.append(two[m][ph] * 1e-3 - 2 * pl)
    return float(np.mean(lay)), float(max(np.mean(step), 0.0)), len(lay)


def hf_ops_per_layer(model: str = "meta-llama/Llama-3.1-8B") -> float:
    """Python-dispatched torch ops of one Hugging Face decoder layer, as the step builder counts them."""
    import numpy as np

    from perfcast.models import get_model
    from perfcast.models.builder import HF_LAYOUT, StepShape, build_ops

    spec = get_model(model)
    ops = build_ops(spec, StepShape("decode", np.asarray(1), np.asarray(1), np.asarray(16)), layout=HF_LAYOUT)
    return sum(o.host_ops * o.count for o in ops if o.group == "layer") / spec.n_layers


def fit_discount(lines, gpu_id, profile_dir, host):
    """Jointly fit, on FIT_MODEL's cuda-graph steps only (decode and prefill), the per-kernel launch
    discount and the slowdown of elementwise kernels that read views of fused projections."""
    from perfcast.profiles import HostModel
    from perfcast.profiles.registry import resolve_profile
    from perfcast.step.costs import step_costs
    from perfcast.step.predict import make_config, step_ops
    from perfcast.step.runtime import cuda_graph

    cfg = make_config(FIT_MODEL, gpu_id, profile=str(profile_dir))
    prof = resolve_profile(cfg.gpu, str(profile_dir))
    pre = []
    for d in lines:
        if (d["model"] != FIT_MODEL or d["runtime"] != "cuda-graph" or int(d.get("tp", 1)) != 1 or d.get("tag")
                or int(d.get("layers", 16)) != 16):
            continue
        for phase in ("decode", "prefill"):
            if d.get(f"{phase}_ms"):
                ops = step_ops(cfg, phase, d["batch"], d["prompt"], d["context"])
                pre.append((ops, step_costs(ops, cfg.gpu, prof), d[f"{phase}_ms"] * 1e-3, phase))

    def err(cases, disc, f):
        hm = HostModel(graph_launch_s=host["graph_launch_s"], graph_kernel_min_s=host["graph_kernel_min_s"],
                       graph_kernel_discount_s=float(disc), strided_elem_factor=float(f))
        return float(np.mean([abs(float(cuda_graph(o, c, hm, prof.eff).seconds) - t) / t for o, c, t, _ in cases]))

    # one constant per phase, in turn: the launch discount from decode steps (many small kernels),
    # then the strided-view slowdown from prefill steps (large elementwise kernels), then the discount again
    dec = [c for c in pre if c[3] == "decode"]
    pref = [c for c in pre if c[3] == "prefill"]
    disc, f = 0.0, 1.0
    for _ in range(2):
        disc = min(np.linspace(0.0, 6e-6, 121), key=lambda x: err(dec, x, f))
        f = min(np.linspace(1.0, 2.5, 61), key=lambda x: err(pref, disc, x)) if pref else 1.0
    return float(disc), float(f), err(pre, disc, f) * 100, len(pre)


def fit_hf(run: Path) -> dict:
    """eager-hf from a single-GPU run's host cases: host seconds per dispatched torch op (the per-layer
    time over the step builder's op count) and per forward ({} without such cases)."""
    f = run / "step_single.jsonl"
    if not f.is_file():
        return {}
    lines = [d for d in (json.loads(x) for x in f.read_text().splitlines()) if "error" not in d]
    layer, step, n = per_layer(lines, "hf")
    if not n:
        return {}
    # per torch op, so a layer with more ops (Qwen3's q/k norms) costs more host time
    return {"eager-hf": {"per_op_s": layer / hf_ops_per_layer(), "per_layer_s": 0.0, "per_step_s": step}}


def fit_tp(run: Path) -> dict:
    """eager-tp<N>: the median host time per layer of the host cases of each step_tp<N>.jsonl (batch 1,
    16 tokens, full depth; prefill and decode pooled). Multi-process eager host time is noisy (the
    cases spread +-30% around the median), so no per-step intercept is fitted."""
    from perfcast.models import get_model

    out = {}
    for f in sorted(run.glob("step_tp*.jsonl")):
        if not f.stem[len("step_tp"):].isdigit():  # step_tp<N>.jsonl only (not step_tp2_fp8, step_tppp_*)
            continue
        tp = int(f.stem[len("step_tp"):])
        xs, ys = [], []
        for line in f.read_text().splitlines():
            d = json.loads(line)
            if "error" in d or d.get("tag") != "host" or d.get("runtime") != "eager":
                continue
            L = int(d.get("layers") or get_model(d["model"]).n_layers)
            for ph in ("prefill_ms", "decode_ms"):
                if d.get(ph):
                    xs.append(L)
                    ys.append(d[ph] * 1e-3)
        if not xs:
            continue
        per = np.array(ys) / np.array(xs, float)
        out[f"eager-tp{tp}"] = {"per_op_s": 0.0, "per_layer_s": float(np.median(per)), "per_step_s": 0.0,
                                "fit_points": len(xs), "spread_pct": float((per.max() - per.min()) / np.median(per) * 50)}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="a benchmarks/data/<run> folder with step_single.jsonl")
    ap.add_argument("--profile", required=True, help="the profile directory to write host.json into")
    ap.add_argument("--tp-run", default=None, help="a run folder with step_tp<N>.jsonl (multi-GPU host)")
    a = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    run, prof = Path(a.run), Path(a.profile)
    lines = [json.loads(x) for x in (run / "step_single.jsonl").read_text().splitlines()]
    lines = [d for d in lines if "error" not in d]
    gpu_id = lines[0]["gpu_id"]
    launch = {(r["mode"], r["op"]): float(r["median_us"]) * 1e-6 for r in csv.DictReader(open(prof / "launch.csv"))}
    n_hf = per_layer(lines, "hf")[2]
    pl_layer, pl_step, n_pl = per_layer(lines, "plain")
    graph = {"graph_launch_s": launch[("graph_launch", "replay_1")], "graph_kernel_min_s": launch[("graph", "add")]}
    disc, strided, err, n = fit_discount(lines, gpu_id, prof, graph)
    graph["graph_kernel_discount_s"] = disc
    graph["strided_elem_factor"] = strided
    out = {
        "source": f"fitted by benchmarks/fit_host.py from {run.name}/step_single.jsonl and launch.csv",
        "gpu_id": gpu_id,
        "runtimes": {
            **fit_hf(run),
            "eager-tp": {"per_op_s": 0.0, "per_layer_s": pl_layer, "per_step_s": pl_step},
            "cuda-graph": graph,
        },
        "fit": {"eager_hf_points": n_hf, "eager_plain_points": n_pl,
                "graph_discount_fit_model": FIT_MODEL, "graph_discount_fit_cases": n,
                "graph_discount_fit_mape_pct": err},
    }
    if a.tp_run:
        out["runtimes"].update(fit_tp(Path(a.tp_run)))
        out["source"] += f" and {Path(a.tp_run).name}/step_tp*.jsonl"
    (prof / "host.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
