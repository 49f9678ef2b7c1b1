"""Analytical kernel times: roofline with wave/tile quantization and a per-kernel latency floor.

This is the physics layer. Measured profiles refine it (``perfcast.profiles``); for a GPU with no
profile, the efficiencies below are replaced by those learned on measured GPUs of the same
generation. Every time is >= the ideal roofline of the datasheet (efficiencies are <= 1).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np

from perfcast.hardware.spec import GPUSpec
from perfcast.ops import roofline as rl
from perfcast.ops.base import ANALYTICAL, COMPUTE, LATENCY, MEMORY, NETWORK, OpCost


@dataclass(frozen=True)
class Efficiency:
    """Fractions of datasheet peaks that kernels reach, and fixed latencies (seconds).

    Defaults are priors for a GPU nobody measured; ``perfcast.profiles.learn`` fits them on
    measured profiles. All fractions are in (0, 1].
    """

    gemm_compute: float = 0.80  # best large-GEMM fraction of dense peak
    gemm_memory: float = 0.80  # weight-streaming GEMV fraction of HBM bandwidth
    gemm_floor_s: float = 5.0e-6  # smallest GEMM kernel time
    attn_compute: float = 0.45  # flash attention prefill fraction of dense peak
    attn_memory: float = 0.60  # decode attention fraction of HBM bandwidth
    attn_floor_s: float = 8.0e-6
    elem_memory: float = 0.80  # large elementwise kernels
    elem_floor_s: float = 3.0e-6
    coll_link: float = 0.80  # NCCL bus bandwidth fraction of the one-direction link rate
    coll_latency_s: float = 12.0e-6  # small-message collective latency
    p2p_latency_s: float = 10.0e-6
    source: str = "prior"

    def scaled(self, **kw) -> Efficiency:
        return replace(self, **kw)


PRIOR = Efficiency()

# candidate output tiles (rows, cols) and their per-SM efficiency relative to the largest tile
_TILES = ((128, 256, 1.00), (128, 128, 0.93), (64, 128, 0.82), (64, 64, 0.65))
_SPLITS = (1, 2, 4, 8, 16)


@functools.lru_cache(maxsize=1024)
def _candidates(k: int):
    """(tile rows, tile cols, tile efficiency, split-K) of the kernels cuBLAS may pick, as (read-only) arrays."""
    rows = [(tm, tn, te, sp) for tm, tn, te in _TILES for sp in _SPLITS if sp == 1 or k / sp >= 256]
    out = tuple(np.array(c, dtype=float) for c in zip(*rows))
    for a in out:
        a.flags.writeable = False
    return out


def gemm_compute_time(gpu: GPUSpec, m, n: int, k: int, dtype: str, eff: Efficiency, groups: int = 1):
    """Tensor-core time with wave quantization: the best of a few tile shapes and split-K factors.

    ``groups``: a batched GEMM (one kernel over ``groups`` independent (m, n, k) problems, as torch.bmm
    runs): its output tiles are those of one problem times ``groups``, all scheduled in the same waves."""
    m = np.asarray(m, dtype=float)
    per_sm = gpu.flops(dtype) * eff.gemm_compute / gpu.sm_count
    cand = _candidates(int(k))
    one = _unsplit(int(k))
    if m.size < 256 or one.size == cand[0].size:
        return _best_tiling(m, n, k, gpu.sm_count, per_sm, cand, groups)
    # Split-K only pays when a tile shape leaves the GPU's last wave short. With q = tiles / SMs, split
    # sp of a tile takes 1.05 ceil(q sp) / (sp ceil(q)) > 1.05 q / (q + 1) of its unsplit time: more once
    # q >= 21 (by 0.2%, far above rounding). Where every tile shape has q >= 21 the best unsplit time is
    # the best time (the very same number: the minimum of a subset that holds the minimum); elsewhere
    # every candidate is tried.
    unsplit = tuple(c[one] for c in cand)
    tiles = np.ceil(m / unsplit[0].reshape((-1,) + (1,) * m.ndim)) * np.ceil(n / unsplit[1]).reshape(
        (-1,) + (1,) * m.ndim)
    if groups != 1:
        tiles = tiles * groups
    short = (tiles < 21 * gpu.sm_count).any(axis=0)
    if not short.any():
        return _best_tiling(m, n, k, gpu.sm_count, per_sm, unsplit, groups)
    if short.all():
        return _best_tiling(m, n, k, gpu.sm_count, per_sm, cand, groups)
    best = np.empty(m.shape)
    best[short] = _best_tiling(m[short], n, k, gpu.sm_count, per_sm, cand, groups)
    long = ~short
    best[long] = _best_tiling(m[long], n, k, gpu.sm_count, per_sm, unsplit, groups)
    return best


def _best_tiling(m, n, k, sm_count, per_sm, cand, groups: int = 1):
    """The fastest of the candidate kernels at each point (candidates along a leading axis, so that the
    minimum is taken elementwise, candidate after candidate); ``groups`` problems in one batched kernel."""
    tm, tn, te, sp = (c.reshape((-1,) + (1,) * m.ndim) for c in cand)
    tiles = np.ceil(m / tm) * np.ceil(n / tn)
    if groups != 1:
        tiles = tiles * groups
    waves = np.ceil(tiles * sp / sm_count)
    t = waves * (2.0 * tm * tn * (k / sp)) / (per_sm * te) * np.where(sp > 1, 1.05, 1.0)  # split-K reduction
    return t.min(axis=0)


@functools.lru_cache(maxsize=1024)
def _unsplit(k: int) -> np.ndarray:
    """Indices of the unsplit (split-K 1) kernels among ``_candidates(k)``."""
    return np.flatnonzero(_candidates(k)[3] == 1)


def gemm_cost(gpu: GPUSpec, m, n: int, k: int, dtype: str = "bf16", wdtype: str | None = None,
              eff: Efficiency = PRIOR, groups: int = 1) -> OpCost:
    """One GEMM kernel. ``groups`` > 1: one batched kernel (torch.bmm, cuBLAS strided-batched) over that many
    independent (m, n, k) problems, each with its own activations and weights: ``groups`` times the FLOPs
    and bytes, the tiles of all problems scheduled together, and the kernel's floor paid once."""
    flops = rl.gemm_flops(m, n, k)
    nbytes = rl.gemm_bytes(m, n, k, dtype, wdtype)
    if groups != 1:
        flops, nbytes = flops * groups, nbytes * groups
    tc = gemm_compute_time(gpu, m, n, k, dtype if dtype not in ("int4", "int8") or wdtype else dtype, eff, groups)
    tm = nbytes / (gpu.mem_bw_bytes_per_s * eff.gemm_memory)
    t = np.maximum(tc, tm)
    bound = np.where(tc >= tm, COMPUTE, MEMORY)
    floor = eff.gemm_floor_s
    bound = np.where(t < floor, LATENCY, bound)
    return OpCost.of(np.maximum(t, floor), bound, ANALYTICAL, flops, nbytes)


