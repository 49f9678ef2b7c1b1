"""Host CPU cost model for offload plans: effective ceilings and per-op times (seconds, vectorized).

A :class:`CPUModel` holds the ceilings one CPU reaches at one thread count: GEMM FLOP/s and
weight-streaming (GEMV) bandwidth per dtype class, STREAM bandwidth, the fixed cost of one eager
torch op, and the host-device link (pinned and pageable, each direction). It comes either from the
catalog (datasheet x :class:`CPUEfficiency`) or from a profile measured by ``perfcast calibrate-cpu``
(``cpu_profile.py``). Every op time is a roofline on those ceilings, times a measured GEMM shape
ratio where a profile has one, plus ``host_ops`` x the per-op overhead (a CPU runs eager PyTorch
synchronously: dispatch and compute do not overlap).

A serial offload plan also pays a *hand-off* each time work returns to the GPU after the CPU streamed
a block's weights (:meth:`CPUModel.handoff`): the GPU segment's eager dispatch (Python, PyTorch, the
CUDA driver) runs with caches the weight stream just evicted, and the CPU's worker threads resume
after idling through the GPU segment. The per-op overhead and the GPU host model are both measured
warm (ops back to back), so neither contains it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from perfcast.hardware.spec import CPUSpec, GPUSpec
from perfcast.ops import roofline as rl
from perfcast.ops.base import COMPUTE, LATENCY, MEMORY, NETWORK, Op


@dataclass(frozen=True)
class CPUEfficiency:
    """Fractions of datasheet peaks a CPU reaches in PyTorch, and fixed costs (priors, not measured here).

    Sources of the priors: STREAM reaches ~70-85% of theoretical DRAM bandwidth on servers; a GEMV
    streaming weights from DRAM reaches ~60-80% of STREAM; oneDNN large GEMMs reach ~60-75% of the
    AVX-512 fp32 peak and ~40-60% of the AVX512-BF16 peak, but only ~10-15% of the AMX peak (measured
    on a 16-core Sapphire Rapids slice: 4.8 TFLOP/s at m = 256). Without native bf16, PyTorch converts
    (measured on an AVX2 Zen 3 host: bf16 GEMM ~1/8 of the fp32 peak, bf16 GEMV as fast as fp32).
    """

    stream: float = 0.80  # STREAM (copy/triad) fraction of the theoretical DRAM bandwidth
    gemv: float = 0.70  # weight-streaming GEMV fraction of STREAM
    gemm_fp32: float = 0.65  # large fp32 GEMM fraction of the fp32 peak
    gemm_bf16: float = 0.50  # large bf16 GEMM fraction of the AVX512-BF16 peak
    gemm_amx: float = 0.12  # large bf16 GEMM fraction of the AMX peak (measured: ~4.8 TFLOP/s, 16 SPR cores)
    bf16_emulated: float = 0.12  # bf16 GEMM rate / fp32 peak when the CPU has no native bf16
    attn_compute: float = 0.50  # CPU SDPA (prefill) fraction of the GEMM rate
    attn_memory: float = 0.70  # CPU SDPA (decode) fraction of the GEMV bandwidth
    # CPU flash SDPA with one query per sequence costs far more than its KV read: ~0.13 ms on 2 Zen 3
    # cores, ~0.9 ms on 16 Sapphire Rapids cores (bf16, batch 1 and 4 alike, ~0.08 ns more per element
    # of batch x heads x kv_len x head_dim). Prior: 50 us per thread per call, not extrapolated past 16.
    attn_decode_call_s_per_thread: float = 50e-6
    attn_decode_max_threads: int = 16
    attn_decode_s_per_elem: float = 0.05e-9
    per_core_stream_bytes_per_s: float = 12e9  # what one core pulls from DRAM (caps few-thread runs)
    op_overhead_s: float = 8e-6  # one eager torch op on the CPU: dispatch + OpenMP fork/join
    pcie: float = 0.80  # pinned copy fraction of the one-direction PCIe rate
    pageable: float = 0.50  # pageable / pinned copy rate (the driver stages through a bounce buffer)
    transfer_latency_s: float = 15e-6  # one small blocking copy, synchronize included
    # Hand-off (per return to the GPU after a CPU block of a serial plan): an attention block's eager
    # dispatch (34 calls) right after the CPU streamed >= 64 MiB of weights costs this much more than
    # warm; less after a smaller stream (log ramp from 0 at 8 MiB, which a server's L3 holds). Measured by
    # `calibrate-cpu` on an H100 host's 16-core Xeon (benchmarks/data/offload_h100-sxm_r2_cpu/, the chain
    # dispatching CUDA ops at 16 threads: 0.50 ms warm; +0.14 / +0.19 ms after 64 / 256 MiB; resume within
    # noise). On the 2-core Zen 3 dev VM (cpu_profile_local_handoff/, CPU chain, 1 thread) it is larger:
    # 0.44 ms warm; +0.12 / +0.50 / +0.58 / +0.50 ms after 16 / 64 / 256 / 1024 MiB.
    handoff_s: float = 0.14e-3
    handoff_full_bytes: float = float(64 << 20)
    handoff_min_bytes: float = float(8 << 20)
    handoff_resume_s: float = 0.0  # the CPU threads' resume after the GPU segment (same VM: within noise)
    source: str = "prior"


PRIOR = CPUEfficiency()
DIRECTIONS = ("h2d", "d2h")


def dtype_class(dtype: str) -> str:
    """CPU kernels come in two speeds: fp32, and 16-bit (bf16/fp16; weight-only int8/int4 dequantize to it)."""
    return "fp32" if dtype in ("fp32", "tf32") else "bf16"


@dataclass(frozen=True)
class Link:
    """One direction of the host-device link for one memory kind: ``latency_s + bytes / bytes_per_s``."""

    latency_s: float
    bytes_per_s: float

    def seconds(self, nbytes):
        b = np.asarray(nbytes, dtype=float)
        return np.where(b > 0, self.latency_s + b / self.bytes_per_s, 0.0)


@dataclass(frozen=True)
class CPUModel:
    """Effective ceilings of one host CPU at ``threads`` threads (SI units)."""

    id: str
    name: str
    threads: int
    cores: int
    mem_capacity_bytes: float
    stream_bw: float  # bytes/s, copy/triad
    gemv_bw: dict  # dtype class -> bytes/s a weight-streaming GEMV reaches
    gemm_flops: dict  # dtype class -> FLOP/s a large GEMM reaches
    op_overhead_s: float
    links: dict  # (direction, "pinned" | "pageable") -> Link
    eff: CPUEfficiency = PRIOR
    ratio: dict = field(default_factory=dict)  # dtype class -> (log m, log(measured / roofline))
    # dtype class -> (m_cold, m_hot): the profile's GEMM rows up to m_cold streamed their weights from DRAM,
    # those from m_hot on reused one cache-resident weight (see :meth:`cold_weights`); empty: none hot
    gemm_hot: dict = field(default_factory=dict)
    attn_decode: dict = field(default_factory=dict)  # dtype class -> (seconds per call, per element)
    attn_flops: dict = field(default_factory=dict)  # dtype class -> FLOP/s of causal prefill SDPA
    # measured hand-off: (device whose chain was timed, streamed bytes, cold-dispatch extra seconds at
    # each, the threads' resume seconds)
    handoff_pts: tuple | None = None
    source: str = "catalog"  # "catalog:<id>" or "measured:<dir>"

    @property
    def measured(self) -> bool:
        return self.source.startswith("measured")

    # ------------------------------------------------------------------ kernels
    def gemm(self, m, n, k, dtype="bf16", wdtype=None):
        """(seconds, bound) of ``y[m,n] = x[m,k] @ w[n,k]^T`` without the dispatch overhead."""
        dc = dtype_class(dtype)
        flops = rl.gemm_flops(m, n, k)
        nbytes = rl.gemm_bytes(m, n, k, "fp32" if dc == "fp32" else "bf16", wdtype)
        tc = flops / self.gemm_flops[dc]
        tm = nbytes / self.gemv_bw[dc]
        t = np.maximum(tc, tm)
        if dc in self.ratio:
            lm, lr = self.ratio[dc]
            t = t * np.exp(np.interp(np.log(np.maximum(np.asarray(m, dtype=float), 1.0)), lm, lr))
        t = t + self.cold_weights(m, n, k, dc, wdtype)
        return t, np.where(tc >= tm, COMPUTE, MEMORY)

    def cold_weights(self, m, n, k, dtype_cls: str = "bf16", wdtype=None):
        """Seconds a model step's GEMM pays beyond a profile row measured on a cache-resident weight: one
        read of the ``[n, k]`` weight from DRAM at the STREAM rate. A model step streams every weight
        from DRAM, and a CPU GEMM with m > 1 (oneDNN, as PyTorch calls it eagerly) first reorders the
        weight into its blocked layout, a copy pass that does not overlap the compute; in the profile's
        rows with m > 16 that pass read one weight the L3 cache held. Ramps in log m from 0 at the last
        DRAM-streamed row to 1 at the first cache-resident one; 0 where no row was cache-resident."""
        if dtype_cls not in self.gemm_hot:
            return np.zeros(np.shape(np.asarray(m, dtype=float) * n * k))
        lo, hi = self.gemm_hot[dtype_cls]
        lm = np.log(np.maximum(np.asarray(m, dtype=float), 1.0))
        ramp = np.clip((lm - np.log(lo)) / max(np.log(hi) - np.log(lo), 1e-9), 0.0, 1.0)
        w = rl.gemm_bytes(0, n, k, "fp32" if dtype_cls == "fp32" else "bf16", wdtype)
        return ramp * w / self.stream_bw

    def attention(self, batch, heads, kv_heads, head_dim, q_len, kv_len, causal, window=None,
                  dtype="bf16", kv_dtype=None, v_head_dim=None, kv_shared=False):
        dc = dtype_class(dtype)
        flops = rl.attention_flops(batch, heads, head_dim, q_len, kv_len, causal, window, v_head_dim)
        nbytes = rl.attention_bytes(batch, heads, kv_heads, head_dim, q_len, kv_len,
                                    "fp32" if dc == "fp32" else "bf16", kv_dtype, window, v_head_dim, kv_shared)
        rate = self.attn_flops.get(dc) or self.gemm_flops[dc] * self.eff.attn_compute
        tc = flops / rate
        tm = nbytes / (self.gemv_bw[dc] * self.eff.attn_memory)
        # one query per sequence (decode): the kernel's own per-element walk, when slower
        a, b = self.attn_decode.get(dc) or (
            self.eff.attn_decode_call_s_per_thread * min(self.threads, self.eff.attn_decode_max_threads),
            self.eff.attn_decode_s_per_elem)
        kv = np.asarray(kv_len, dtype=float) if window is None else np.minimum(kv_len, window)
        walk = a + b * np.asarray(batch, dtype=float) * heads * kv * head_dim
        tc = np.where(np.asarray(q_len) == 1, np.maximum(tc, walk), tc)
        return np.maximum(tc, tm), np.where(tc >= tm, COMPUTE, MEMORY)

    def elementwise(self, op, tokens, width, dtype="bf16"):
        dt = "fp32" if dtype_class(dtype) == "fp32" else "bf16"
        t = rl.elementwise_bytes(op, tokens, width, dt) / self.stream_bw
        return t, np.full(np.shape(t), MEMORY)

    def op_seconds(self, op: Op):
        """(seconds per launch including dispatch, bound) of a step op run on this CPU."""
        d = op.dims
        if op.kind == "gemm":
            t, b = self.gemm(d["m"], d["n"], d["k"], op.dtype, op.wdtype)
        elif op.kind == "attention":
            t, b = self.attention(d["batch"], d["heads"], d["kv_heads"], d["head_dim"], d["q_len"],
                                  d["kv_len"], bool(d["causal"]), d.get("window"), op.dtype,
                                  op.meta.get("kv_dtype"), d.get("v_head_dim"), bool(d.get("kv_shared", False)))
        elif op.kind == "elementwise":
            t, b = self.elementwise(d["op"], d["tokens"], d["width"], op.dtype)
        elif op.kind in ("collective", "p2p"):
            return np.zeros(()), np.asarray(NETWORK)  # tp = pp = 1 under offload: nothing to send
        else:
            raise ValueError(f"the CPU model has no cost for op kind {op.kind!r}")
        t = np.asarray(t, dtype=float) * np.asarray(op.meta.get("repeat", 1.0), dtype=float)
        # several launches per layer (MoE experts), or one batched kernel (MLA's per-head bmm): either way the
        # groups' throughput times add up on a CPU (self.gemm has no per-launch floor; dispatch is host_ops)
        if op.kind == "gemm" and d.get("groups") is not None:
            t = t * np.asarray(d["groups"], dtype=float)
        over = op.host_ops * self.op_overhead_s  # host_ops already counts repeated launches
        return t + over, np.where(t < over, LATENCY, b)

    # ------------------------------------------------------------------ device hand-off
    def handoff(self, streamed_bytes, eager: bool = True):
        """Extra seconds of one return to the GPU after the CPU streamed ``streamed_bytes`` of weights,
        beyond the warm costs of the ops and the copies: the GPU segment's eager dispatch with cold caches
        (``eager`` only: a CUDA-graph launch dispatches far less host code, not measured) plus the CPU
        threads' resume. Measured (a profile's ``chain``/``resume`` rows; the dispatch part interpolated
        in log bytes from 0 at 8 MiB, flat past the largest measured sweep) or the prior's log ramp."""
        b = np.maximum(np.asarray(streamed_bytes, dtype=float), 1.0)
        lo = self.eff.handoff_min_bytes
        if self.handoff_pts is not None:
            _, nbytes, cold, resume = self.handoff_pts
            xs = np.concatenate(([np.log2(lo)], np.log2(np.asarray(nbytes, dtype=float))))
            ys = np.concatenate(([0.0], np.asarray(cold, dtype=float)))
            return (np.interp(np.log2(b), xs, ys, left=0.0) if eager else 0.0) + resume
        ramp = np.clip(np.log2(b / lo) / np.log2(self.eff.handoff_full_bytes / lo), 0.0, 1.0)
        return (self.eff.handoff_s * ramp if eager else 0.0 * ramp) + self.eff.handoff_resume_s

    # ------------------------------------------------------------------ host-device link
    def link(self, direction: str, pinned: bool = False) -> Link:
        return self.links[(direction, "pinned" if pinned else "pageable")]

    def transfer(self, nbytes, direction: str, pinned: bool = False):
        """Seconds of one blocking copy of ``nbytes`` (``direction`` 'h2d' or 'd2h')."""
        return self.link(direction, pinned).seconds(nbytes)


