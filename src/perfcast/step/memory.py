"""Memory per GPU under TP/PP: weights, KV cache, activation workspace and runtime reserve (bytes).

Weights are exact parameter counts times the weight dtype (quantized weights: the embedding and LM head in
bf16, as FP8 and INT4/INT8 checkpoints keep them). The most loaded pipeline stage decides
``fits``. The KV cache holds ``max(prompt, context) + 1`` tokens per sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from perfcast.hardware.spec import DTYPE_BYTES, QUANTIZED_DTYPES, GPUSpec
from perfcast.models.builder import kv_heads_per_gpu, shard
from perfcast.models.spec import ModelSpec

GIB = float(1 << 30)
# CUDA context, cuBLAS/cuDNN workspaces and allocator slack, per GPU (measured on H100/torch 2.x:
# ~0.5 GiB context + workspaces); NCCL buffers add more once tp or pp > 1.
RUNTIME_RESERVE_BYTES = 1.0 * GIB
NCCL_RESERVE_BYTES = 0.5 * GIB


@dataclass(frozen=True)
class Memory:
    weights_bytes: np.ndarray
    kv_cache_bytes: np.ndarray
    activations_bytes: np.ndarray
    reserve_bytes: np.ndarray
    capacity_bytes: float

    @property
    def total_bytes(self):
        return self.weights_bytes + self.kv_cache_bytes + self.activations_bytes + self.reserve_bytes

    @property
    def fits(self):
        return self.total_bytes <= self.capacity_bytes


def stage_layers(n_layers: int, pp: int) -> list[range]:
    """Contiguous layers of each pipeline stage, split as vLLM does (``get_pp_indices``): as even as
    possible, the remainder one layer each to the stages before the last, from the second-to-last
    backwards (the last stage also runs the final norm and LM head). Megatron needs ``pp`` to divide
    the layers; then every rule agrees. perfcast.measure.model_step uses this same split."""
    if pp < 1 or pp > n_layers:
        raise ValueError(f"pp={pp} must be from 1 to the {n_layers} layers")
    base, extra = divmod(n_layers, pp)
    counts = [base] * pp
    for i in range(2, extra + 2):
        counts[-i] += 1
    out, start = [], 0
    for n in counts:
        out.append(range(start, start + n))
        start += n
    return out


def layer_weight_params_per_gpu(spec: ModelSpec, layer: int, tp: int) -> float:
    """Parameters of one layer held by one TP rank (KV projections replicated past kv_heads)."""
    full = spec.layer_params(layer)
    if tp == 1:
        return float(full)
    h, hd = spec.hidden, spec.head_dim
    norms = spec.norm_params() + (2 * hd if spec.qk_norm else 0)
    sharded = full - norms
    if not spec.is_mla and spec.n_kv_heads < tp:
        # K and V projections: each rank holds one KV head (replicated) instead of kv/tp
        kv_full = 2 * h * spec.kv_dim + (2 * spec.kv_dim if spec.attn_bias else 0)
        kv_rank = 2 * h * kv_heads_per_gpu(spec, tp) * hd + (2 * hd if spec.attn_bias else 0)
        return (sharded - kv_full) / tp + kv_rank + norms
    return sharded / tp + norms


_WEIGHTS: dict = {}


def weights_bytes_per_gpu(spec: ModelSpec, tp: int, pp: int, wdtype: str = "bf16") -> float:
    """Bytes of weights on the most loaded GPU (a sum over every layer, so kept per deployment)."""
    key = (id(spec), tp, pp, wdtype)  # specs are immutable; the entry keeps its spec alive (ids stay unique)
    hit = _WEIGHTS.get(key)
    if hit is None or hit[0] is not spec:
        if len(_WEIGHTS) > 4096:
            _WEIGHTS.clear()
        hit = _WEIGHTS[key] = (spec, _weights_bytes_per_gpu(spec, tp, pp, wdtype))
    return hit[1]


def _weights_bytes_per_gpu(spec: ModelSpec, tp: int, pp: int, wdtype: str) -> float:
    wb = DTYPE_BYTES[wdtype]
    eb = DTYPE_BYTES["bf16"] if wdtype in QUANTIZED_DTYPES else wb  # embedding and LM head
    stages = stage_layers(spec.n_layers, pp)
    worst = 0.0
    per_kind: dict[bool, float] = {}  # a layer's parameters depend only on whether it holds experts

    def layer(i: int) -> float:
        kind = spec.is_moe_layer(i)
        if kind not in per_kind:
            per_kind[kind] = layer_weight_params_per_gpu(spec, i, tp)
        return per_kind[kind]

    for s, layers in enumerate(stages):
        p = sum(layer(i) for i in layers)
        e = 0.0  # embedding and head parameters, stored at ``eb``
        if s == 0:
            e += spec.embedding_params() / tp
        if s == pp - 1:
            p += spec.final_norm_params()
            # a tied head is the embedding itself when one stage holds both
            if not spec.tied_embeddings or pp > 1:
                e += spec.vocab * spec.hidden / tp
        worst = max(worst, p * wb + e * eb)
    return worst


def kv_bytes_per_token_per_gpu(spec: ModelSpec, tp: int, pp: int, kv_dtype: str = "bf16") -> float:
    """KV-cache bytes per token of one sequence on the most loaded GPU."""
    layers = math.ceil(spec.n_layers / pp)
    if spec.is_mla:
        per_layer = spec.kv_elems_per_token_per_layer()  # latent cache is replicated across TP
    else:
        per_layer = 2 * kv_heads_per_gpu(spec, tp) * spec.head_dim
    # sliding-window layers only need the window; counted in kv_cache_bytes
    return layers * per_layer * DTYPE_BYTES[kv_dtype]


def kv_cache_bytes(spec: ModelSpec, batch, tokens, tp: int, pp: int, kv_dtype: str = "bf16"):
    tokens = np.asarray(tokens, dtype=float)
    per_tok = kv_bytes_per_token_per_gpu(spec, tp, pp, kv_dtype)
    if spec.sliding_window and spec.sliding_layers:
        frac_swa = spec.sliding_layers / spec.n_layers
        eff_tokens = (1 - frac_swa) * tokens + frac_swa * np.minimum(tokens, spec.sliding_window)
    else:
        eff_tokens = tokens
    return np.asarray(batch, dtype=float) * eff_tokens * per_tok


def activation_bytes(spec: ModelSpec, batch, prompt, tp: int, dtype: str = "bf16"):
    """Peak transient workspace of a prefill step: a few hidden-sized buffers, the widest MLP
    intermediate, attention's Q/K/V and fp32 logits of the last position."""
    a = DTYPE_BYTES[dtype]
    t = np.asarray(batch, dtype=float) * np.asarray(prompt, dtype=float)
    inter = shard(max(spec.intermediate, spec.moe_intermediate * max(spec.experts_per_token, 1)), tp)
    qkv = (spec.n_heads // tp + 2 * kv_heads_per_gpu(spec, tp)) * spec.head_dim
    per_tok = (4 * spec.hidden + 3 * inter + qkv) * a
    logits = np.asarray(batch, dtype=float) * shard(spec.vocab, tp) * 4.0
    return t * per_tok + logits


def memory(spec: ModelSpec, gpu: GPUSpec, batch, prompt, context, tp: int = 1, pp: int = 1,
           wdtype: str = "bf16", kv_dtype: str = "bf16", dtype: str = "bf16") -> Memory:
    batch = np.asarray(batch, dtype=float)
    tokens = np.maximum(np.asarray(prompt, dtype=float), np.asarray(context, dtype=float)) + 1
    w = np.full(np.broadcast(batch, tokens).shape, weights_bytes_per_gpu(spec, tp, pp, wdtype))
    kv = kv_cache_bytes(spec, batch, tokens, tp, pp, kv_dtype)
    act = activation_bytes(spec, batch, prompt, tp, dtype)
    reserve = RUNTIME_RESERVE_BYTES + (NCCL_RESERVE_BYTES if tp * pp > 1 else 0.0)
    shape = np.broadcast(w, kv, act).shape
    return Memory(np.broadcast_to(w, shape), np.broadcast_to(kv, shape), np.broadcast_to(act, shape),
                  np.full(shape, reserve), gpu.mem_capacity_bytes)


def max_batch(spec: ModelSpec, gpu: GPUSpec, context: int, prompt: int | None = None, tp: int = 1,
              pp: int = 1, wdtype: str = "bf16", kv_dtype: str = "bf16") -> int:
    """Largest batch whose weights, KV cache, workspace and reserve fit (0 if even 1 does not)."""
    prompt = context if prompt is None else prompt
    lo, hi = 0, 1
    while _fits(spec, gpu, hi, prompt, context, tp, pp, wdtype, kv_dtype):
        lo, hi = hi, hi * 2
        if hi > 1 << 24:
            return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _fits(spec, gpu, mid, prompt, context, tp, pp, wdtype, kv_dtype):
            lo = mid
        else:
            hi = mid
    return lo


def max_context(spec: ModelSpec, gpu: GPUSpec, batch: int, tp: int = 1, pp: int = 1,
                wdtype: str = "bf16", kv_dtype: str = "bf16") -> int:
    """Longest context (prompt == context) that fits at ``batch``, capped at max_position_embeddings."""
    lo, hi = 0, spec.max_positions
    if _fits(spec, gpu, batch, hi, hi, tp, pp, wdtype, kv_dtype):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _fits(spec, gpu, batch, mid, mid, tp, pp, wdtype, kv_dtype):
            lo = mid
        else:
            hi = mid
    return lo


def _fits(spec, gpu, batch, prompt, context, tp, pp, wdtype, kv_dtype) -> bool:
    return bool(memory(spec, gpu, batch, prompt, context, tp, pp, wdtype, kv_dtype).fits)
