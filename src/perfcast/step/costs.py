"""Cost of each op on a GPU: the measured profile where it covers the op, physics elsewhere.

A registry maps op kinds to cost functions; each returns an :class:`OpCost` (seconds per launch,
bound, provenance), vectorized over sweep points.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from perfcast.hardware.spec import GPUSpec
from perfcast.ops import analytical as an
from perfcast.ops.base import ANALYTICAL, HOST, Op, OpCost
from perfcast.profiles import Profile

CostFn = Callable[[Op, GPUSpec, Profile], OpCost]
_COSTS: dict[str, CostFn] = {}


def cost_fn(kind: str):
    def deco(fn: CostFn) -> CostFn:
        _COSTS[kind] = fn
        return fn

    return deco


def op_cost(op: Op, gpu: GPUSpec, prof: Profile) -> OpCost:
    try:
        fn = _COSTS[op.kind]
    except KeyError:
        raise ValueError(f"no cost model for op kind {op.kind!r}") from None
    return fn(op, gpu, prof)


@cost_fn("gemm")
def _gemm(op: Op, gpu: GPUSpec, prof: Profile) -> OpCost:
    d = op.dims
    g = d.get("groups")
    if g is not None and op.meta.get("batched"):
        # the groups run in ONE kernel (torch.bmm: MLA's per-head absorbed projections): one launch and one
        # floor, the FLOPs and bytes of every group (not ``groups`` launches of one group's GEMM)
        if d.get("m_quantiles") is not None:
            raise ValueError(f"{op.name}: a batched GEMM has one row count per group (no m_quantiles)")
        return prof.batched_gemm(g, d["m"], d["n"], d["k"], op.dtype, op.wdtype)
    # the kernel alone; inside a step the step's power state slows it (step_power)
    c = prof.gemm(d["m"], d["n"], d["k"], op.dtype, op.wdtype)
    mq = d.get("m_quantiles")
    if mq is not None:  # rows differ between launches (MoE experts): mean time over the row quantiles
        cq = prof.gemm(mq, d["n"], d["k"], op.dtype, op.wdtype)
        sec = np.asarray(cq.seconds, dtype=float).mean(axis=-1)
        c = OpCost.of(sec.reshape(np.shape(c.seconds)) if np.ndim(c.seconds) else sec, c.bound, c.source,
                      c.flops, c.bytes)
    if g is None:
        return c
    g = np.asarray(g, dtype=float)  # several launches per layer (MoE experts: one GEMM per expert hit)
    return OpCost.of(c.seconds * g, c.bound, c.source, c.flops * g, c.bytes * g)


@cost_fn("attention")
def _attention(op: Op, gpu: GPUSpec, prof: Profile) -> OpCost:
    d = op.dims
    c = prof.attention(d["batch"], d["heads"], d["kv_heads"], d["head_dim"], d["q_len"], d["kv_len"],
                       bool(d["causal"]), d.get("window"), op.dtype, op.meta.get("kv_dtype"), d.get("v_head_dim"),
                       bool(d.get("kv_shared", False)))
    return c


@cost_fn("elementwise")
def _elementwise(op: Op, gpu: GPUSpec, prof: Profile) -> OpCost:
    d = op.dims
    c = prof.elementwise(d["op"], d["tokens"], d["width"], op.dtype)
    g = d.get("groups")
    if g is None:
        return c
    g = np.asarray(g, dtype=float)  # one launch set per group (MoE experts)
    return OpCost.of(c.seconds * g, c.bound, c.source, c.flops * g, c.bytes * g)


@cost_fn("collective")
@cost_fn("p2p")
def _collective(op: Op, gpu: GPUSpec, prof: Profile) -> OpCost:
    d = op.dims
    return prof.collective(d["coll"], d["bytes"], int(d["gpus"]))


@cost_fn("host")
def _host(op: Op, gpu: GPUSpec, prof: Profile) -> OpCost:
    s = np.asarray(op.dims.get("seconds", 0.0), dtype=float)
    return OpCost.of(s, HOST, ANALYTICAL, 0.0, 0.0)


# kernels that run at the step's clock: the power state is a property of the whole step
_CLOCKED = ("gemm", "attention", "elementwise")


def step_power_factor(ops: list[Op], costs: list[OpCost], prof: Profile):
    """The slowdown of every kernel of one step under the board power cap (1.0 when the profile has none),
    per sweep point.

    The power cap acts on the whole step, not on each kernel: the SM clock the GPU holds through a busy
    loop of steps is set by the step's average power. Each tensor-core kernel's demand is its FLOPs over
    its dtype's cap (``cap_frac`` x the dtype's peak: the rate it may sustain at the power limit);
    summed over the step and divided by the step's kernel time (GEMM, attention and memory-bound kernels,
    alone) it gives the step's mean demand ``x``, and the step's GEMMs run ``(1 + x^knee)^(1/knee)`` slower
    (:func:`step_power` charges the other kernels at the same clock). A step of GEMMs alone reduces to the
    per-kernel cap fitted on sustained GEMMs; in a prefill, attention and memory-bound kernels lower the
    mean and share the slowdown (prefill step profiles: GEMM family 9.9% -> 2.6% MAPE). Collectives,
    transfers, host time and CPU ops are left out.
    The mean is taken over the decoder layers' kernels (the embedding and the head, a few per step, get
    the same clock), so a pipeline stage and the whole model share it."""
    pm = prof.power
    if not pm.on:
        return 1.0
    demand, busy = 0.0, 0.0
    layered = any(o.group == "layer" for o in ops)
    for o, c in zip(ops, costs):
        if o.kind not in _CLOCKED or o.device != "gpu" or (layered and o.group != "layer"):
            continue
        busy = busy + o.count * np.asarray(c.seconds, dtype=float)
        cap, _ = pm.cap(o.dtype)
        if o.kind != "elementwise" and cap > 0 and o.wdtype in (None, o.dtype):
            demand = demand + o.count * np.asarray(c.flops, dtype=float) / (cap * prof.gpu.flops(o.dtype))
    busy = np.asarray(busy, dtype=float)
    x = np.divide(demand, busy, out=np.zeros(np.broadcast(demand, busy).shape), where=busy > 0)
    return (1.0 + x ** pm.knee) ** (1.0 / pm.knee)


def step_power(ops: list[Op], costs: list[OpCost], prof: Profile) -> list[OpCost]:
    """``costs`` (each kernel as timed alone) as the kernels run inside the step: GEMMs slowed by
    :func:`step_power_factor` ``f``, attention and memory-bound kernels by ``1 + clock_gamma (f - 1)``
    (``PowerModel.clock_gamma``: they were timed alone at full clock, the GEMMs below it), the rest
    unchanged."""
    f = step_power_factor(ops, costs, prof)
    if np.ndim(f) == 0 and f == 1.0:
        return costs
    # attention and memory-bound kernels were timed alone at a higher clock than GEMMs (which hold the
    # board near its limit even alone), so the step's clock costs them more: clock_gamma x the GEMMs' loss
    fo = 1.0 + prof.power.clock_gamma * (f - 1.0)
    return [OpCost.of(c.seconds * (f if o.kind == "gemm" else fo), c.bound, c.source, c.flops, c.bytes)
            if o.kind in _CLOCKED and o.device == "gpu" else c for o, c in zip(ops, costs)]


def step_costs(ops: list[Op], gpu: GPUSpec, prof: Profile) -> list[OpCost]:
    """Every op of one step costed alone (:func:`op_cost`), then put at the step's power state
    (:func:`step_power`)."""
    return step_power(ops, [op_cost(o, gpu, prof) for o in ops], prof)


def analytical_only(op: Op, gpu: GPUSpec, eff: an.Efficiency = an.PRIOR) -> OpCost:
    """The pure physics answer for ``op`` (used by tests and to show the gap a profile closes)."""
    return op_cost(op, gpu, Profile.analytical(gpu, eff))
