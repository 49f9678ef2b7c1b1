"""MLA check: predicted vs measured time of a captured stack of DeepSeek MLA attention blocks
(``perfcast.measure.extras --parts mla``, ``mla_step.jsonl``).

The prediction costs exactly the measured stack: the ops ``perfcast.models.builder._mla`` emits for the
case (prefill: q path, kv_a_proj, kv_a_norm, rope, kv_write, kv_b_proj, attention with 192-wide q/k and
128-wide v, o_proj; decode: q path, kv_a_proj, kv_a_norm, rope, kv_write, q_absorb, attention over the
latent cache as one 576-wide KV head with 512-wide values, out_absorb, o_proj), ``layers`` times, at the
recorded per-GPU dims (heads = n_heads / tp), with the GPU's own profile under the runtime the line names
(cuda-graph, graph launch not charged: the events bracket the replay on the GPU). No input norm, residual
or all-reduce: the measured blocks have none. Every attention implementation of a case (``attn_impl``) is
compared with the same prediction; the builder has one attention op and does not know which kernel runs.

Which parts are measured-table based and which analytical:
- GEMMs (q_a/q_b/q_proj, kv_a_proj, kv_b_proj, o_proj): the measured GEMM tables of the profile,
  interpolated/blended over (n, k) where the exact weight shape was not timed.
- q_absorb / out_absorb (per-head ``torch.bmm``): costed as ``heads`` launches of the (m=tokens,
  n=kv_lora_rank, k=qk_nope) resp. (n=v_head_dim, k=kv_lora_rank) GEMM from the same tables, one kernel
  (``batched``); one batched kernel over all heads is usually faster than that sum at small m, so expect
  over-prediction there.
- rmsnorm (q_a_norm, kv_a_norm), rope, kv_write / kv_write_decode: the measured elementwise tables.
- attention: analytical in both phases. The profile's attention tables are keyed by head_dim (64/128 grids)
  with equal q/k/v widths; an op with ``v_head_dim`` set (MLA: 192/128 prefill, 576/512 decode) always falls
  back to the physics model (FLOPs at the fitted attention efficiency, K and V bytes at the fitted
  bandwidth, flash-style occupancy), i.e. it is extrapolated, not interpolated. The decode byte count reads
  the latent twice (as K, 576 wide, and as V, 512 wide) although V is a view of K.
- Not in the op list, so not predicted: the glue kernels listed per line (``glue``: the cat before the
  cache write, the q/k concatenations, the output transpose copies), and the extra pad/slice of
  ``sdpa_vpad``.

    python benchmarks/bench_mla.py [benchmarks/data/<run>/<part>/mla_step.jsonl ...]
    (no argument: every benchmarks/data/*/*/mla_step.jsonl)
"""

import dataclasses
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from perfcast.hardware import get_gpu
from perfcast.models import get_model
from perfcast.models.builder import GRAPH_LAYOUT, StepShape, build_ops
from perfcast.profiles.registry import resolve_profile
from perfcast.step.costs import op_cost
from perfcast.step.runtime import get_runtime

DATA = Path(__file__).resolve().parent / "data"
# every op name _mla can emit (the q path is q_proj, or q_a_proj + q_a_norm + q_b_proj)
MLA_OPS = ("q_a_proj", "q_a_norm", "q_b_proj", "q_proj", "kv_a_proj", "kv_a_norm", "rope", "kv_write",
           "kv_b_proj", "q_absorb", "attention", "out_absorb", "o_proj")


def case_spec(rec):
    """The model's spec at the measured dims: ``heads * tp`` heads (so that ``tp`` leaves ``heads``), the
    recorded MLA widths and ``layers`` layers."""
    spec = get_model(rec["model"])
    tp = int(rec.get("tp", 1))
    heads = int(rec["heads"]) * tp
    qk = int(rec["qk_nope_head_dim"]) + int(rec["qk_rope_head_dim"])
    return dataclasses.replace(spec, hidden=int(rec["hidden"]), n_heads=heads, n_kv_heads=heads, head_dim=qk,
                               q_lora_rank=int(rec["q_lora_rank"]), kv_lora_rank=int(rec["kv_lora_rank"]),
                               qk_nope_head_dim=int(rec["qk_nope_head_dim"]),
                               qk_rope_head_dim=int(rec["qk_rope_head_dim"]), v_head_dim=int(rec["v_head_dim"]),
                               n_layers=int(rec["layers"]))


