"""MLA check: predicted vs measured time of a captured stack of DeepSeek MLA attention blocks
(``perfcast.measure.extras --parts mla``, ``mla_step.jsonl``).

The prediction costs the measured stack: the ops ``perfcast.models.builder._mla`` emits for the case (what a
serving engine runs; prefill: q path, kv_a_proj, kv_a_norm, rope, kv_write, kv_b_proj, attention with
192-wide q/k and 128-wide v, o_proj; decode: q path, kv_a_proj, kv_a_norm, rope, kv_write, q_absorb, ONE
fused attention kernel over the latent cache as one 576-wide KV head whose first 512 channels are the
values, out_absorb, o_proj), plus the harness's glue kernels (below), ``layers`` times, at the recorded
per-GPU dims (heads = n_heads / tp), with the GPU's own profile under the runtime the line names (cuda-graph,
graph launch not charged: the events bracket the replay on the GPU). No input norm, residual or all-reduce:
the measured blocks have none.

Glue (``GLUE``, added here, not in the builder: a serving engine fuses or avoids them): real kernels of the
measured stack, each a copy costed from the measured elementwise ``copy`` table at its output's width.
Decode: the cat of latent and rope key before the cache write (the harness writes the cache with 2 kernels,
cat + index_copy_; the builder's kv_write is the engine's one), the cat of the absorbed q_nope and q_pe, the
transpose+reshape copy of out_absorb's output. Prefill: the cat before the cache write, the cat of k_nope and
the broadcast rope key, the cat of q_nope and q_pe, the transpose+reshape copy of the attention output; and
for ``sdpa_vpad`` the zero-pad of v to 192 (F.pad), whose attention then runs with 192-wide values (the op's
``v_head_dim`` is set to 192 for those lines: that is the kernel's shape).

Which parts are measured-table based and which analytical:
- GEMMs (q_a/q_b/q_proj, kv_a_proj, kv_b_proj, o_proj): the measured GEMM tables of the profile,
  interpolated/blended over (n, k) where the exact weight shape was not timed.
- q_absorb / out_absorb (per-head ``torch.bmm``): ONE batched kernel each (``Profile.batched_gemm``): the
  table time of the GEMM with the same tiles and weight stream, (m=tokens, n=heads x n, k), scaled by the
  batched roofline over that GEMM's (the bmm also reads one activation block per head); the FLOPs and bytes
  of all heads, one launch.
- rmsnorm (q_a_norm, kv_a_norm), rope, kv_write / kv_write_decode, glue copies: the measured elementwise
  tables.
- attention, prefill: the measured prefill grid of the nearest config (head_dim 128, as many KV heads as
  query heads) carried by the flash tile schedule with the op's own per-block FLOPs (q/k 192, v 128).
- attention, decode: the pooled measured decode grid at (sequences x 1 latent stream, keys) over the op's own
  bytes (the latent read once), with the physics tensor-core time at the profile's fitted attention
  efficiency as a lower bound (128 query heads on one stream can be compute bound; the measured decode
  configs, at most 8 query heads per KV head, never were).

The decode attention the harness runs is NOT that fused kernel: ``sdpa`` is PyTorch's memory-efficient
kernel with the heads folded into the query rows of one KV head (no split over keys: about
batch x ceil(heads / 64) CTAs each stream a whole sequence's latent), ``matmul`` is baddbmm -> softmax ->
bmm (scores materialized, the latent read twice by two batched GEMMs cuBLAS runs at small m). The builder
costs what an engine runs (FlashMLA-class: one kernel, split over keys), so decode lines with long
contexts are expected to be measured far slower than predicted. The decode rows print the attention time
the measurement implies (measured minus the predicted non-attention ops, per layer) and the latent bandwidth
that is (``impl GB/s``), against the fused kernel's prediction. ``matmul`` lines also get a prediction of
the stack as it ran (``as run``): the fused attention replaced by the three kernels the harness launches
(``matmul_attention_ops``: two batched GEMMs over the sequences and the softmax between them), a check of
the batched-GEMM costing on shapes far from MLA's projections. The softmax has no table of its own: it is
costed as a copy of the scores (read once, written once), a lower bound for PyTorch's softmax.

Lines of ``attn_impl`` ``triton`` (``extras --parts mlatriton``, ``mla_step_triton.jsonl``) run the decode
attention through ``perfcast.measure.mla_triton``: a fused split-KV kernel written for the harness, the kernel
class the builder costs (one pass over the latent, split over keys, plus a small combine kernel when it
splits). They are reported apart, after the others: the stack's error against the same prediction (``MLA
decode triton``), and per case the attention timed alone (``attn_ms``: a CUDA graph of one layer's attention
call) against the attention op's predicted time alone (the op once, cuda-graph runtime), with the latent
bandwidth the kernel reached (``attn_GBps``), the kernel config and splits the stack ran, and the kernel's
max abs error against float32 attention. A line whose kernel failed that check carries no time and is listed
as such.

    python benchmarks/bench_mla.py [benchmarks/data/<run>/<part>/mla_step*.jsonl ...]
    (no argument: every benchmarks/data/*/*/mla_step*.jsonl: mla_step.jsonl, mla_step_flex.jsonl,
    mla_step_triton.jsonl)
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
from perfcast.ops.base import Op
from perfcast.profiles.registry import resolve_profile
from perfcast.step.costs import step_costs
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


def glue_ops(rec):
    """The harness's glue kernels of one line (copies: name, tokens, output width), ``layers`` times each."""
    H, r, rope = int(rec["heads"]), int(rec["kv_lora_rank"]), int(rec["qk_rope_head_dim"])
    qk, vd = int(rec["qk_nope_head_dim"]) + rope, int(rec["v_head_dim"])
    T = int(rec["batch"]) * int(rec["q_len"])
    if rec["phase"] == "decode":
        copies = [("glue_cache_cat", r + rope), ("glue_q_cat", H * (r + rope)), ("glue_out_transpose", H * vd)]
    else:
        copies = [("glue_cache_cat", r + rope), ("glue_k_cat", H * qk), ("glue_q_cat", H * qk),
                  ("glue_out_transpose", H * vd)]
        if rec["attn_impl"] == "sdpa_vpad":
            copies.append(("glue_v_pad", H * qk))
    return [Op(name, "elementwise", {"op": "copy", "tokens": np.asarray(T), "width": w}, int(rec["layers"]), "bf16",
               None, "layer", meta={"kernels": 1}) for name, w in copies]


