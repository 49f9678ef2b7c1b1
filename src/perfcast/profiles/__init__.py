"""Measured profiles: which numbers back a prediction.

``Profile`` answers per-kernel times. The analytical profile uses the datasheet and an
:class:`~perfcast.ops.analytical.Efficiency`; a measured profile interpolates its tables inside the
measured range and falls back to physics fitted on the same tables outside it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import numpy as np

from perfcast.hardware.spec import GPUSpec
from perfcast.ops import analytical as an
from perfcast.ops.base import OpCost


@dataclass(frozen=True)
class HostModel:
    """Host-side (CPU) cost of driving the GPU, seconds. Calibrated from measured runs."""

    per_op_s: float = 6.0e-6  # one Python-dispatched torch op (eager)
    per_layer_s: float = 15.0e-6  # module call overhead per decoder layer (eager)
    per_step_s: float = 300.0e-6  # forward() set-up: masks, positions, cache bookkeeping (eager)
    graph_launch_s: float = 15.0e-6  # one CUDA-graph replay, host to first kernel
    # a kernel timed alone (CUDA events around one launch) carries launch latency that a kernel
    # replayed back to back inside a CUDA graph does not: subtracted per kernel under cuda-graph
    graph_kernel_discount_s: float = 0.0
    graph_kernel_min_s: float = 1.4e-6  # smallest in-graph kernel time (measured: launch.csv 'graph')
    # GPU idle between back-to-back kernels of a captured graph, measured kernel by kernel (step profiles):
    # part of what each kernel is charged (the discount is fitted on step totals); breakdowns show it apart
    graph_gap_s: float = 0.0
    # elementwise kernels reading views of a fused projection's output (q/k/v slices, gate/up halves)
    # run slower than the contiguous calibration kernels by this factor (fitted, see host.json)
    strided_elem_factor: float = 1.0
    source: str = "prior"


POWER_DTYPES = ("bf16", "fp16")  # the dtypes of the main cap (FP8 has its own: PowerModel.fp8_cap_frac)


@dataclass(frozen=True)
class PowerModel:
    """Tensor-core throughput under the board power cap, for kernels that run back to back.

    A kernel timed alone starts at full clocks; run back to back, a GEMM near the tensor-core peak draws
    the board to its power limit and the SM clock falls (an H100 at 700 W: 1980 to about 1400 MHz).
    Measured on one H100 (``benchmarks/fit_power.py``): kernels reaching 700-850 TFLOP/s alone ran
    13-17% slower when sustained, those under 550 TFLOP/s were unchanged. The sustained rate is a soft
    minimum of the kernel's own rate ``r`` and a cap ``c = cap_frac * peak``:
    ``r_s = r * (1 + (r / c) ** knee) ** (-1 / knee)``. ``cap_frac`` 0 turns it off.

    FP8 GEMMs do less work per FLOP and reach the power limit at a higher rate: they have a cap of their own,
    ``fp8_cap_frac`` of the FP8 peak (0: FP8 kernels are left as timed alone).

    Model steps apply it to the step's mean demand, not kernel by kernel (``perfcast.step.costs.step_power``);
    :meth:`Profile.sustained` is one kernel run back to back with itself (what the caps were fitted on).
    """

    cap_frac: float = 0.0
    knee: float = 8.0
    source: str = "off"
    fp8_cap_frac: float = 0.0
    fp8_knee: float = 8.0
    # inside a step at the power limit, attention and memory-bound kernels lose this many times the GEMMs'
    # share of clock: timed alone they ran at full clock (1,980 MHz) where GEMMs already ran lower
    # (1,845-1,890 MHz); with a step clock f_s, (f_max / f_s - 1) / (f_gemm / f_s - 1) (power.json)
    clock_gamma: float = 1.0

    @property
    def on(self) -> bool:
        return self.cap_frac > 0 or self.fp8_cap_frac > 0

    def cap(self, dtype: str) -> tuple[float, float]:
        """(cap fraction of the dtype's peak, knee) of a GEMM dtype; a cap of 0 where none was measured."""
        if dtype in POWER_DTYPES:
            return self.cap_frac, self.knee
        if dtype == "fp8":
            return self.fp8_cap_frac, self.fp8_knee
        return 0.0, 8.0

    def factor(self, flops, seconds, peak: float, dtype: str = "bf16"):
        """Sustained over isolated time (>= 1) of a ``dtype`` GEMM (``peak``: that dtype's), elementwise."""
        cap, knee = self.cap(dtype)
        if cap <= 0 or peak <= 0:
            return 1.0
        sec = np.asarray(seconds, dtype=float)
        rate = np.divide(np.asarray(flops, dtype=float), sec, out=np.zeros(np.broadcast(flops, sec).shape),
                         where=sec > 0)
        return (1.0 + (rate / (cap * peak)) ** knee) ** (1.0 / knee)


W8A16 = "w8a16c"  # weight-only int8 as torch.compile runs it (bf16 activations; profiles' gemm_int8.csv)
KERNEL_TABLES = {W8A16: "int8"}  # measured kernels asked for by name as a GEMM dtype -> their weight dtype


@dataclass(frozen=True)
class Profile:
    """Per-kernel time oracle for one GPU."""

    gpu: GPUSpec
    eff: an.Efficiency = an.PRIOR
    hosts: dict = field(default_factory=dict)  # runtime name -> HostModel
    name: str = "analytical"
    tables: object | None = None  # perfcast.profiles.measured.Tables when measured
    power: PowerModel = PowerModel()  # isolated-kernel tables -> sustained times inside model steps

    def alone(self) -> Profile:
        """This profile without the power cap: kernels as they run alone (``perfcast op``). The same
        object for the same profile, so that callers can group work by profile identity."""
        return self if not self.power.on else self._alone

    @functools.cached_property
    def _alone(self) -> Profile:
        return replace(self, power=PowerModel(source="off: kernels alone"))

    def sustained(self, c: OpCost, dtype: str, wdtype=None) -> OpCost:
        """``c`` (an isolated kernel's cost) as the kernel runs back to back with itself for long enough to
        reach the power limit (``calibrate --sustain-ms``); steps use the step's mean demand instead."""
        if self.power.cap(dtype)[0] <= 0 or wdtype not in (None, dtype):
            return c
        f = self.power.factor(c.flops, c.seconds, self.gpu.flops(dtype), dtype)
        if np.ndim(f) == 0 and f == 1.0:
            return c
        return OpCost.of(c.seconds * f, c.bound, c.source, c.flops, c.bytes)

    @staticmethod
    def analytical(gpu: GPUSpec, eff: an.Efficiency = an.PRIOR) -> Profile:
        return Profile(gpu=gpu, eff=eff)

    def host(self, runtime: str) -> HostModel:
        """The host model for ``runtime``; eager-tp<N> falls back to the nearest fitted N, and eager-tp1
        (the plain decoder at tp 1, as pipeline stages run it) to ``eager-tp``, fitted on that decoder."""
        if runtime in self.hosts:
            return self.hosts[runtime]
        if runtime == "eager-tp1" and "eager-tp" in self.hosts:
            return self.hosts["eager-tp"]
        if runtime.startswith("eager-tp") and runtime[8:].isdigit():
            fitted = sorted((int(k[8:]), k) for k in self.hosts if k.startswith("eager-tp") and k[8:].isdigit())
            if fitted:
                n = int(runtime[8:])
                return self.hosts[min(fitted, key=lambda f: abs(f[0] - n))[1]]
            return self.hosts.get("eager-tp") or HostModel()
        return self.hosts.get("default") or HostModel()

    # --- kernel families --------------------------------------------------------------
    def gemm(self, m, n, k, dtype="bf16", wdtype=None) -> OpCost:
        m = np.asarray(m)
        dedup = _on_unique(m, lambda u: self.gemm(u, n, k, dtype, wdtype))
        if dedup is not None:
            return dedup
        if self.tables is not None:
            return self.tables.gemm(self, m, n, k, dtype, wdtype)
        if dtype in KERNEL_TABLES:  # a measured kernel asked for by name, without its table: the op itself
            dtype, wdtype = "bf16", KERNEL_TABLES[dtype]
        return an.gemm_cost(self.gpu, m, n, k, dtype, wdtype, self.eff)

    def batched_gemm(self, groups: int, m, n, k, dtype="bf16", wdtype=None) -> OpCost:
        """One batched GEMM kernel (torch.bmm) over ``groups`` independent (m, n, k) problems, each with its
        own activations and weights (MLA's per-head absorbed projections): one launch, one floor.

        The profile's time of the GEMM with the same output tiles and weight stream, (m, groups * n, k),
        scaled by the batched kernel's roofline over that GEMM's (this profile's efficiencies): the batched
        kernel also reads ``groups`` activation blocks where that GEMM reads one. FLOPs and bytes are the
        batched kernel's own: ``groups`` times those of one (m, n, k) GEMM."""
        g = int(groups)
        eq = self.gemm(m, g * int(n), k, dtype, wdtype)
        if g == 1:
            return eq
        dt, wd = (("bf16", KERNEL_TABLES[dtype]) if dtype in KERNEL_TABLES else (dtype, wdtype))
        bat = an.gemm_cost(self.gpu, m, n, k, dt, wd, self.eff, groups=g)
        ref = an.gemm_cost(self.gpu, m, g * int(n), k, dt, wd, self.eff)
        return OpCost.of(eq.seconds * (bat.seconds / ref.seconds), bat.bound, eq.source, bat.flops, bat.bytes)

    def attention(self, batch, heads, kv_heads, head_dim, q_len, kv_len, causal, window=None,
                  dtype="bf16", kv_dtype=None, v_head_dim=None, kv_shared=False) -> OpCost:
        if self.tables is not None:
            return self.tables.attention(self, batch, heads, kv_heads, head_dim, q_len, kv_len, causal,
                                         window, dtype, kv_dtype, v_head_dim, kv_shared)
        return an.attention_cost(self.gpu, batch, heads, kv_heads, head_dim, q_len, kv_len, causal, window,
                                 dtype, kv_dtype, v_head_dim, self.eff, kv_shared)

    def elementwise(self, op, tokens, width, dtype="bf16") -> OpCost:
        tokens = np.asarray(tokens)
        dedup = _on_unique(tokens, lambda u: self.elementwise(op, u, width, dtype)) if np.ndim(width) == 0 else None
        if dedup is not None:
            return dedup
        if self.tables is not None:
            return self.tables.elementwise(self, op, tokens, width, dtype)
        return an.elementwise_cost(self.gpu, op, tokens, width, dtype, self.eff)

    def collective(self, coll, nbytes, gpus) -> OpCost:
        if self.tables is not None:
            return self.tables.collective(self, coll, nbytes, gpus)
        return an.collective_cost(self.gpu, coll, nbytes, gpus, self.eff)


def _on_unique(values: np.ndarray, cost) -> OpCost | None:
    """Large sweeps repeat few token counts: cost the unique ones and scatter back (None: not worth it)."""
    if values.size <= 4096:
        return None
    from perfcast.profiles.interp import unique

    u, inv = unique(values, return_inverse=True)
    if u.size == values.size:
        return None
    c = cost(u)
    return OpCost(*(np.broadcast_to(np.asarray(x), u.shape)[inv].reshape(values.shape)
                    for x in (c.seconds, c.bound, c.source, c.flops, c.bytes)))