def prior_links(cpu_pcie: float, gpu: GPUSpec | None, eff: CPUEfficiency) -> dict:
    """Links from datasheets: the slower of the CPU's and the GPU's PCIe rates times efficiencies."""
    bw = min(cpu_pcie, gpu.pcie_bw_bytes_per_s) if gpu is not None else cpu_pcie
    pinned = Link(eff.transfer_latency_s, bw * eff.pcie)
    pageable = Link(eff.transfer_latency_s, bw * eff.pcie * eff.pageable)
    return {(d, k): (pinned if k == "pinned" else pageable) for d in DIRECTIONS for k in ("pinned", "pageable")}


def from_catalog(spec: CPUSpec, threads: int | None = None, gpu: GPUSpec | None = None,
                 eff: CPUEfficiency = PRIOR) -> CPUModel:
    """A CPU model from datasheet facts and prior efficiencies."""
    cores = spec.cores * spec.sockets
    t = cores if threads is None else int(threads)
    if t < 1:
        raise ValueError(f"cpu_threads must be a positive integer, got {threads!r}")
    t = min(t, cores)
    stream = min(spec.mem_bw_bytes_per_s * eff.stream, t * eff.per_core_stream_bytes_per_s)
    fp32 = spec.peak_flops("fp32", t) * eff.gemm_fp32
    if spec.bf16_flops_per_cycle_per_core >= 512:  # AMX tiles: PyTorch reaches a small part of the peak
        bf16 = spec.peak_flops("bf16", t) * eff.gemm_amx
    elif spec.bf16_flops_per_cycle_per_core > 0:
        bf16 = spec.peak_flops("bf16", t) * eff.gemm_bf16
    else:
        bf16 = spec.peak_flops("fp32", t) * eff.bf16_emulated
    gemv = stream * eff.gemv
    return CPUModel(
        id=spec.id, name=spec.name, threads=t, cores=cores,
        mem_capacity_bytes=spec.mem_capacity_bytes * spec.sockets,
        stream_bw=stream, gemv_bw={"fp32": gemv, "bf16": gemv}, gemm_flops={"fp32": fp32, "bf16": bf16},
        op_overhead_s=eff.op_overhead_s, links=prior_links(spec.pcie_bw_bytes_per_s, gpu, eff), eff=eff,
        source=f"catalog:{spec.id}",
    )