def matmul_attention_ops(rec):
    """The kernels of the harness's ``matmul`` decode attention, per layer: baddbmm (scores [B, H, S]: a batched
    GEMM over the B sequences, m = heads, n = keys, k = the latent's 576 channels), softmax over each row of
    scores (a copy of them: read and written once), bmm (m = heads, n = kv_lora_rank, k = keys)."""
    B, H, S = int(rec["batch"]), int(rec["heads"]), int(rec["kv_len"])
    r, rope, L = int(rec["kv_lora_rank"]), int(rec["qk_rope_head_dim"]), int(rec["layers"])
    return [Op("attn_scores", "gemm", {"m": H, "n": S, "k": r + rope, "groups": B}, L, "bf16", None, "layer",
               meta={"batched": True}),
            Op("attn_softmax", "elementwise", {"op": "copy", "tokens": np.asarray(B * H), "width": S}, L, "bf16",
               None, "layer", meta={"kernels": 1}),
            Op("attn_values", "gemm", {"m": H, "n": r, "k": S, "groups": B}, L, "bf16", None, "layer",
               meta={"batched": True})]


def stack_ops(rec):
    """Every kernel of the measured stack: the builder's MLA ops (the attention at the kernel's own shape:
    ``sdpa_vpad`` runs it with v padded to q/k's width) and the harness's glue."""
    ops = case_ops(rec)
    if rec["phase"] == "prefill" and rec["attn_impl"] == "sdpa_vpad":
        qk = int(rec["qk_nope_head_dim"]) + int(rec["qk_rope_head_dim"])
        ops = [dataclasses.replace(o, dims={**o.dims, "v_head_dim": qk}) if o.kind == "attention" else o
               for o in ops]
    return ops + glue_ops(rec)


def predict_case(rec, gpu_id: str, ops=None) -> float:
    """Predicted ms of one line's stack on ``gpu_id`` under the line's runtime."""
    ops = stack_ops(rec) if ops is None else ops
    gpu = get_gpu(gpu_id)
    prof = resolve_profile(gpu, "auto")
    costs = step_costs(ops, gpu, prof)
    runtime = rec.get("runtime", "cuda-graph")
    host = prof.host(runtime)
    if runtime == "cuda-graph":
        host = dataclasses.replace(host, graph_launch_s=0.0)
    return float(np.asarray(get_runtime(runtime)(ops, costs, host, prof.eff).seconds)) * 1e3


def attention_share(rec, gpu_id: str) -> float:
    """The attention op's share of the predicted GPU time (how much of the error attention can carry)."""
    ops = stack_ops(rec)
    gpu = get_gpu(gpu_id)
    prof = resolve_profile(gpu, "auto")
    t = [float(np.asarray(c.seconds)) * o.count for o, c in zip(ops, step_costs(ops, gpu, prof))]
    return sum(x for o, x in zip(ops, t) if o.kind == "attention") / sum(t)


