"""One builder: (ModelSpec, phase, batch, prompt/context, tp, pp, dtype) -> the typed ops of one step.

Prefill and decode share every line below; only the token counts and attention lengths differ.
Shapes are per GPU (tensor-parallel shards) and may be numpy arrays (one value per sweep point).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np

from perfcast.hardware.spec import QUANTIZED_DTYPES
from perfcast.models.spec import ModelSpec
from perfcast.ops.base import Op


@dataclass(frozen=True)
class StepShape:
    """Token counts of one step. ``prompt`` for prefill, ``context`` for decode; arrays allowed."""

    phase: str  # "prefill" or "decode"
    batch: np.ndarray
    prompt: np.ndarray
    context: np.ndarray

    @property
    def q_len(self):
        # decode: one query per sequence (a scalar, so per-token ops stay in the batch's own shape)
        return self.prompt if self.phase == "prefill" else np.ones((), dtype=np.int64)

    @property
    def kv_len(self):
        # decode: the new token attends to the cached context plus itself
        return self.prompt if self.phase == "prefill" else self.context + 1

    @property
    def tokens(self):
        return self.batch * self.q_len


@dataclass(frozen=True)
class Layout:
    """How the reference code lays out kernels: fused projections, which norm/rope kernels."""

    fused_qkv: bool = True
    fused_gate_up: bool = True
    norm_op: str = "rmsnorm"  # "rmsnorm" (fused F.rms_norm) or "rmsnorm_eager" (HF composite)
    kv_write_op: str = "kv_write"
    tp_embedding_allreduce: bool = False


GRAPH_LAYOUT = Layout()
HF_LAYOUT = Layout(fused_qkv=False, fused_gate_up=False, norm_op="rmsnorm_eager")
MEGATRON_LAYOUT = Layout(norm_op="rmsnorm")


def shard(n: int, tp: int) -> int:
    return int(math.ceil(n / tp))


def kv_heads_per_gpu(spec: ModelSpec, tp: int) -> int:
    """KV heads are split across TP ranks, replicated once tp exceeds them."""
    return max(1, spec.n_kv_heads // tp) if spec.n_kv_heads >= tp else 1


_SPREAD_Z = np.array([statistics.NormalDist().inv_cdf((i + 0.5) / 16) for i in range(16)])


def expert_token_quantiles(picks, n_experts: int, imbalance: float = 1.0):
    """Tokens per hit expert at 16 equal-probability quantiles of the routing distribution.

    Under uniform routing an expert receives Binomial(picks, 1/E) tokens (normal approximation, each
    quantile at least 1 token). A GEMM's time is not linear in its rows (kernel choice and wave
    quantization jump between neighbouring m), so the expected expert GEMM time is the mean over
    these counts, not the time at the mean count. Shape: picks.shape + (16,).
    """
    picks = np.asarray(picks, dtype=float)
    p = 1.0 / n_experts
    mu, sd = picks * p, np.sqrt(picks * p * (1.0 - p))
    q = np.maximum(1.0, np.round(mu[..., None] + sd[..., None] * _SPREAD_Z))
    return np.ceil(q * imbalance)


def _per_point(x):
    """A per-point count as the eager runtime takes it: a float for one point, else an array."""
    a = np.asarray(x, dtype=float)
    return float(a) if a.ndim == 0 else a


def expected_active_experts(n_experts: int, picks):
    """Expected number of distinct experts hit by ``picks`` uniform top-k choices (>= 1)."""
    picks = np.asarray(picks, dtype=float)
    return np.maximum(1.0, n_experts * (1.0 - (1.0 - 1.0 / n_experts) ** picks))


def build_ops(spec: ModelSpec, shape: StepShape, tp: int = 1, dtype: str = "bf16",
              layout: Layout = GRAPH_LAYOUT, kv_dtype: str | None = None,
              wdtype: str | None = None, pp: int = 1, ep: int = 1, moe_imbalance: float = 1.0,
              layers: range | None = None) -> list[Op]:
    """Ops of one step over all layers (a request's latency crosses every pipeline stage).

    MoE layers: experts split over ``ep`` of the ``tp`` GPUs, each expert's width over ``tp // ep``;
    ``moe_imbalance`` (>= 1) scales the tokens of the most loaded GPU over the uniform share.

    ``layers``: one pipeline stage's contiguous decoder layers (``range(start, stop)``); the embedding
    is built only when the range starts at layer 0, the final norm and LM head only when it ends at the
    last layer, and no ``pp_send`` op is added (perfcast.step.pipeline costs the transfers).
    """
    T = shape.tokens
    B = shape.batch
    h, hd = spec.hidden, spec.head_dim
    heads = spec.n_heads // tp
    kvh = kv_heads_per_gpu(spec, tp)
    inter = shard(spec.intermediate, tp)
    act_op = "silu_mul" if spec.mlp_act == "swiglu" else ("gelu_mul" if spec.mlp_act == "geglu" else "gelu")
    stage = range(spec.n_layers) if layers is None else layers
    if len(stage) < 1 or stage.start < 0 or stage.stop > spec.n_layers or stage.step != 1:
        raise ValueError(f"layers {stage} is not a non-empty contiguous range of the {spec.n_layers} layers")
    first, last = stage.start == 0, stage.stop == spec.n_layers
    L = len(stage)
    norm = layout.norm_op if spec.norm == "rmsnorm" else "layernorm"
    wd = wdtype if wdtype and wdtype != dtype else None
    # fp8 deployments run fp8 GEMMs; activations, norms and attention stay in bf16
    adt = "bf16" if dtype in QUANTIZED_DTYPES else dtype
    unquantized = adt if dtype == "fp8" else None  # FP8 checkpoints keep the LM head and the router in bf16
    ops: list[Op] = []

    def gemm(name, n, k, count=L, group="layer", host_ops=1.0, m=None, groups=None, batched=False,
             m_quantiles=None, dt=None, quant=True):
        dims = {"m": (T if group != "post" else B) if m is None else m, "n": int(n), "k": int(k)}
        gdt = dtype if dt is None else dt
        if gdt == "fp8" and quant and not batched:
            # the input cast to e4m3 ahead of the FP8 GEMM (one kernel; static per-tensor scale). Projections
            # that share their input (k/v after q, up after gate) reuse it
            elem(f"{name}_quant", "quant_fp8", k, count, tokens=dims["m"], group=group, groups=groups)
        if groups is not None:
            dims["groups"] = groups  # launches per layer (an array: MoE experts hit)
        if m_quantiles is not None:
            dims["m_quantiles"] = m_quantiles  # per-launch rows vary (MoE routing): time averaged over them
        ops.append(Op(name, "gemm", dims, count, gdt, wd, group, host_ops=host_ops,
                      meta={"batched": batched}))  # batched: the groups run in one kernel (bmm)

    def elem(name, op, width, count=L, tokens=None, group="layer", host_ops=1.0, kernels=1, groups=None,
             strided=False):
        dims = {"op": op, "tokens": T if tokens is None else tokens, "width": int(width)}
        if groups is not None:
            dims["groups"] = groups  # one launch set per group (MoE: per expert hit)
        # strided: the inputs are views into a fused projection's output (not contiguous)
        ops.append(Op(name, "elementwise", dims, count, adt, None, group, host_ops=host_ops,
                      meta={"kernels": kernels, "strided": strided}))

    def allreduce(name, count=L, tokens=None):
        if tp > 1:
            nbytes = (T if tokens is None else tokens) * h * 2.0
            ops.append(Op(name, "collective", {"coll": "all_reduce", "bytes": nbytes, "gpus": tp},
                          count, dtype, None, "layer"))

    def mlp(prefix, width, count, m=None, groups=None, m_q=None):
        if spec.mlp_act in ("swiglu", "geglu"):
            if layout.fused_gate_up:
                gemm(f"{prefix}gate_up_proj", 2 * width, h, count, host_ops=2.0, m=m, groups=groups, m_quantiles=m_q)
            else:
                gemm(f"{prefix}gate_proj", width, h, count, m=m, groups=groups, m_quantiles=m_q)
                gemm(f"{prefix}up_proj", width, h, count, m=m, groups=groups, m_quantiles=m_q, quant=False)
        else:
            gemm(f"{prefix}up_proj", width, h, count, m=m, groups=groups, m_quantiles=m_q)
        launches = 1 if groups is None else _per_point(groups)
        elem(f"{prefix}act", act_op, width, count, tokens=T if m is None else m, host_ops=2.0 * launches,
             kernels=2, groups=groups, strided=layout.fused_gate_up)  # act(gate) * up, once per expert hit
        gemm(f"{prefix}down_proj", h, width, count, m=m, groups=groups, m_quantiles=m_q)

    # --- embedding (pipeline stage 0 only)
    if first:
        elem("embedding", "embedding", h, count=1, group="pre")
        if tp > 1 and layout.tp_embedding_allreduce:
            allreduce("embed_allreduce", count=1)
    # --- attention block
    norm_ops = 8.0 if norm == "rmsnorm_eager" else 1.0
    elem("attn_norm", norm, h, host_ops=norm_ops)
    if spec.is_mla:
        _mla(spec, shape, tp, adt, kv_dtype, gemm, elem, ops, L)
    else:
        if layout.fused_qkv:
            gemm("qkv_proj", (heads + 2 * kvh) * hd, h, host_ops=3.0)
        else:
            gemm("q_proj", heads * hd, h, host_ops=2.0)
            gemm("k_proj", kvh * hd, h, host_ops=2.0, quant=False)
            gemm("v_proj", kvh * hd, h, host_ops=2.0, quant=False)
        if spec.qk_norm:
            elem("qk_norm", norm, (heads + kvh) * hd, host_ops=2 * norm_ops, kernels=2)
            if layout.fused_qkv:  # q and k are strided views of the fused output: rms_norm copies each first
                elem("qk_norm_copy", "copy", (heads + kvh) * hd, host_ops=0.0, kernels=2)
        elem("rope", "rope", (heads + kvh) * hd, host_ops=14.0, kernels=10,  # q*cos + rotate_half(q)*sin
             strided=layout.fused_qkv)
        kv_op = layout.kv_write_op + ("_decode" if shape.phase == "decode" else "")
        elem("kv_write", kv_op, 2 * kvh * hd, host_ops=2.0, kernels=2)  # index_copy_ of K and of V
        n_swa = stage_sliding_layers(spec, stage) if spec.sliding_window else 0
        for name, count, window in (("attention", L - n_swa, None), ("attention_swa", n_swa, spec.sliding_window)):
            if count <= 0:
                continue
            ops.append(Op(name, "attention", {
                "batch": B, "heads": heads, "kv_heads": kvh, "head_dim": hd, "q_len": shape.q_len,
                "kv_len": shape.kv_len, "causal": shape.phase == "prefill", "window": window,
            }, count, adt, None, "layer", host_ops=3.0, meta={"kv_dtype": kv_dtype}))
        gemm("o_proj", h, heads * hd, host_ops=2.0)
    allreduce("attn_allreduce")
    if spec.post_norms:
        elem("post_attn_norm", norm, h, host_ops=norm_ops)
    elem("attn_residual", "add", h)
    # --- MLP block: dense layers and MoE layers
    elem("mlp_norm", norm, h, host_ops=norm_ops)
    n_moe = sum(1 for i in stage if spec.is_moe_layer(i)) if layers is not None else spec.n_moe_layers
    if L - n_moe > 0:
        mlp("", inter, L - n_moe)
    if n_moe:
        ep = max(1, min(ep, tp))
        e_tp = max(1, tp // ep)
        gemm("router", spec.n_experts, h, n_moe, dt=unquantized)
        elem("router_topk", "add", spec.n_experts, n_moe, kernels=3)
        picks = np.asarray(T, dtype=float) * spec.experts_per_token
        active = expected_active_experts(spec.n_experts, picks)
        active_local = np.maximum(1.0, np.ceil(active / ep))
        m_exp = np.ceil(picks / active * moe_imbalance)
        if ep > 1:
            a2a = picks / ep * h * 2.0 * moe_imbalance
            ops.append(Op("moe_dispatch", "collective", {"coll": "all_to_all", "bytes": a2a, "gpus": ep},
                          n_moe, dtype, None, "layer"))
        n_launch = _per_point(active_local)  # host dispatch per point: a sweep's points differ in experts hit
        # per expert hit: gather its tokens, then scale and scatter-add its output (index_add_)
        elem("expert_gather", "copy", h, n_moe, tokens=m_exp, host_ops=n_launch, kernels=1, groups=active_local)
        m_q = expert_token_quantiles(picks, spec.n_experts, moe_imbalance)
        mlp("expert_", shard(spec.moe_intermediate, e_tp), n_moe, m=m_exp, groups=active_local, m_q=m_q)
        elem("expert_scatter", "add", h, n_moe, tokens=m_exp, host_ops=3.0 * n_launch, kernels=3,
             groups=active_local)
        if ep > 1:
            ops.append(Op("moe_combine", "collective", {"coll": "all_to_all", "bytes": a2a, "gpus": ep},
                          n_moe, dtype, None, "layer"))
        if spec.n_shared_experts:
            mlp("shared_", shard(spec.shared_intermediate, tp), n_moe)
    allreduce("mlp_allreduce")
    if spec.post_norms:
        elem("post_mlp_norm", norm, h, host_ops=norm_ops)
    elem("mlp_residual", "add", h)
    # --- head (last pipeline stage): final norm over every position (as HF does), LM head on the
    # last position only
    if last:
        elem("final_norm", norm, h, count=1, group="post", host_ops=norm_ops)
        gemm("lm_head", shard(spec.vocab, tp), h, count=1, group="post", dt=unquantized)
        if tp > 1:
            ops.append(Op("logits_gather", "collective",
                          {"coll": "all_gather", "bytes": B * shard(spec.vocab, tp) * 2.0, "gpus": tp},
                          1, dtype, None, "post"))
    if pp > 1 and layers is None:
        ops.append(Op("pp_send", "p2p", {"coll": "send_recv", "bytes": T * h * 2.0, "gpus": 2},
                      pp - 1, dtype, None, "post"))
    return ops


def stage_sliding_layers(spec: ModelSpec, stage: range) -> int:
    """Sliding-window layers among ``stage``'s layers. Only their count is known (``sliding_layers``),
    so they are spread evenly over the depth: all, none or every other layer come out exact."""
    if not spec.sliding_layers:
        return 0
    if len(stage) == spec.n_layers:
        return spec.sliding_layers
    f = spec.sliding_layers / spec.n_layers
    return int(math.floor(stage.stop * f + 1e-9) - math.floor(stage.start * f + 1e-9))


def _mla(spec: ModelSpec, shape: StepShape, tp, dtype, kv_dtype, gemm, elem, ops, L):
    """DeepSeek multi-head latent attention, as a serving engine runs it (one fused attention kernel per layer).
    Prefill: the latent is expanded (non-absorbed form) and attention runs with 192-wide keys and 128-wide
    values; decode: the absorbed form attends over the shared latent cache (one "KV head" of kv_lora_rank +
    rope dims, whose first kv_lora_rank channels are also the values: ``kv_shared``, read once) from every
    query head (FlashMLA-style). The per-head absorbed projections are each ONE batched kernel (torch.bmm
    over the heads: ``groups=H, batched=True``)."""
    h = spec.hidden
    H = spec.n_heads // tp
    qk = spec.qk_nope_head_dim + spec.qk_rope_head_dim
    T, B = shape.tokens, shape.batch
    if spec.q_lora_rank:
        gemm("q_a_proj", spec.q_lora_rank, h)
        elem("q_a_norm", "rmsnorm", spec.q_lora_rank)
        gemm("q_b_proj", H * qk, spec.q_lora_rank)
    else:
        gemm("q_proj", H * qk, h)
    gemm("kv_a_proj", spec.kv_lora_rank + spec.qk_rope_head_dim, h)
    elem("kv_a_norm", "rmsnorm", spec.kv_lora_rank)
    elem("rope", "rope", (H + 1) * spec.qk_rope_head_dim, kernels=10)
    elem("kv_write", "kv_write" + ("_decode" if shape.phase == "decode" else ""),
         spec.kv_lora_rank + spec.qk_rope_head_dim, kernels=1)
    if shape.phase == "prefill":
        gemm("kv_b_proj", H * (spec.qk_nope_head_dim + spec.v_head_dim), spec.kv_lora_rank)
        ops.append(Op("attention", "attention", {
            "batch": B, "heads": H, "kv_heads": H, "head_dim": qk, "v_head_dim": spec.v_head_dim,
            "q_len": shape.q_len, "kv_len": shape.kv_len, "causal": True, "window": None}, L, dtype, None,
            "layer", host_ops=3.0, meta={"kv_dtype": kv_dtype}))
    else:
        # absorb W_UK into the query and W_UV into the output: per-head batched GEMMs
        gemm("q_absorb", spec.kv_lora_rank, spec.qk_nope_head_dim, groups=H, batched=True)
        ops.append(Op("attention", "attention", {
            "batch": B, "heads": H, "kv_heads": 1, "head_dim": spec.kv_lora_rank + spec.qk_rope_head_dim,
            "v_head_dim": spec.kv_lora_rank, "kv_shared": True, "q_len": shape.q_len, "kv_len": shape.kv_len,
            "causal": False, "window": None}, L, dtype, None, "layer", host_ops=3.0, meta={"kv_dtype": kv_dtype}))
        gemm("out_absorb", spec.v_head_dim, spec.kv_lora_rank, groups=H, batched=True)
    gemm("o_proj", h, H * spec.v_head_dim)
    del T