def resolve_cpu(cpu, threads: int | None = None, gpu: GPUSpec | None = None) -> CPUModel:
    """A catalog id/alias, a :class:`CPUSpec`, a :class:`CPUModel`, or a ``calibrate-cpu`` profile dir."""
    from pathlib import Path

    from perfcast.hardware import get_cpu, list_cpus

    if isinstance(cpu, CPUModel):
        return cpu
    if cpu is None or (isinstance(cpu, str) and not cpu.strip()):
        ids = ", ".join(c.id for c in list_cpus())
        raise ValueError(f"offload needs 'cpu': a catalog id ({ids}) or a directory written by "
                         "`perfcast calibrate-cpu`")
    if isinstance(cpu, str) and Path(cpu).is_dir():
        from perfcast.offload.cpu_profile import load_cpu_profile

        return load_cpu_profile(cpu, threads, gpu)
    if isinstance(cpu, str) and (Path(cpu).exists() or "/" in cpu):
        raise ValueError(f"cpu {cpu!r} is not a CPU profile directory (written by `perfcast calibrate-cpu`, "
                         "holding meta.json and cpu.csv) nor a catalog id")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                or threads < 1):
        raise ValueError(f"cpu_threads must be a positive integer, got {threads!r}")
    return from_catalog(get_cpu(cpu), threads, gpu)
