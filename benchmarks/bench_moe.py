"""MoE check: predicted vs measured time of a captured MoE layer stack (perfcast.measure.extras).

The prediction costs exactly the measured stack: router GEMM, softmax/top-k, and per expert hit the
gather, gate/up GEMM, SiLU*up, down GEMM and weighted scatter-add, over ``layers`` layers under the
cuda-graph runtime, with the GPU's own profile. Expert GEMMs come from the measured GEMM tables
(interpolated/blended over (n, k)); the active-expert count is the uniform-routing expectation;
gather/scatter and top-k are costed from the measured elementwise tables.

    python benchmarks/bench_moe.py benchmarks/data/<run>/moe_step.jsonl ...
"""

import dataclasses
import json
import sys
import warnings

import numpy as np

from perfcast.hardware import get_gpu
from perfcast.models import get_model
from perfcast.models.builder import GRAPH_LAYOUT, StepShape, build_ops
from perfcast.profiles.registry import resolve_profile
from perfcast.step.costs import step_costs
from perfcast.step.runtime import cuda_graph

MOE_OPS = ("router", "router_topk", "expert_gather", "expert_gate_up_proj", "expert_act", "expert_down_proj",
           "expert_scatter")


def predict_stack(rec, gpu_id):
    spec = get_model(rec["model"])
    spec = dataclasses.replace(spec, hidden=rec["hidden"], moe_intermediate=rec["moe_intermediate"],
                               n_experts=rec["experts"], experts_per_token=rec["top_k"], n_layers=rec["layers"],
                               first_dense_layers=0, n_shared_experts=0, moe_layer_freq=1)
    shape = StepShape("decode", np.asarray(rec["tokens"]), np.asarray(1), np.asarray(1))
    ops = [o for o in build_ops(spec, shape, layout=GRAPH_LAYOUT) if o.name in MOE_OPS]
    gpu = get_gpu(gpu_id)
    prof = resolve_profile(gpu, "auto")
    costs = step_costs(ops, gpu, prof)
    host = prof.host("cuda-graph")
    return float(cuda_graph(ops, costs, dataclasses.replace(host, graph_launch_s=0.0), prof.eff).seconds) * 1e3


def main(paths):
    warnings.simplefilter("ignore")
    errs = []
    print(f"{'gpu':9s} {'model':28s} {'tokens':>6s} {'active':>8s} {'meas ms':>9s} {'pred ms':>9s} {'err':>7s}")
    for path in paths:
        meta_gpu = None
        for line in open(path):
            rec = json.loads(line)
            gpu_id = rec.get("gpu_id") or meta_gpu or "h100-sxm"
            p = predict_stack(rec, gpu_id)
            e = (p - rec["ms"]) / rec["ms"] * 100
            errs.append(abs(e))
            print(f"{gpu_id:9s} {rec['model']:28s} {rec['tokens']:6d} {np.mean(rec['active_experts']):8.1f} "
                  f"{rec['ms']:9.3f} {p:9.3f} {e:+6.1f}%")
    if errs:
        print(f"MoE stack MAPE {np.mean(errs):.2f}% over {len(errs)} cases (p90 {np.percentile(errs, 90):.2f}%)")


if __name__ == "__main__":
    main(sys.argv[1:])