def attention_cost(gpu: GPUSpec, batch, heads: int, kv_heads: int, head_dim: int, q_len, kv_len,
                   causal: bool, window: int | None = None, dtype: str = "bf16",
                   kv_dtype: str | None = None, v_head_dim: int | None = None,
                   eff: Efficiency = PRIOR, kv_shared: bool = False) -> OpCost:
    """One fused attention kernel. ``kv_shared``: V is a view of K (MLA's absorbed decode over the latent
    cache): the cache is read once, and the kernel splits each sequence's keys over CTAs."""
    flops = rl.attention_flops(batch, heads, head_dim, q_len, kv_len, causal, window, v_head_dim)
    nbytes = rl.attention_bytes(batch, heads, kv_heads, head_dim, q_len, kv_len, dtype, kv_dtype,
                                window, v_head_dim, kv_shared)
    tc = attention_compute_seconds(gpu, flops, batch, heads, q_len, kv_len, dtype, eff, kv_shared)
    tm = nbytes / (gpu.mem_bw_bytes_per_s * eff.attn_memory)
    t = np.maximum(tc, tm)
    bound = np.where(tc >= tm, COMPUTE, MEMORY)
    bound = np.where(t < eff.attn_floor_s, LATENCY, bound)
    return OpCost.of(np.maximum(t, eff.attn_floor_s), bound, ANALYTICAL, flops, nbytes)


