"""Pure analytical bounds: FLOP and byte counts per op family, and the roofline.

All counts are exact for the op as the reference PyTorch code runs it; times are in seconds.
"""

from __future__ import annotations

import numpy as np

from perfcast.hardware.spec import DTYPE_BYTES
from perfcast.ops.base import COMPUTE, MEMORY


def roofline(flops, nbytes, peak_flops: float, bw_bytes_per_s: float):
    """(seconds, bound code): the larger of compute time and memory time."""
    tc = np.asarray(flops, dtype=float) / peak_flops
    tm = np.asarray(nbytes, dtype=float) / bw_bytes_per_s
    return np.maximum(tc, tm), np.where(tc >= tm, COMPUTE, MEMORY)


# ---------------------------------------------------------------- GEMM  y[m,n] = x[m,k] @ w[n,k]^T
def gemm_flops(m, n, k):
    return 2.0 * np.asarray(m, dtype=float) * n * k


def gemm_bytes(m, n, k, dtype: str = "bf16", wdtype: str | None = None):
    """Each operand read once and the output written once (a batched GEMM of G groups, each with its own
    activations and weights, moves G times this)."""
    a = DTYPE_BYTES[dtype]
    w = DTYPE_BYTES[wdtype or dtype]
    out = 2.0 if dtype in ("fp8", "int8", "int4", "fp4") else a  # low-precision GEMMs emit bf16
    m = np.asarray(m, dtype=float)
    return m * k * a + float(n) * k * w + m * n * out


# ---------------------------------------------------------------- attention (flash kernel)
def attention_pairs(q_len, kv_len, causal, window=None):
    """Query-key pairs scored per (sequence, head).

    Causal with q_len <= kv_len: query i (0-based, at position kv_len - q_len + i) sees
    kv_len - q_len + i + 1 keys, capped by the sliding window.
    """
    q = np.asarray(q_len, dtype=float)
    kv = np.asarray(kv_len, dtype=float)
    if not causal:
        seen = kv if window is None else np.minimum(kv, window)
        return q * seen
    off = kv - q  # keys before the first query
    if window is None:
        return q * off + q * (q + 1) / 2.0
    w = float(window)
    # seen_i = min(off + i + 1, w) for i in 0..q-1
    # count of i with off+i+1 <= w: c = clip(w - off, 0, q)
    c = np.clip(w - off, 0.0, q)
    s_lin = c * off + c * (c + 1) / 2.0
    return s_lin + (q - c) * w


def attention_flops(batch, heads, head_dim, q_len, kv_len, causal, window=None, v_head_dim=None):
    """QK^T and PV: 2 FLOP per multiply-add each; softmax not counted (tensor-core bound)."""
    vd = head_dim if v_head_dim is None else v_head_dim
    pairs = attention_pairs(q_len, kv_len, causal, window)
    return 2.0 * np.asarray(batch, dtype=float) * heads * pairs * (head_dim + vd)


def attention_bytes(batch, heads, kv_heads, head_dim, q_len, kv_len, dtype="bf16", kv_dtype=None,
                    window=None, v_head_dim=None, kv_shared=False):
    """Q read (``head_dim`` wide), K and V read once (window-limited), O written (``v_head_dim`` wide).

    ``kv_shared``: V is a view of the first ``v_head_dim`` channels of K (MLA's absorbed decode attends over
    the latent cache, whose first kv_lora_rank channels are both key and value): the cache is read once,
    ``head_dim`` wide per key."""
    a = DTYPE_BYTES[dtype]
    kvb = DTYPE_BYTES[kv_dtype or dtype]
    vd = head_dim if v_head_dim is None else v_head_dim
    b = np.asarray(batch, dtype=float)
    kv = np.asarray(kv_len, dtype=float)
    q = np.asarray(q_len, dtype=float)
    if window is not None:
        kv = np.minimum(kv, q + window)
    per_key = head_dim if kv_shared else head_dim + vd
    return b * (heads * q * (head_dim + vd) * a + kv_heads * kv * per_key * kvb)


# ---------------------------------------------------------------- memory-bound kernels
# minimum bytes moved per element of the [tokens, width] operand, in units of the element size
_ELEM_TRAFFIC = {
    "rmsnorm": 2.0,  # read x, write y (weight is negligible, counted below)
    "rmsnorm_eager": 2.0,  # same minimum; the composite's extra passes show up in its efficiency
    "layernorm": 2.0,
    "silu_mul": 3.0,  # read gate and up, write out (width = intermediate)
    "gelu_mul": 3.0,
    "gelu": 2.0,
    "add": 3.0,  # read x and residual, write sum
    "rope": 2.0,  # read q/k, write rotated (cos/sin counted below)
    "kv_write": 2.0,  # read new K/V, write into the cache (prefill: many tokens of one sequence)
    "kv_write_decode": 2.0,  # one new token in each of many sequences (scattered rows)
    "embedding": 2.0,  # read the rows, write the output
    "copy": 2.0,
    "quant_fp8": 1.5,  # read bf16, write e4m3 (one byte): 3 bytes an element, in units of the bf16 element
}


def elementwise_bytes(op: str, tokens, width, dtype: str = "bf16"):
    a = DTYPE_BYTES[dtype]
    t = np.asarray(tokens, dtype=float)
    base = _ELEM_TRAFFIC[op] * t * width * a
    if op in ("rmsnorm", "rmsnorm_eager", "layernorm"):
        base = base + width * a
    if op == "rope":
        base = base + 2.0 * t * 128 * a  # cos and sin rows
    return base


def elementwise_flops(op: str, tokens, width):
    per = {"rmsnorm": 4.0, "rmsnorm_eager": 4.0, "layernorm": 6.0, "silu_mul": 5.0, "gelu_mul": 10.0,
           "gelu": 8.0, "add": 1.0, "rope": 3.0}.get(op, 0.0)
    return per * np.asarray(tokens, dtype=float) * width


# ---------------------------------------------------------------- collectives (ring algorithms)
def collective_wire_bytes(coll: str, nbytes, gpus: int):
    """Bytes each GPU sends over its links for a ring/direct algorithm (``nbytes`` = input buffer)."""
    b = np.asarray(nbytes, dtype=float)
    g = float(gpus)
    if gpus <= 1:
        return b * 0.0
    if coll == "all_reduce":
        return 2.0 * (g - 1) / g * b
    if coll == "all_gather":
        return (g - 1) * b  # each rank's input is 1/g of the output
    if coll == "reduce_scatter":
        return (g - 1) / g * b
    if coll == "all_to_all":
        return (g - 1) / g * b
    if coll == "send_recv":
        return b
    raise ValueError(f"unknown collective {coll!r}")
