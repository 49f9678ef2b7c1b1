"""A fused split-KV MLA decode attention kernel in Triton (absorbed form), written for perfcast's measurement
harness: perfcast models DeepSeek MLA decode attention as one FlashMLA-class kernel that reads each sequence's
shared latent KV cache once, split over keys, and PyTorch ships no such kernel (the ``mla`` part can only run
SDPA's memory-efficient kernel or baddbmm/softmax/bmm). The ``mlatriton`` extras part times this one.

Inputs as ``extras.mla_block`` has them in decode: ``q`` [B, H, R + P] (per head the absorbed q_nope, R =
kv_lora_rank = 512 latent channels, then P = 64 rope channels), ``cache`` [B, S, R + P] (one layer's latent
cache: the key is all R + P channels, the value its first R), the softmax scale; output [B, H, R] in q's dtype.

Stage 1 (``_split_kernel``), grid (head blocks, B, splits): a program takes BLOCK_H heads of one sequence and
one split of its keys. It loads its BLOCK_H x (R + P) query tile once, then walks the split in blocks of
BLOCK_N keys; each key block is loaded once, as an R-wide part (the latent: key and value) and a P-wide part
(the rope key) so that every ``tl.dot`` has power-of-two shapes: scores = q_lat @ lat^T + q_pe @ pe^T (fp32
accumulation), an online softmax in base 2 (the scale folded with log2 e), acc += p @ lat with acc a
BLOCK_H x R fp32 tile. It writes acc / l and the log-sum-exp m + log2(l) per (b, head, split) in fp32.
Head blocks are grid axis 0, the fastest-launched one, so the programs that read the same key block (H /
BLOCK_H of them per (b, split)) run together and all but the first find it in L2.
Stage 2 (``_combine_kernel``), grid (H, B): each (b, head) merges its splits' partial outputs weighted by
2^(lse - max lse). With one split, stage 1 writes the output itself (``ONE_SPLIT``) and stage 2 is skipped.

``pick_splits`` sets the split count: enough programs for ``WAVES`` programs per SM, but every split at least
``MIN_SPLIT_BLOCKS`` key blocks (one split when S is a few blocks), and no split empty.

Configs (``CONFIGS``; ``configs_for`` orders them per head count, the harness times each and keeps the
fastest). All use 8 warps, so that the BLOCK_H x 512 fp32 accumulator is BLOCK_H x 512 / 256 registers a
thread (128 at BLOCK_H = 64), and 2 pipeline stages: Triton then copies key blocks straight into shared
memory (cp.async) one block ahead instead of staging them through registers. Shared memory by arithmetic
(bytes): 2 stages x BLOCK_N x 576 x 2 for key blocks, BLOCK_H x 576 x 2 for the query tile, BLOCK_H x BLOCK_N
x 2 for p; then what an sm_90 compile reports (Triton 3.5.0 and 3.9.0, with the runtime's 16-divisibility of
pointers and strides; shared memory from the compiler, registers from ptxas -v, over both versions and the
split and one-split variants; no spills but in the one-split h64 variant, 16 to 144 bytes):
- ``h64n32w8s2`` (H >= 64 first: two programs per (b, split) at H = 128): 73,728 + 73,728 + 4,096 = 151,552;
  compiled 147,456 (144 KB: p stays in registers as the A operand of Hopper's wgmma, which M = 64 allows; the
  query tile is read from shared memory by wgmma), 255 registers: one program an SM.
- ``h32n32w8s2``: 73,728 + 36,864 + 2,048 = 112,640; compiled 75,776 (74 KB), 164-180 registers (mma.sync).
- ``h16n32w8s2`` (H <= 16 first; SGLang's Triton MLA decode blocks, there at 4 warps): 73,728 + 18,432 + 1,024
  = 93,184; compiled 56,320 (55 KB), 96-136 registers: two programs an SM.
- ``h16n64w8s2``: 147,456 + 18,432 + 2,048 = 167,936; compiled 94,208 (92 KB), 128-145 registers.
The combine kernel: 32 registers, no shared memory. All under an H100's 227 KB a block (Triton's own
FlexAttention defaults needed 282 KB at these widths). Splitting V into two 256-wide halves run by separate
programs would halve the accumulator but compute every score twice, and at H = 128 the kernel is near the
H100's bf16 tensor ridge (each key is 1152 bytes against 2 x 128 x 1088 FLOPs); with 8 warps the accumulator
fits without it.

Triton is imported lazily (this module imports without it; ``mla_decode`` then raises a RuntimeError that
says so). ``split_reference`` is the same split and combine arithmetic in torch (no Triton), and
``attention_reference`` the plain float32 attention both are checked against.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

WAVES = 2  # programs per SM the split count aims for
MIN_SPLIT_BLOCKS = 4  # key blocks a split gets at least (fewer splits when the context is short)
LOG2E = 1.0 / math.log(2.0)
TRITON_HINT = ("the MLA Triton kernel needs triton (it ships with CUDA builds of PyTorch; elsewhere: "
               "pip install triton)")


@dataclass(frozen=True)
class MlaConfig:
    """One launch configuration of the split kernel: heads and keys per program, warps, pipeline stages."""

    name: str
    block_h: int
    block_n: int
    num_warps: int
    num_stages: int

    def as_dict(self) -> dict:
        return asdict(self)


CONFIGS = (
    MlaConfig("h64n32w8s2", 64, 32, 8, 2),
    MlaConfig("h32n32w8s2", 32, 32, 8, 2),
    MlaConfig("h16n32w8s2", 16, 32, 8, 2),
    MlaConfig("h16n64w8s2", 16, 64, 8, 2),
)
CONFIG_BY_NAME = {c.name: c for c in CONFIGS}


def configs_for(heads: int) -> list[MlaConfig]:
    """The configs worth running at ``heads`` query heads, preferred first: head blocks no taller than the
    heads (rounded up to a power of two, at least 16: ``tl.dot`` needs 16 rows), the tallest first."""
    top = max(16, 1 << (heads - 1).bit_length())
    return sorted((c for c in CONFIGS if c.block_h <= top), key=lambda c: -c.block_h)


def default_config(heads: int) -> MlaConfig:
    return configs_for(heads)[0]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def split_plan(keys: int, num_splits: int, block_n: int) -> tuple[int, int]:
    """(keys per split, splits) for ``num_splits`` asked over ``keys`` keys: each split a whole number of
    key blocks, then as many splits as that takes (never an empty one, so never more than asked)."""
    per = _cdiv(_cdiv(keys, max(1, num_splits)), block_n) * block_n
    return per, _cdiv(keys, per)


def pick_splits(batch: int, heads: int, keys: int, sm_count: int, config: MlaConfig | None = None) -> int:
    """Splits per (sequence, head block) so that batch x head blocks x splits programs fill ``WAVES`` programs
    per SM, each split at least ``MIN_SPLIT_BLOCKS`` key blocks long; 1 when the context is that short."""
    cfg = config or default_config(heads)
    programs = batch * _cdiv(heads, cfg.block_h)
    want = _cdiv(WAVES * sm_count, programs)
    cap = max(1, _cdiv(keys, cfg.block_n) // MIN_SPLIT_BLOCKS)
    return split_plan(keys, max(1, min(want, cap)), cfg.block_n)[1]


def attention_reference(q, cache, scale: float, kv_lora_rank: int = 512, chunk_bytes: float = 1e9):
    """softmax(q @ cache^T * scale) @ cache[..., :kv_lora_rank] in float32 (the harness's matmul form at full
    precision), a few sequences at a time so that the float32 copy of the cache stays under ``chunk_bytes``."""
    import torch

    B, S, D = cache.shape
    out = torch.empty(B, q.shape[1], kv_lora_rank, device=q.device, dtype=torch.float32)
    step = max(1, int(chunk_bytes // (S * D * 4)))
    for i in range(0, B, step):
        kv = cache[i:i + step].float()
        p = torch.softmax(torch.bmm(q[i:i + step].float(), kv.transpose(1, 2)) * scale, dim=-1)
        out[i:i + step] = torch.bmm(p, kv[..., :kv_lora_rank])
    return out


def split_reference(q, cache, scale: float, num_splits: int, block_n: int = 32, kv_lora_rank: int = 512):
    """The kernel's arithmetic in float32 torch: per split (``split_plan``) an online softmax in base 2 over
    blocks of ``block_n`` keys giving a normalized partial output and a log2-sum-exp, then the splits merged
    by 2^(lse - max lse). Equals ``attention_reference`` up to float32 rounding."""
    import torch

    qf, kv = q.float(), cache.float()
    S, R = kv.shape[1], kv_lora_rank
    per, splits = split_plan(S, num_splits, block_n)
    parts, lses = [], []
    for sp in range(splits):
        end = min(S, (sp + 1) * per)
        m = torch.full(qf.shape[:2], -math.inf, device=qf.device)
        l = torch.zeros(qf.shape[:2], device=qf.device)
        acc = torch.zeros(*qf.shape[:2], R, device=qf.device)
        for n0 in range(sp * per, end, block_n):
            blk = kv[:, n0:min(n0 + block_n, end)]
            s = torch.bmm(qf, blk.transpose(1, 2)) * (scale * LOG2E)
            m_new = torch.maximum(m, s.amax(-1))
            alpha = torch.exp2(m - m_new)
            p = torch.exp2(s - m_new[..., None])
            l = l * alpha + p.sum(-1)
            acc = acc * alpha[..., None] + torch.bmm(p, blk[..., :R])
            m = m_new
        parts.append(acc / l[..., None])
        lses.append(m + torch.log2(l))
    lse = torch.stack(lses, -1)  # [B, H, splits]
    w = torch.exp2(lse - lse.amax(-1, keepdim=True))
    return (torch.stack(parts, 2) * (w / w.sum(-1, keepdim=True))[..., None]).sum(2)


def require_triton():
    """The triton module, or a RuntimeError saying the kernel needs it."""
    try:
        import triton
    except ImportError as e:
        raise RuntimeError(f"perfcast: {TRITON_HINT} ({e})") from None
    return triton


@functools.cache
def _kernels():
    """(split kernel, combine kernel), defined on first use: triton is imported then, not with this module.
    (The CPU interpreter needs TRITON_INTERPRET=1 set before triton is first imported.)"""
    triton = require_triton()
    import triton.language as tl

    @triton.jit
    def _split_kernel(Q, KV, O, LSE, qk_scale, S, keys_per_split, H,
                      stride_qb, stride_qh, stride_kb, stride_ks, stride_ob, stride_oh, stride_os, stride_lb,
                      stride_lh, R: tl.constexpr, P: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
                      ONE_SPLIT: tl.constexpr):
        hb = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)  # offsets in int64: B x S x 576 passes 2^31 at B = 256, S = 16k
        sp = tl.program_id(2)
        heads = hb * BLOCK_H + tl.arange(0, BLOCK_H)
        hmask = heads < H
        dr = tl.arange(0, R)
        dp = tl.arange(0, P)
        q_rows = Q + b * stride_qb + heads[:, None] * stride_qh
        q_lat = tl.load(q_rows + dr[None, :], mask=hmask[:, None], other=0.0)  # [BLOCK_H, R]
        q_pe = tl.load(q_rows + R + dp[None, :], mask=hmask[:, None], other=0.0)  # [BLOCK_H, P]
        start = sp * keys_per_split
        end = tl.minimum(start + keys_per_split, S)
        m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_H], tl.float32)
        acc = tl.zeros([BLOCK_H, R], tl.float32)
        kv_seq = KV + b * stride_kb
        for n0 in range(start, end, BLOCK_N):
            keys = n0 + tl.arange(0, BLOCK_N)
            kmask = keys < end
            rows = kv_seq + keys[:, None] * stride_ks
            lat = tl.load(rows + dr[None, :], mask=kmask[:, None], other=0.0)  # [BLOCK_N, R]: key part and value
            pe = tl.load(rows + R + dp[None, :], mask=kmask[:, None], other=0.0)  # [BLOCK_N, P]: rope key
            s = tl.dot(q_pe, tl.trans(pe), tl.dot(q_lat, tl.trans(lat)))  # [BLOCK_H, BLOCK_N] fp32
            s = tl.where(kmask[None, :], s * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = tl.dot(p.to(lat.dtype), lat, acc * alpha[:, None])
            m_i = m_new
        out = O + b * stride_ob + heads[:, None] * stride_oh + sp * stride_os + dr[None, :]
        tl.store(out, (acc / l_i[:, None]).to(O.dtype.element_ty), mask=hmask[:, None])
        if not ONE_SPLIT:
            tl.store(LSE + b * stride_lb + heads * stride_lh + sp, m_i + tl.log2(l_i), mask=hmask)

    @triton.jit
    def _combine_kernel(PART, LSE, O, splits, stride_pb, stride_ph, stride_ps, stride_lb, stride_lh, stride_ob,
                        stride_oh, R: tl.constexpr):
        h = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        dr = tl.arange(0, R)
        part = PART + b * stride_pb + h * stride_ph + dr
        lse = LSE + b * stride_lb + h * stride_lh
        m = float("-inf")
        l = 0.0
        acc = tl.zeros([R], tl.float32)
        for sp in range(0, splits):
            x = tl.load(lse + sp)
            m_new = tl.maximum(m, x)
            alpha = tl.exp2(m - m_new)
            w = tl.exp2(x - m_new)
            acc = acc * alpha + w * tl.load(part + sp * stride_ps)
            l = l * alpha + w
            m = m_new
        tl.store(O + b * stride_ob + h * stride_oh + dr, (acc / l).to(O.dtype.element_ty))

    return _split_kernel, _combine_kernel


_SM_COUNT: dict = {}


def _sm_count(torch, device) -> int:
    """SMs of ``device`` (132, an H100's, for CPU tensors: the interpreter runs any grid)."""
    if device.type != "cuda":
        return 132
    if device not in _SM_COUNT:
        _SM_COUNT[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return _SM_COUNT[device]


def mla_decode(q, cache, scale: float, num_splits: int | None = None, config: MlaConfig | str | None = None,
               kv_lora_rank: int = 512):
    """MLA decode attention of ``q`` [B, H, R + P] over ``cache`` [B, S, R + P] (values: its first R =
    ``kv_lora_rank`` channels): o [B, H, R] in q's dtype. ``num_splits``: splits over keys (default
    ``pick_splits`` on the device's SMs); ``config``: an ``MlaConfig`` or its name (default
    ``default_config(H)``). Both last dims contiguous; R and P powers of two, at least 16."""
    import torch

    split_kernel, combine_kernel = _kernels()
    B, H, D = q.shape
    S, R = cache.shape[1], kv_lora_rank
    P = D - R
    if cache.shape[0] != B or cache.shape[2] != D:
        raise ValueError(f"cache {tuple(cache.shape)} does not match q {tuple(q.shape)}")
    if any(n < 16 or n & (n - 1) for n in (R, P)):
        raise ValueError(f"latent {R} and rope {P} channels must be powers of two >= 16")
    if q.stride(-1) != 1 or cache.stride(-1) != 1:
        raise ValueError("q and cache need contiguous last dims")
    cfg = CONFIG_BY_NAME[config] if isinstance(config, str) else config or default_config(H)
    if num_splits is None:
        num_splits = pick_splits(B, H, S, _sm_count(torch, q.device), cfg)
    per, splits = split_plan(S, num_splits, cfg.block_n)
    o = q.new_empty(B, H, R)
    one = splits == 1
    part = o.unsqueeze(2) if one else torch.empty(B, H, splits, R, device=q.device, dtype=torch.float32)
    lse = part if one else torch.empty(B, H, splits, device=q.device, dtype=torch.float32)
    split_kernel[(_cdiv(H, cfg.block_h), B, splits)](
        q, cache, part, lse, scale * LOG2E, S, per, H, q.stride(0), q.stride(1), cache.stride(0), cache.stride(1),
        part.stride(0), part.stride(1), part.stride(2), lse.stride(0), lse.stride(1),
        R=R, P=P, BLOCK_H=cfg.block_h, BLOCK_N=cfg.block_n, ONE_SPLIT=one,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if not one:
        combine_kernel[(H, B)](part, lse, o, splits, part.stride(0), part.stride(1), part.stride(2), lse.stride(0),
                               lse.stride(1), o.stride(0), o.stride(1), R=R, num_warps=4)
    return o