def implied_attention(rec, gpu_id: str) -> tuple[float, float, float]:
    """(measured attention ms per layer implied by the line: its ms minus the predicted stack without the
    attention op, the fused kernel's predicted ms per layer, the latent GB/s the implied time is)."""
    ops = stack_ops(rec)
    rest = [o for o in ops if o.kind != "attention"]
    L = int(rec["layers"])
    att = (rec["ms"] - predict_case(rec, gpu_id, rest)) / L
    fused = (predict_case(rec, gpu_id, ops) - predict_case(rec, gpu_id, rest)) / L
    latent = rec["batch"] * rec["kv_len"] * (rec["kv_lora_rank"] + rec["qk_rope_head_dim"]) * 2.0
    return att, fused, latent / (att * 1e-3) / 1e9 if att > 0 else float("nan")


def load(paths):
    recs = []
    for path in paths:
        for line in open(path):
            if line.strip():
                recs.append(json.loads(line))
    return recs


def attention_alone(rec, gpu_id: str) -> float:
    """Predicted ms of the line's attention op alone: the op once under the line's runtime (what ``attn_ms``
    times: a CUDA graph holding one layer's attention call)."""
    att = next(o for o in case_ops(rec) if o.kind == "attention")
    return predict_case(rec, gpu_id, [dataclasses.replace(att, count=1)])


def report_triton(recs) -> dict:
    """The ``triton`` decode lines (mla_triton's fused kernel): stack and attention-alone errors per case, and
    their MAPEs; returns them by key (``("decode", "triton")``, ``("decode", "triton attention alone")``)."""
    if not recs:
        print("MLA decode triton: no mla_step_triton.jsonl lines found "
              "(run: perfcast.measure.extras --parts mlatriton)")
        return {}
    errs: dict = {}
    print("decode through mla_triton's fused split-KV kernel (the kernel class perfcast models); attention alone "
          "per layer")
    print(f"{'gpu':9s} {'model':17s} {'H':>3s} {'batch':>5s} {'kv_len':>6s} {'config':11s} {'splits':>6s} "
          f"{'meas ms':>9s} {'pred ms':>9s} {'err':>7s} {'attn ms':>8s} {'pred':>8s} {'err':>7s} {'GB/s':>6s} "
          f"{'max err':>8s}")
    for rec in recs:
        gpu_id = rec.get("gpu_id") or "h100-sxm"
        head = (f"{gpu_id:9s} {rec['model'].split('/')[-1]:17s} {rec['heads']:3d} {rec['batch']:5d} "
                f"{rec['kv_len']:6d}")
        if rec.get("ms") is None:
            err = rec.get("check_max_abs_err")
            print(f"{head} not timed: no kernel config passed the check (best max abs err "
                  f"{'none ran' if err is None else f'{err:.3g}'}, tolerance {rec.get('check_tol')})")
            continue
        p = predict_case(rec, gpu_id)
        e = (p - rec["ms"]) / rec["ms"] * 100
        pa = attention_alone(rec, gpu_id)
        ea = (pa - rec["attn_ms"]) / rec["attn_ms"] * 100
        errs.setdefault(("decode", "triton"), []).append(abs(e))
        errs.setdefault(("decode", f"triton {gpu_id} {rec['heads']} heads"), []).append(abs(e))
        errs.setdefault(("decode", "triton attention alone"), []).append(abs(ea))
        print(f"{head} {rec['triton_config']['name']:11s} {rec['num_splits']:6d} {rec['ms']:9.3f} {p:9.3f} "
              f"{e:+6.1f}% {rec['attn_ms']:8.4f} {pa:8.4f} {ea:+6.1f}% {rec['attn_GBps']:6.0f} "
              f"{rec['check_max_abs_err']:8.1e}")
    for k, v in errs.items():
        print(f"MLA {k[0]} {k[1]}: MAPE {np.mean(v):.2f}% over {len(v)} cases (p90 {np.percentile(v, 90):.2f}%)")
    return errs


# FlashMLA's README (deepseek-ai/FlashMLA): "up to 3000 GB/s in memory-bound configuration and 580 TFLOPS in
# computation-bound configuration on H800 SXM5" (660 TFLOP/s with its 2025-04-22 kernel). An H800 SXM5 has
# the H100 SXM's SMs, clocks and HBM3; only its NVLink differs.
FLASHMLA_GBPS, FLASHMLA_TFLOPS = 3000.0, (580.0, 660.0)
FLASHMLA_SHAPES = ((16, 64, 4096), (16, 128, 8192), (16, 132, 16384), (128, 64, 4096), (128, 128, 8192),
                   (128, 132, 16384))  # (query heads, batch, keys): memory-bound at 16 heads, compute at 128


