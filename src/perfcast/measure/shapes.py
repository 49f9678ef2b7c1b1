"""Shape grids for kernel calibration (pure Python: no torch here).

Every grid is a list of plain dicts whose keys are the CSV columns written by
:mod:`perfcast.measure.calibrate` (before the timing columns). The standard grid is derived from the
GEMM/attention/elementwise shapes of the models in :data:`MODELS`; the held-out grid is a seeded random
draw off that grid, used only to measure the predictor's accuracy.
"""

from __future__ import annotations

import functools
import math
import random
import warnings
from collections import Counter
from typing import NamedTuple

MODELS = (
    "meta-llama/Llama-3.2-1B",
    "meta-llama/Llama-3.2-3B",
    "meta-llama/Llama-3.1-8B",
    "meta-llama/Llama-3.1-70B",
    "Qwen/Qwen2.5-7B",
    "Qwen/Qwen2.5-14B",
    "Qwen/Qwen2.5-32B",
    "Qwen/Qwen3-8B",
    "mistralai/Mistral-7B-v0.1",
)
TPS = (1, 2, 4, 8)


class Dims(NamedTuple):
    """The few ModelSpec fields the grids need (same attribute names as ModelSpec)."""

    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int


# Fallback when a shipped config is missing (values from the models' Hugging Face config.json).
FALLBACK = {
    "meta-llama/Llama-3.2-1B": Dims(2048, 32, 8, 64, 8192, 128256),
    "meta-llama/Llama-3.2-3B": Dims(3072, 24, 8, 128, 8192, 128256),
    "meta-llama/Llama-3.1-8B": Dims(4096, 32, 8, 128, 14336, 128256),
    "meta-llama/Llama-3.1-70B": Dims(8192, 64, 8, 128, 28672, 128256),
    "Qwen/Qwen2.5-7B": Dims(3584, 28, 4, 128, 18944, 152064),
    "Qwen/Qwen2.5-14B": Dims(5120, 40, 8, 128, 13824, 152064),
    "Qwen/Qwen2.5-32B": Dims(5120, 40, 8, 128, 27648, 152064),
    "Qwen/Qwen3-8B": Dims(4096, 32, 8, 128, 12288, 151936),
    "mistralai/Mistral-7B-v0.1": Dims(4096, 32, 8, 128, 14336, 32000),
}

M_GRID = (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448,
          512, 640, 768, 896, 1024, 1280, 1536, 1792, 2048, 2560, 3072, 3584, 4096, 5120, 6144, 7168, 8192,
          10240, 12288, 14336, 16384)
# misaligned weights (a dimension not a multiple of 8 elements): cuBLAS leaves the TMA fast path
MISALIGNED_NK = ((4099, 4096), (4096, 4099), (11001, 4096), (4096, 11001), (14337, 5120), (5121, 14336),
                 (2001, 2001), (8191, 8191), (24575, 8192), (3001, 12289), (30001, 1537), (1023, 30719))
MISALIGNED_M = (1, 8, 32, 128, 256, 512, 1024, 2048, 4096, 8192)
SQUARES = (256, 512, 768, 1000, 1024, 1536, 2048, 3000, 3072, 4096, 5120, 6144, 7168, 8192, 10000,
           12288, 16384)