def case_shape(rec) -> StepShape:
    if rec["phase"] == "prefill":
        return StepShape("prefill", np.asarray(rec["batch"]), np.asarray(rec["q_len"]), np.asarray(1))
    return StepShape("decode", np.asarray(rec["batch"]), np.asarray(1), np.asarray(rec["kv_len"] - 1))


def case_ops(rec):
    """The builder's ops for the measured stack: build_ops filtered to the MLA block's ops."""
    ops = build_ops(case_spec(rec), case_shape(rec), tp=int(rec.get("tp", 1)), layout=GRAPH_LAYOUT)
    return [o for o in ops if o.name in MLA_OPS]


def predict_case(rec, gpu_id: str, ops=None) -> float:
    """Predicted ms of one line's stack on ``gpu_id`` under the line's runtime."""
    ops = case_ops(rec) if ops is None else ops
    gpu = get_gpu(gpu_id)
    prof = resolve_profile(gpu, "auto")
    costs = [op_cost(o, gpu, prof) for o in ops]
    runtime = rec.get("runtime", "cuda-graph")
    host = prof.host(runtime)
    if runtime == "cuda-graph":
        host = dataclasses.replace(host, graph_launch_s=0.0)
    return float(np.asarray(get_runtime(runtime)(ops, costs, host, prof.eff).seconds)) * 1e3


def attention_share(rec, gpu_id: str) -> float:
    """The attention op's share of the predicted GPU time (how much of the error attention can carry)."""
    ops = case_ops(rec)
    gpu = get_gpu(gpu_id)
    prof = resolve_profile(gpu, "auto")
    t = [float(np.asarray(op_cost(o, gpu, prof).seconds)) * o.count for o in ops]
    return sum(x for o, x in zip(ops, t) if o.kind == "attention") / sum(t)


def load(paths):
    recs = []
    for path in paths:
        for line in open(path):
            if line.strip():
                recs.append(json.loads(line))
    return recs


def main(paths=None):
    warnings.simplefilter("ignore")
    paths = list(paths) if paths else sorted(str(p) for p in DATA.glob("*/*/mla_step.jsonl"))
    if not paths:
        print("no mla_step.jsonl under benchmarks/data (run: perfcast.measure.extras --parts mla)")
        return {}
    errs: dict = {}
    print(f"{'gpu':9s} {'model':17s} {'H':>3s} {'phase':7s} {'batch':>5s} {'q_len':>5s} {'kv_len':>6s} "
          f"{'impl':9s} {'sdpa':9s} {'meas ms':>9s} {'pred ms':>9s} {'err':>7s} {'attn%':>5s}")
    for rec in load(paths):
        if rec.get("device", "cuda") == "cpu":
            continue  # the CPU smoke test: no GPU profile to compare with
        gpu_id = rec.get("gpu_id") or "h100-sxm"
        p = predict_case(rec, gpu_id)
        e = (p - rec["ms"]) / rec["ms"] * 100
        errs.setdefault(rec["phase"], []).append(abs(e))
        errs.setdefault((rec["phase"], rec["attn_impl"]), []).append(abs(e))
        print(f"{gpu_id:9s} {rec['model'].split('/')[-1]:17s} {rec['heads']:3d} {rec['phase']:7s} {rec['batch']:5d} "
              f"{rec['q_len']:5d} {rec['kv_len']:6d} {rec['attn_impl']:9s} {rec.get('sdpa_backend', '?'):9s} "
              f"{rec['ms']:9.3f} {p:9.3f} {e:+6.1f}% {100 * attention_share(rec, gpu_id):4.0f}%")
    for k in sorted(errs, key=str):
        what = k if isinstance(k, str) else f"{k[0]} {k[1]}"
        print(f"MLA {what}: MAPE {np.mean(errs[k]):.2f}% over {len(errs[k])} cases "
              f"(p90 {np.percentile(errs[k], 90):.2f}%)")
    return errs


if __name__ == "__main__":
    main(sys.argv[1:])