def attention_compute_seconds(gpu: GPUSpec, flops, batch, heads: int, q_len, kv_len, dtype: str = "bf16",
                              eff: Efficiency = PRIOR, split_kv: bool = False):
    """Tensor-core time of an attention kernel's ``flops`` at the attention efficiency, over its occupancy.

    Flash kernels run one CTA per (sequence, head, 128-query block). ``split_kv``: a decode kernel over a
    shared latent (FlashMLA, FlashInfer's MLA decode) holds every query head of a sequence in one CTA's rows
    and splits the sequence's keys over CTAs: up to one CTA per key block (FLASH_BLOCK_N keys)."""
    if split_kv:
        ctas = np.asarray(batch, dtype=float) * np.ceil(np.asarray(kv_len, dtype=float) / FLASH_BLOCK_N)
    else:
        q = np.asarray(q_len, dtype=float)
        ctas = np.asarray(batch, dtype=float) * heads * np.ceil(q / 128.0)
    occ = np.minimum(1.0, ctas / gpu.sm_count)
    peak = gpu.flops(dtype if dtype in ("bf16", "fp16", "fp8") else "bf16")
    return flops / (peak * eff.attn_compute * np.maximum(occ, 1.0 / gpu.sm_count))


# flash-attention forward tiling (FlashAttention-2 on sm80/sm90): one CTA per (sequence, head, 128-query tile),
# keys streamed in blocks of 64; every CTA also pays a fixed prologue/epilogue (load Q, rescale and write O)
# worth about two key blocks
FLASH_BLOCK_M = 128
FLASH_BLOCK_N = 64
FLASH_CTA_OVERHEAD_BLOCKS = 2.0
_FLASH_EXACT_WAVES = 8  # the greedy schedule is simulated exactly up to this many waves of CTAs


def _flash_tile_blocks(i, q, kv, causal: bool, window):
    """Key blocks query tile ``i`` reads: causal (bottom-right aligned) tiles read the keys up to their last
    query, a sliding window at most window + one tile of keys."""
    end = np.minimum((i + 1) * FLASH_BLOCK_M, q)
    keys = np.clip(kv - q + end, 0, kv) if causal else kv + 0 * end
    if window is not None:
        keys = np.minimum(keys, window + FLASH_BLOCK_M)
    return np.ceil(keys / FLASH_BLOCK_N)