MAX_GEMM_FLOP = 3e13  # ~40 ms on an H100; larger shapes are skipped except a few kept on purpose
HEAD_PAIRS = ((32, 8), (24, 8), (32, 32), (28, 4), (40, 8), (64, 8), (16, 8), (32, 4))
DECODE_PAIRS = ((32, 8), (64, 8), (28, 4), (32, 32), (40, 8), (16, 8))
PREFILL_SEQS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
DECODE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DECODE_KV = (128, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
MAX_KV_BYTES = 16 * 2**30
MAX_TOKENS = 65536
TOKENS = tuple(sorted({2**i for i in range(17)} | {3, 24, 96, 384, 1000, 3072, 12288, 49152}))
HIDDEN_WIDTHS = (2048, 3072, 4096, 5120, 8192)
INTER_WIDTHS = (8192, 11008, 14336, 28672)
EW_OPS = ("rmsnorm", "rmsnorm_eager", "silu_mul", "gelu_mul", "rope", "add", "kv_write",
          "kv_write_decode", "embedding", "copy")
VOCAB = 128256
ROPE_HEADS = (32, 8)
KV_WRITE_HEADS = 8
HEAD_DIM = 128
DECODE_MAX_BATCH = 1024  # kv_write_decode: batch = tokens, one new position per sequence


@functools.cache
def model_dims(hf_id: str) -> Dims | None:
    """Dims of a model: its shipped config if present, else the fallback table (with a warning)."""
    try:
        from perfcast.models import get_model

        s = get_model(hf_id)
        return Dims(s.hidden, s.n_heads, s.n_kv_heads, s.head_dim, s.intermediate, s.vocab)
    except Exception as e:
        if hf_id in FALLBACK:
            warnings.warn(f"{hf_id}: shipped config unavailable ({e}); using the built-in table", stacklevel=2)
            return FALLBACK[hf_id]
        warnings.warn(f"{hf_id}: no config and no built-in entry; skipped", stacklevel=2)
        return None


def tp_ok(spec, tp: int) -> bool:
    return spec.n_heads % tp == 0 and spec.intermediate % tp == 0


def llm_gemm_shapes(spec, tp: int = 1) -> dict[str, tuple[int, int]]:
    """(n, k) of each projection of one decoder layer (+ lm_head) on one of ``tp`` ranks.

    Megatron-style sharding: QKV, gate/up and lm_head column-parallel (n split), O and down
    row-parallel (k split). KV heads are replicated when ``tp`` exceeds their number.
    """
    if not tp_ok(spec, tp):
        raise ValueError(f"tp={tp} does not divide n_heads={spec.n_heads} / intermediate={spec.intermediate}")
    q = spec.n_heads * spec.head_dim // tp
    kv = max(spec.n_kv_heads // tp, 1) * spec.head_dim
    h, inter = spec.hidden, spec.intermediate // tp
    return {
        "qkv": (q + 2 * kv, h),
        "q": (q, h),
        "kv": (kv, h),
        "o": (h, q),
        "gate_up": (2 * inter, h),
        "gate": (inter, h),
        "down": (h, inter),
        "lm_head": (-(-spec.vocab // tp), h),
    }


def model_pairs(models=MODELS) -> Counter:
    """(n, k) -> how many (model, tp, projection) use it (its 'popularity')."""
    pop: Counter = Counter()
    for mid in models:
        spec = model_dims(mid)
        if spec is None:
            continue
        for tp in TPS:
            if tp_ok(spec, tp):
                pop.update(llm_gemm_shapes(spec, tp).values())
    return pop


# ---- cost estimate (for budgeting and the report; an H100-class guess, not a prediction) ----------
def est_kernel_s(flop: float, nbytes: float, flops_per_s: float = 700e12) -> float:
    return max(flop / flops_per_s, nbytes / 3e12) + 5e-6


def est_case_s(flop: float, nbytes: float, flops_per_s: float = 700e12, target_s: float = 0.025) -> float:
    """Wall seconds to benchmark one case, fitted on an H100 run (gemm and elementwise within 3%):
    reps from the kernel time, 5 untimed/estimate calls, ~61 us per rep for the L2 flush (41 us)
    and event/launch gaps, ~2.5 ms per case of setup and bookkeeping."""
    t = est_kernel_s(flop, nbytes, flops_per_s)
    reps = min(max(math.ceil(target_s / t), 5), 200)
    return (reps + 5) * (t + 61e-6) + 2.5e-3


def gemm_cost(c: dict) -> tuple[float, float]:
    m, n, k = c["m"], c["n"], c["k"]
    return 2.0 * m * n * k, 2.0 * (m * k + n * k + m * n)


def attn_cost(c: dict) -> tuple[float, float]:
    b, h, kvh, d, q, kv = (c[x] for x in ("batch", "heads", "kv_heads", "head_dim", "q_len", "kv_len"))
    flop = 4.0 * b * h * q * kv * d * (0.5 if c["causal"] and q == kv else 1.0)
    return flop, 2.0 * b * d * (2 * h * q + 2 * kvh * kv)


def estimate_seconds(family: str, cases: list[dict]) -> float:
    if family == "gemm":
        return sum(est_case_s(*gemm_cost(c)) for c in cases)
    if family == "attention":
        return sum(est_case_s(*attn_cost(c), flops_per_s=400e12) for c in cases)
    if family == "elementwise":
        return sum(est_case_s(0.0, c["bytes"]) for c in cases)
    return 3.0


# ---- GEMM --------------------------------------------------------------------------------------
def _g(dtype, m, n, k):
    return {"dtype": dtype, "m": m, "n": n, "k": k}


def gemm_grid(quick: bool = False, tiny: bool = False, sm_count: int = 132, budget_s: float = 200.0) -> list[dict]:
    """bf16 model GEMMs over M, squares, wave/tile-quantization probes, and an fp16 subset."""
    if tiny:
        return [_g("bf16", m, n, k) for m in (1, 16) for n, k in ((64, 64), (192, 128))] + [_g("fp16", 8, 64, 64)]
    pop = model_pairs()
    if quick:
        l8 = llm_gemm_shapes(model_dims("meta-llama/Llama-3.1-8B") or FALLBACK["meta-llama/Llama-3.1-8B"], 1)
        ms = (1, 16, 128, 512, 2048, 8192)
        out = [_g("bf16", m, n, k) for (n, k) in dict.fromkeys(l8.values()) for m in ms]
        out += [_g("bf16", s, s, s) for s in (1000, 4096, 8192)] + [_g("fp16", 256, 4096, 4096)]
        return out
    big = sorted(pop, key=lambda nk: -nk[0] * nk[1])[:4]
    m_sets = {nk: [m for m in M_GRID if 2 * m * nk[0] * nk[1] <= MAX_GEMM_FLOP] for nk in pop}
    for nk in big:  # keep the next M above the limit for the four largest weights
        over = [m for m in M_GRID if 2 * m * nk[0] * nk[1] > MAX_GEMM_FLOP]
        if over and 2 * over[0] * nk[0] * nk[1] <= 8e13:
            m_sets[nk].append(over[0])

    fixed = [_g("bf16", s, s, s) for s in SQUARES]
    wave = 128 * sm_count
    for j in (1, 2):
        fixed += [_g("bf16", 8192, wave * j + d, 4096) for d in (-64, 0, 64)]
    fixed += [_g("bf16", 8192, n, 4096) for n in range(4096, 4353, 32)]
    fixed += [_g("bf16", m, 4096, 4096) for m in range(8064, 8449, 64)]  # M-side tile/wave steps
    l8 = llm_gemm_shapes(model_dims("meta-llama/Llama-3.1-8B") or FALLBACK["meta-llama/Llama-3.1-8B"], 1)
    fixed += [_g("fp16", m, n, k) for (n, k) in dict.fromkeys(l8.values()) for m in (1, 16, 128, 1024, 4096)]
    fixed += [_g("fp16", s, s, s) for s in (1024, 4096, 8192)]
    fixed += [_g("bf16", m, n, k) for (n, k) in MISALIGNED_NK for m in MISALIGNED_M
              if 2 * m * n * k <= MAX_GEMM_FLOP]

    # thin M for the least popular (n, k) until the estimate fits the budget
    thin_order = sorted(pop, key=lambda nk: (pop[nk], nk[0] * nk[1]))
    pow2 = {2**i for i in range(15)}

    def build():
        cases = [_g("bf16", m, n, k) for (n, k) in sorted(pop) for m in m_sets[(n, k)]]
        return list({tuple(c.values()): c for c in cases + fixed}.values())

    cases = build()
    for level in (pow2, {1, 4, 16, 64, 256, 1024, 4096, 16384}):
        for nk in thin_order:
            if estimate_seconds("gemm", cases) <= budget_s:
                return cases
            keep = [m for m in m_sets[nk] if m in level or m > 16384]
            keep += [m for m in m_sets[nk] if m == max(m_sets[nk])]  # keep the largest M measured
            m_sets[nk] = sorted(set(keep))
            cases = build()
    return cases


# ---- attention ---------------------------------------------------------------------------------
def _a(b, h, kvh, d, q, kv, causal):
    return {"dtype": "bf16", "batch": b, "heads": h, "kv_heads": kvh, "head_dim": d, "q_len": q,
            "kv_len": kv, "causal": causal}


def _kv_bytes(b, kvh, kv, d):
    return 2 * b * kvh * kv * d * 2


def _sharded(pairs, tps):
    return [(h // tp, max(kvh // tp, 1)) for h, kvh in pairs for tp in tps if h % tp == 0]


def attention_grid(quick: bool = False, tiny: bool = False) -> list[dict]:
    """Prefill (q_len == kv_len, causal) and decode (q_len 1) SDPA cases."""
    if tiny:
        return [_a(1, 4, 2, 32, 16, 16, True), _a(2, 4, 4, 32, 1, 64, False)]
    if quick:
        out = [_a(b, 32, 8, 128, s, s, True) for s, b in ((512, 1), (2048, 1), (2048, 8), (8192, 1))]
        out += [_a(b, 32, 8, 128, 1, kv, False) for b in (1, 16, 64) for kv in (1024, 8192)]
        return out

    def prefill(pairs, seqs, batches, d=128):
        out = []
        for h, kvh in pairs:
            for s in seqs:
                bs = [b for b in batches if 128 <= b * s <= MAX_TOKENS]
                out += [_a(b, h, kvh, d, s, s, True) for b in bs]
        return out

    def decode(pairs, batches, kvs):
        return [_a(b, h, kvh, HEAD_DIM, 1, kv, False) for h, kvh in pairs for b in batches for kv in kvs
                if _kv_bytes(b, kvh, kv, HEAD_DIM) <= MAX_KV_BYTES]

    out = prefill(HEAD_PAIRS, PREFILL_SEQS, (1, 2, 4, 8, 16, 32))
    out += prefill(((32, 8), (32, 32), (16, 8)), PREFILL_SEQS, (1, 4, 16), d=64)
    out += decode(DECODE_PAIRS, DECODE_BATCHES, DECODE_KV)
    tp_pairs = list(dict.fromkeys(p for p in _sharded(HEAD_PAIRS, (2, 4)) if p not in HEAD_PAIRS))
    out += prefill(tp_pairs, (256, 1024, 4096, 16384), (1, 4, 16))
    out += decode(tp_pairs, (1, 4, 16, 64, 256), (512, 2048, 8192, 32768, 131072))
    # head_dim 64 decode (Llama-3.2-1B, Qwen2.5-0.5B...): not in the first profiles, whose decode grid is
    # all head_dim 128, so such models' decode attention was extrapolated (+2% on Llama-3.2-1B steps)
    out += [_a(b, h, kvh, 64, 1, kv, False) for h, kvh in ((32, 8), (32, 32)) for b in (1, 4, 16, 64, 256)
            for kv in (512, 2048, 8192, 32768) if _kv_bytes(b, kvh, kv, 64) <= MAX_KV_BYTES]
    return list({tuple(c.values()): c for c in out}.values())


# ---- elementwise -------------------------------------------------------------------------------
def ew_case(op: str, tokens: int, width: int) -> dict:
    """One elementwise case with its minimum DRAM traffic (bf16, 2 bytes/element; see the docs)."""
    e = tokens * width
    if op == "rmsnorm":
        nbytes = 4 * e + 2 * width
    elif op == "rmsnorm_eager":  # 8 kernels: to(f32), pow, mean, +eps, rsqrt, mul, to(bf16), *weight
        nbytes = 36 * e + 24 * tokens + 2 * width
    elif op in ("silu_mul", "gelu_mul"):  # 2 kernels: act(g), act*u
        nbytes = 4 * e + 6 * e
    elif op == "rope":  # per tensor: x*cos, -x2, cat, rot*sin, add (5 kernels), cos/sin read twice
        nbytes = 20 * e + 2 * 2 * (tokens * HEAD_DIM * 2)
    elif op == "add":
        nbytes = 6 * e
    elif op in ("kv_write", "kv_write_decode"):  # index_copy_ for K and V, positions are int64
        nbytes = 4 * e + 2 * 8 * (tokens if op == "kv_write" else 1)
    elif op == "embedding":
        nbytes = 8 * tokens + 4 * e
    elif op == "copy":
        nbytes = 4 * e
    else:
        raise ValueError(f"unknown elementwise op {op!r}")
    return {"op": op, "dtype": "bf16", "tokens": tokens, "width": width, "elements": e, "bytes": nbytes}


def ew_widths(op: str) -> tuple[int, ...]:
    if op in ("silu_mul", "gelu_mul"):
        return INTER_WIDTHS
    if op == "rope":
        return ((ROPE_HEADS[0] + ROPE_HEADS[1]) * HEAD_DIM,)
    if op.startswith("kv_write"):
        return (2 * KV_WRITE_HEADS * HEAD_DIM,)
    return HIDDEN_WIDTHS


def elementwise_grid(quick: bool = False, tiny: bool = False) -> list[dict]:
    if tiny:
        out = [ew_case(op, t, 256 if op != "rope" else (4 + 2) * 32) for op in EW_OPS for t in (1, 4)]
        return out
    toks = (1, 16, 256, 4096, 32768) if quick else TOKENS
    out = []
    for op in EW_OPS:
        widths = ew_widths(op)[:1] if quick and op != "rmsnorm" else ew_widths(op)
        for t in toks:
            if op == "kv_write_decode" and t > DECODE_MAX_BATCH:
                continue
            out += [ew_case(op, t, w) for w in (widths if not quick else widths[:2])]
    return out


# ---- held-out set: seeded, off the calibration grid ----------------------------------------------
def _logu(rng: random.Random, lo: float, hi: float) -> int:
    return round(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _off(rng, lo, hi, grid) -> int:
    while True:
        v = _logu(rng, lo, hi)
        if v not in grid:
            return v


def _rand_dim(rng: random.Random) -> int:
    return rng.randrange(512, 32769, 64) if rng.random() < 0.6 else rng.randrange(513, 32768, 2)


def heldout_gemm(rng: random.Random, n_cases: int = 300) -> list[dict]:
    pairs = sorted(model_pairs())
    grid = set(M_GRID)
    out, seen = [], set()
    while len(out) < n_cases:
        m = _off(rng, 1, 16384, grid)
        n, k = rng.choice(pairs) if rng.random() < 0.5 else (_rand_dim(rng), _rand_dim(rng))
        dtype = "fp16" if rng.random() < 0.08 else "bf16"
        if 2.0 * m * n * k > MAX_GEMM_FLOP or (dtype, m, n, k) in seen:
            continue
        seen.add((dtype, m, n, k))
        out.append(_g(dtype, m, n, k))
    return out


def heldout_attention(rng: random.Random, n_cases: int = 80) -> list[dict]:
    pairs = list(HEAD_PAIRS) + _sharded(HEAD_PAIRS, (2, 4))
    out, seen = [], set()
    while len(out) < n_cases:
        h, kvh = rng.choice(pairs)
        if rng.random() < 0.5:
            d = 64 if rng.random() < 0.2 else 128
            s = _off(rng, 128, 32768, set(PREFILL_SEQS))
            b = rng.randint(1, max(1, min(32, MAX_TOKENS // s)))
            c = _a(b, h, kvh, d, s, s, True)
        else:
            b = _off(rng, 1, 256, set(DECODE_BATCHES))
            kv = _off(rng, 128, 131072, set(DECODE_KV))
            if _kv_bytes(b, kvh, kv, HEAD_DIM) > MAX_KV_BYTES:
                continue
            c = _a(b, h, kvh, HEAD_DIM, 1, kv, False)
        if tuple(c.values()) not in seen:
            seen.add(tuple(c.values()))
            out.append(c)
    return out


def heldout_elementwise(rng: random.Random, n_cases: int = 80) -> list[dict]:
    hidden = (1536, 2560, 3584, 6144, 7168)
    inter = (4864, 6912, 9728, 12288, 13824, 18944, 27648)
    out, seen = [], set()
    while len(out) < n_cases:
        op = rng.choice(EW_OPS)
        hi = DECODE_MAX_BATCH if op == "kv_write_decode" else MAX_TOKENS
        t = _off(rng, 1, hi, set(TOKENS))
        if op in ("silu_mul", "gelu_mul"):
            w = rng.choice(inter)
        elif op in ("rope", "kv_write", "kv_write_decode"):
            w = ew_widths(op)[0]  # the op's layout is fixed (32/8 heads); tokens vary
        else:
            w = rng.choice(hidden) if rng.random() < 0.7 else rng.randrange(1024, 8193, 128)
        c = ew_case(op, t, w)
        if (op, t, w) not in seen:
            seen.add((op, t, w))
            out.append(c)
    return out


def grids(quick=False, heldout=False, tiny=False, seed=0, sm_count=132) -> dict[str, list[dict]]:
    """Case lists per family for one calibration run."""
    if heldout and not tiny:
        rng = random.Random(seed)
        scale = 0.2 if quick else 1.0
        return {
            "gemm": heldout_gemm(rng, int(300 * scale)),
            "attention": heldout_attention(rng, int(80 * scale)),
            "elementwise": heldout_elementwise(rng, int(80 * scale)),
        }
    return {
        "gemm": gemm_grid(quick=quick, tiny=tiny, sm_count=sm_count),
        "attention": attention_grid(quick=quick, tiny=tiny),
        "elementwise": elementwise_grid(quick=quick, tiny=tiny),
    }
