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
        return prof.sustained(prof.batched_gemm(g, d["m"], d["n"], d["k"], op.dtype, op.wdtype), op.dtype,
                              op.wdtype)
    # kernels run back to back inside a step: each is slowed by the power cap (prof.sustained)
    c = prof.sustained(prof.gemm(d["m"], d["n"], d["k"], op.dtype, op.wdtype), op.dtype, op.wdtype)
    mq = d.get("m_quantiles")
    if mq is not None:  # rows differ between launches (MoE experts): mean time over the row quantiles
        cq = prof.sustained(prof.gemm(mq, d["n"], d["k"], op.dtype, op.wdtype), op.dtype, op.wdtype)
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
    return prof.sustained(c, op.dtype)


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


def analytical_only(op: Op, gpu: GPUSpec, eff: an.Efficiency = an.PRIOR) -> OpCost:
    """The pure physics answer for ``op`` (used by tests and to show the gap a profile closes)."""
    return op_cost(op, gpu, Profile.analytical(gpu, eff))