def _flash_makespan_one(seqs: int, q: int, kv: int, causal: bool, window, sms: int) -> float:
    nq = -(-q // FLASH_BLOCK_M)
    tiles = _flash_tile_blocks(np.arange(nq), q, kv, causal, window) + FLASH_CTA_OVERHEAD_BLOCKS
    return _flash_schedule(seqs, tuple(tiles.tolist()), sms)


@functools.lru_cache(maxsize=65536)
def _flash_schedule(seqs: int, tiles: tuple, sms: int) -> float:
    """Busiest SM of ``seqs`` sequences of CTAs (``tiles``: each one's work, in launch order)."""
    n = seqs * len(tiles)
    tmax = max(tiles)
    if n <= sms:  # one partial wave: the longest CTA
        return float(tmax)
    if n <= _FLASH_EXACT_WAVES * sms:
        return _greedy_makespan(seqs, tiles, sms)
    return float(_many_waves(seqs * float(sum(tiles)), n, tmax, sms))


def _many_waves(work, n, tmax, sms: int):
    """Busiest SM of ``n`` CTAs (``work`` key blocks in all, the longest ``tmax``) over many waves: the work
    spread evenly, plus the last partial wave (quantization) and the imbalance the longest CTA leaves."""
    waves = n / sms
    avg = work / n
    return np.maximum(tmax, work / sms + (tmax - avg) / waves + avg * (np.ceil(waves) - waves))


# (tile blocks, SMs) -> the greedy schedule of that tile pattern so far: [SM free times (a heap), busiest SM
# after 0, 1, 2, ... sequences]
_GREEDY_RUNS: dict[tuple, list] = {}


def _greedy_makespan(seqs: int, tiles: tuple, sms: int) -> float:
    """The block scheduler hands CTAs out in launch order (query tile fastest) to the SM that frees first:
    the busiest SM after ``seqs`` sequences. The schedule is online (no CTA's SM depends on later CTAs), so
    one run per tile pattern serves every sequence count: it is kept, and extended when more are asked for."""
    import heapq

    run = _GREEDY_RUNS.get((tiles, sms))
    if run is None:
        if len(_GREEDY_RUNS) >= 4096:
            _GREEDY_RUNS.clear()
        # the sequences that fit on idle SMs each start at 0 (CTA work is never negative)
        first = sms // len(tiles)
        free = [float(t) for t in tiles] * first + [0.0] * (sms - first * len(tiles))
        heapq.heapify(free)
        run = _GREEDY_RUNS[(tiles, sms)] = [free, [0.0] + [float(max(tiles))] * first]
    free, done = run
    if seqs >= len(done):
        tiles = tuple(map(float, tiles))
        push = heapq.heapreplace
        top = done[-1]
        for _ in range(len(done), seqs + 1):
            for t in tiles:
                end = free[0] + t
                push(free, end)
                if end > top:
                    top = end
            done.append(top)
    return float(done[seqs])


def flash_makespan(gpu: GPUSpec, batch, heads: int, q_len, kv_len, causal: bool, window: int | None = None):
    """Key blocks (of FLASH_BLOCK_M x FLASH_BLOCK_N) the busiest SM works through in a flash-attention
    forward: per-tile causal work, per-CTA overhead and wave quantization over the GPU's SMs."""
    b, q, kv = np.broadcast_arrays(np.asarray(batch, dtype=float), np.maximum(np.asarray(q_len, dtype=float), 1),
                                   np.asarray(kv_len, dtype=float))
    sms = int(gpu.sm_count)
    c0 = FLASH_CTA_OVERHEAD_BLOCKS
    seqs = b * heads
    nq = np.ceil(q / FLASH_BLOCK_M)
    n = seqs * nq
    last = np.ceil(kv / FLASH_BLOCK_N) + c0  # the last query tile reads every key
    if not causal:  # equal CTAs: whole waves of them
        per = (_flash_tile_blocks(0, q, kv, False, window) + c0) if window is not None else last
        return np.ceil(n / sms) * per
    # causal, keys >= queries: tile i < nq - 1 reads (i + 1) M / N blocks past the offset, the last all keys
    per_m = FLASH_BLOCK_M // FLASH_BLOCK_N
    off = np.ceil(np.maximum(kv - q, 0) / FLASH_BLOCK_N)
    tile_sum = per_m * (nq - 1) * nq / 2 + (nq - 1) * off + (nq - 1) * c0 + last
    out = np.where(n <= sms, last, _many_waves(seqs * tile_sum, n, last, sms))
    # a few waves (the greedy schedule simulated), sliding windows and more queries than keys (tile by tile)
    slow = ((n > sms) & (n <= _FLASH_EXACT_WAVES * sms)) | (kv < q)
    if window is not None:
        slow = np.ones(out.shape, dtype=bool)
    if slow.any():
        w = None if window is None else int(window)
        out = np.array(out, dtype=float)
        # the schedule depends on q and kv through the tiles' blocks only: no window and keys >= queries, the
        # tiles follow from (tiles, offset, last); otherwise tile by tile (_flash_makespan_one, vectorized)
        plain = slow & (kv >= q) if w is None else np.zeros(out.shape, dtype=bool)
        for idx in np.argwhere(plain):
            idx = tuple(idx)
            k, o = int(nq[idx]), float(off[idx])  # (Python floats: the schedule adds them up one by one)
            tiles = tuple(per_m * (i + 1) + o + c0 for i in range(k - 1)) + (float(last[idx]),)
            out[idx] = _flash_schedule(int(seqs[idx]), tiles, sms)
        tiled = slow & ~plain
        if tiled.any():  # (int() as _flash_makespan_one is called with: truncated)
            out[tiled] = _flash_makespan_tiled(np.trunc(seqs[tiled]), np.trunc(q[tiled]), np.trunc(kv[tiled]), w,
                                               sms)
    return out


def _flash_makespan_tiled(seqs, q, kv, window, sms: int):
    """``_flash_makespan_one`` (causal) over 1-d arrays of whole numbers: every point's tiles at once (rows of
    query tiles, in chunks), the closed forms of ``_flash_schedule`` elementwise, and its exact schedule for
    the points of a few waves only. The same numbers: tile blocks are whole numbers, so their sums and
    maxima are exact in any order."""
    nq = np.ceil(q / FLASH_BLOCK_M)
    n = seqs * nq
    few = (n > sms) & (n <= _FLASH_EXACT_WAVES * sms)  # a few waves: the schedule itself
    tsum = np.empty(q.shape)
    tmax = np.empty(q.shape)
    sched = np.empty(q.shape)
    width = int(nq.max())
    step = max(1, (1 << 20) // width)
    i = np.arange(width)[None, :]
    for s in range(0, q.size, step):
        sl = slice(s, s + step)
        # past a point's last tile, end = q: the padding repeats its last tile (harmless to the maximum)
        tiles = _flash_tile_blocks(i, q[sl, None], kv[sl, None], True, window) + FLASH_CTA_OVERHEAD_BLOCKS
        tmax[sl] = tiles.max(axis=1)
        tsum[sl] = np.where(i < nq[sl, None], tiles, 0.0).sum(axis=1)
        for j in np.flatnonzero(few[sl]):
            sched[s + j] = _flash_schedule(int(seqs[s + j]), tuple(tiles[j, :int(nq[s + j])].tolist()), sms)
    # _flash_schedule's closed forms (no sequence at all: n = 0, one partial wave)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(n <= sms, tmax, _many_waves(seqs * tsum, n, tmax, sms))
    return np.where(few, sched, out)


def flash_block_seconds(gpu: GPUSpec, head_dim: int, dtype: str = "bf16", v_head_dim: int | None = None):
    """One SM's time for one key block of one query tile (QK^T and PV) at the datasheet peak."""
    vd = head_dim if v_head_dim is None else v_head_dim
    peak = gpu.flops(dtype if dtype in ("bf16", "fp16", "fp8") else "bf16")
    return 2.0 * FLASH_BLOCK_M * FLASH_BLOCK_N * (head_dim + vd) / (peak / gpu.sm_count)


def elementwise_cost(gpu: GPUSpec, op: str, tokens, width: int, dtype: str = "bf16",
                     eff: Efficiency = PRIOR) -> OpCost:
    nbytes = rl.elementwise_bytes(op, tokens, width, dtype)
    flops = rl.elementwise_flops(op, tokens, width)
    tm = nbytes / (gpu.mem_bw_bytes_per_s * eff.elem_memory)
    bound = np.where(tm < eff.elem_floor_s, LATENCY, MEMORY)
    return OpCost.of(np.maximum(tm, eff.elem_floor_s), bound, ANALYTICAL, flops, nbytes)


def collective_link_bw(gpu: GPUSpec, gpus: int) -> float:
    """One-direction bytes/s each GPU can push: NVLink when the GPU has it, else PCIe."""
    if gpu.nvlink_bw_bytes_per_s > 0:
        return gpu.nvlink_uni_bytes_per_s
    return gpu.pcie_bw_bytes_per_s


def collective_cost(gpu: GPUSpec, coll: str, nbytes, gpus: int, eff: Efficiency = PRIOR) -> OpCost:
    """Latency-bandwidth (alpha-beta) model of a ring collective among ``gpus`` GPUs of one host."""
    b = np.asarray(nbytes, dtype=float)
    if gpus <= 1:
        return OpCost.of(np.zeros_like(b), NETWORK, ANALYTICAL, 0.0, 0.0)
    wire = rl.collective_wire_bytes(coll, b, gpus)
    steps = {"all_reduce": 2 * (gpus - 1), "send_recv": 1}.get(coll, gpus - 1)
    lat = eff.coll_latency_s + (steps - 1) * 1.0e-6
    if coll == "send_recv":
        lat = eff.p2p_latency_s
    t_bw = wire / (collective_link_bw(gpu, gpus) * eff.coll_link)
    t = lat + t_bw
    bound = np.where(t_bw > lat, NETWORK, LATENCY)
    return OpCost.of(t, bound, ANALYTICAL, 0.0, wire)