def flashmla_check(gpu_id: str = "h100-sxm") -> list[dict]:
    """perfcast's fused MLA decode attention (DeepSeek-V3 dims) at FLASHMLA_SHAPES on ``gpu_id``: predicted
    ms, the latent GB/s and the TFLOP/s that time is (FLOPs 2 x heads x keys x (576 + 512) per sequence)."""
    out = []
    for heads, batch, keys in FLASHMLA_SHAPES:
        rec = {"model": "deepseek-ai/DeepSeek-V3", "hidden": 7168, "heads": heads, "tp": 1, "q_lora_rank": 1536,
               "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
               "layers": 1, "phase": "decode", "batch": batch, "q_len": 1, "kv_len": keys + 1,
               "runtime": "cuda-graph"}
        ms = attention_alone(rec, gpu_id)
        byts = batch * (keys + 1) * 576 * 2.0
        flops = 2.0 * batch * heads * (keys + 1) * (576 + 512)
        out.append({"heads": heads, "batch": batch, "keys": keys, "ms": ms, "GBps": byts / ms / 1e6,
                    "TFLOPs": flops / ms / 1e9})
    return out


def report_flashmla() -> None:
    print(f"\nperfcast's fused MLA decode attention on an H100 SXM against FlashMLA's published H800 SXM5 peaks "
          f"({FLASHMLA_GBPS:.0f} GB/s memory-bound, {FLASHMLA_TFLOPS[0]:.0f}-{FLASHMLA_TFLOPS[1]:.0f} TFLOP/s compute-bound)")
    for r in flashmla_check():
        print(f"   heads {r['heads']:3d} batch {r['batch']:3d} keys {r['keys']:5d}: {r['ms']:.4f} ms = "
              f"{r['GBps']:5.0f} GB/s, {r['TFLOPs']:4.0f} TFLOP/s")


def main(paths=None):
    warnings.simplefilter("ignore")
    paths = list(paths) if paths else sorted(str(p) for p in DATA.glob("*/*/mla_step*.jsonl"))
    if not paths:
        print("no mla_step.jsonl under benchmarks/data (run: perfcast.measure.extras --parts mla)")
        return {}
    recs = [r for r in load(paths) if r.get("device", "cuda") != "cpu"]  # CPU smoke tests: no GPU profile
    triton = [r for r in recs if r["attn_impl"] == "triton"]  # mla_triton's kernel: reported apart, below
    others = [r for r in recs if r["attn_impl"] != "triton"]
    errs: dict = {}
    if others:
        print(f"{'gpu':9s} {'model':17s} {'H':>3s} {'phase':7s} {'batch':>5s} {'q_len':>5s} {'kv_len':>6s} "
              f"{'impl':9s} {'sdpa':9s} {'meas ms':>9s} {'pred ms':>9s} {'err':>7s} {'attn%':>5s} "
              f"{'impl attn':>9s} {'fused':>7s} {'impl GB/s':>9s} {'as run':>8s} {'err':>7s}")
    for rec in others:
        gpu_id = rec.get("gpu_id") or "h100-sxm"
        p = predict_case(rec, gpu_id)
        e = (p - rec["ms"]) / rec["ms"] * 100
        if rec["attn_impl"] != "flex":  # FlexAttention's decode at 576-wide keys: reported on its own line
            errs.setdefault(rec["phase"], []).append(abs(e))
        errs.setdefault((rec["phase"], rec["attn_impl"]), []).append(abs(e))
        print(f"{gpu_id:9s} {rec['model'].split('/')[-1]:17s} {rec['heads']:3d} {rec['phase']:7s} {rec['batch']:5d} "
              f"{rec['q_len']:5d} {rec['kv_len']:6d} {rec['attn_impl']:9s} {rec.get('sdpa_backend', '?'):9s} "
              f"{rec['ms']:9.3f} {p:9.3f} {e:+6.1f}% {100 * attention_share(rec, gpu_id):4.0f}%", end="")
        if rec["phase"] == "decode":  # ms per layer: the measured implementation's attention vs the fused kernel's
            att, fused, gbs = implied_attention(rec, gpu_id)
            print(f" {att:9.3f} {fused:7.3f} {gbs:9.0f}", end="")
            if rec["attn_impl"] == "matmul":
                run = predict_case(rec, gpu_id, [o for o in stack_ops(rec) if o.kind != "attention"]
                                   + matmul_attention_ops(rec))
                er = (run - rec["ms"]) / rec["ms"] * 100
                errs.setdefault(("decode", "matmul, as run"), []).append(abs(er))
                print(f" {run:8.3f} {er:+6.1f}%", end="")
        print()
    for k in sorted(errs, key=str):
        what = k if isinstance(k, str) else f"{k[0]} {k[1]}"
        print(f"MLA {what}: MAPE {np.mean(errs[k]):.2f}% over {len(errs[k])} cases "
              f"(p90 {np.percentile(errs[k], 90):.2f}%)")
    errs.update(report_triton(triton))
    report_flashmla()
    return errs


if __name__ == "__main__":
    main(sys.argv[1:])
