"""Runtimes turn per-kernel times into a step time.

- ``cuda-graph``: kernels back to back on the GPU; each kernel pays a small in-graph gap, the step
  pays one graph launch.
- ``eager``: PyTorch eager. The host dispatches ops one by one; the GPU runs each kernel when both
  the GPU is free and the host has issued it. For a chain, the GPU finishes at
  ``max_k(issue_k + sum of GPU time from k on)``; identical layers make that a closed form (the
  maximum of a linear function of the layer index sits at the first or the last layer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from perfcast.ops.base import HOST, Op, OpCost
from perfcast.profiles import HostModel


@dataclass(frozen=True)
class StepTime:
    seconds: np.ndarray  # step time per sweep point
    gpu_seconds: np.ndarray  # sum of kernel times (what the GPU is busy)
    host_seconds: np.ndarray  # host dispatch time (eager) or graph launch
    op_seconds: list[np.ndarray]  # per op, per launch, as the runtime charges it
    op_bound: list[np.ndarray]
    host_bound: np.ndarray  # bool: the step is host-limited (eager)
    # when every op's cost is a 1-D array of the points: op_seconds and op_bound as (ops, points) arrays
    stacked: tuple | None = None


RuntimeFn = Callable[[list[Op], list[OpCost], HostModel, object], StepTime]
_RUNTIMES: dict[str, RuntimeFn] = {}


def runtime(name: str):
    def deco(fn: RuntimeFn) -> RuntimeFn:
        _RUNTIMES[name] = fn
        return fn

    return deco


def runtimes() -> list[str]:
    return list(_RUNTIMES)


def get_runtime(name: str) -> RuntimeFn:
    try:
        return _RUNTIMES[name]
    except KeyError:
        raise ValueError(f"unknown runtime {name!r}; choose one of {', '.join(_RUNTIMES)}") from None


def _points(costs: list[OpCost]) -> int | None:
    """The number of points when every cost is a 1-D array of them (batch files), else None (sweeps
    keep their broadcast shapes, and are costed op by op)."""
    n = None
    for c in costs:
        sh = c.seconds.shape
        if len(sh) != 1 or (n is not None and sh[0] != n):
            return None
        n = sh[0]
    return n


def _stack(arrays, n: int, dtype) -> np.ndarray:
    out = np.empty((len(arrays), n), dtype=dtype)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


def kernels_per_launch(op: Op):
    """Kernels one launch of ``op`` runs, as the graph counts them: the op's kernels, times its groups for
    a grouped op run group by group (not one batched kernel)."""
    k = op.meta.get("kernels", 1)
    if op.dims.get("groups") is not None and not op.meta.get("batched"):
        k = k * np.asarray(op.dims["groups"], dtype=float)  # launches: kernels per group x groups
    return k


@runtime("cuda-graph")
def cuda_graph(ops: list[Op], costs: list[OpCost], host: HostModel, eff) -> StepTime:
    disc, kmin = host.graph_kernel_discount_s, host.graph_kernel_min_s
    n = _points(costs)
    if n is not None and all(o.kind != "host" and (o.dims.get("groups") is None or o.meta.get("batched"))
                             for o in ops):
        return _cuda_graph_stacked(ops, costs, host, n)
    total = 0.0
    per, bounds = [], []
    for op, c in zip(ops, costs):
        if op.kind == "host":
            per.append(np.zeros_like(c.seconds))
            bounds.append(c.bound)
            continue
        k = kernels_per_launch(op)
        t = c.seconds
        if op.meta.get("strided"):  # reads views of a fused projection (fitted: benchmarks/fit_host.py)
            t = t * host.strided_elem_factor
        s = np.maximum(t - k * disc, k * kmin)
        per.append(s)
        bounds.append(c.bound)
        total = total + op.count * s
    gpu = np.asarray(total, dtype=float)
    launch = host.graph_launch_s
    return StepTime(gpu + launch, gpu, np.full(gpu.shape, launch), per, bounds,
                    np.zeros(gpu.shape, dtype=bool))


def _cuda_graph_stacked(ops: list[Op], costs: list[OpCost], host: HostModel, n: int) -> StepTime:
    """``cuda_graph`` on (ops, points) arrays: the same arithmetic, op by op, in one pass per step."""
    t = _stack([c.seconds for c in costs], n, float)
    strided = [i for i, o in enumerate(ops) if o.meta.get("strided")]
    if strided:  # reads views of a fused projection (fitted: benchmarks/fit_host.py)
        t[strided] = t[strided] * host.strided_elem_factor
    k = np.array([[o.meta.get("kernels", 1)] for o in ops], dtype=float)
    per = np.maximum(t - k * host.graph_kernel_discount_s, k * host.graph_kernel_min_s)
    charged = per * np.array([[o.count] for o in ops], dtype=float)
    total = 0.0
    for row in charged:  # summed in op order, as the op-by-op form does
        total = total + row
    gpu = np.asarray(total, dtype=float).reshape(n)
    launch = host.graph_launch_s
    bounds = _stack([c.bound for c in costs], n, np.int8)
    return StepTime(gpu + launch, gpu, np.full(gpu.shape, launch), list(per), list(bounds),
                    np.zeros(gpu.shape, dtype=bool), (per, bounds, charged))


@runtime("eager")
def eager(ops: list[Op], costs: list[OpCost], host: HostModel, eff) -> StepTime:
    """Host/GPU pipeline over pre ops, ``L`` identical (averaged) layers and post ops."""
    idx = {"pre": [], "layer": [], "post": []}
    for i, o in enumerate(ops):
        idx[o.group].append(i)
    L = max((ops[i].count for i in idx["layer"]), default=0)
    L = max(L, sum(ops[i].count for i in idx["layer"] if ops[i].kind == "attention"))

    def h_of(o: Op) -> float:
        return o.host_ops * host.per_op_s

    def g_of(i: int, frac: float = 1.0):
        return np.asarray(costs[i].seconds, dtype=float) * (ops[i].count * frac)

    n = _points(costs)
    if n is not None:
        return _eager_stacked(ops, costs, host, idx, L, n)
    shape = np.broadcast(*[np.asarray(c.seconds) for c in costs]).shape
    # one average layer: each op weighted by the share of layers it runs in
    lay_h = [h_of(ops[i]) * ops[i].count / L for i in idx["layer"]] if L else []
    if lay_h:
        lay_h[0] += host.per_layer_s
    lay_g = [g_of(i, 1.0 / L) for i in idx["layer"]] if L else []
    H = sum(lay_h)  # a float, or per point when an op's host dispatch varies by point (MoE experts hit)
    G = sum(lay_g) if lay_g else np.zeros(shape)
    pre_g = [g_of(i) for i in idx["pre"]]
    post_g = [g_of(i) for i in idx["post"]]
    gpu_total = np.zeros(shape) + sum(pre_g, np.zeros(shape)) + L * G + sum(post_g, np.zeros(shape))
    host_total = host.per_step_s + sum(h_of(ops[i]) for i in idx["pre"] + idx["post"]) + L * H

    end = np.array(gpu_total, copy=True)
    issue, done = host.per_step_s, np.zeros(shape)
    for i, g in zip(idx["pre"], pre_g):
        issue = issue + h_of(ops[i])
        end = np.maximum(end, issue + gpu_total - done)
        done = done + g
    if L:
        for h, g in zip(lay_h, lay_g):
            issue = issue + h
            first = issue + gpu_total - done
            last = first + (L - 1) * (H - G)
            end = np.maximum(end, np.maximum(first, last))
            done = done + g
        issue = issue + (L - 1) * H
        done = done + (L - 1) * G
    for i, g in zip(idx["post"], post_g):
        issue = issue + h_of(ops[i])
        end = np.maximum(end, issue + gpu_total - done)
        done = done + g
    per = [np.asarray(c.seconds, dtype=float) for c in costs]
    bounds = [np.where(h_of(o) > c.seconds, HOST, c.bound) for o, c in zip(ops, costs)]
    host_bound = np.broadcast_to(host_total >= gpu_total, shape).copy()
    return StepTime(end, gpu_total, np.broadcast_to(np.asarray(host_total, dtype=float), shape).copy(), per,
                    bounds, host_bound)


def _eager_stacked(ops: list[Op], costs: list[OpCost], host: HostModel, idx: dict, L: int, n: int) -> StepTime:
    """``eager`` on (ops, points) arrays: the same arithmetic in the same order (sums op after op), the
    layer loop as running sums (``cumsum`` adds row after row) and one maximum over its candidates."""
    shape = (n,)
    t = _stack([c.seconds for c in costs], n, float)
    h = [o.host_ops * host.per_op_s for o in ops]
    lay, pre, post = idx["layer"], idx["pre"], idx["post"]
    lay_h = [h[i] * ops[i].count / L for i in lay] if L else []
    if lay_h:
        lay_h[0] += host.per_layer_s
    lay_g = t[lay] * np.array([[ops[i].count * (1.0 / L)] for i in lay]) if L else np.zeros((0, n))
    H = sum(lay_h)  # a float, or per point (MoE experts hit)
    G = np.zeros(shape)
    if L:
        G = 0 + lay_g[0]
        for row in lay_g[1:]:
            G = G + row
    pre_g = [t[i] * (ops[i].count * 1.0) for i in pre]
    post_g = [t[i] * (ops[i].count * 1.0) for i in post]
    gpu_total = np.zeros(shape) + sum(pre_g, np.zeros(shape)) + L * G + sum(post_g, np.zeros(shape))
    host_total = host.per_step_s + sum(h[i] for i in pre + post) + L * H

    end = np.array(gpu_total, copy=True)
    issue, done = host.per_step_s, np.zeros(shape)
    for i, g in zip(pre, pre_g):
        issue = issue + h[i]
        end = np.maximum(end, issue + gpu_total - done)
        done = done + g
    if L:
        issued = []
        for x in lay_h:
            issue = issue + x
            issued.append(np.broadcast_to(issue, shape))
        # done before each layer op: running sums from the done so far, one op at a time
        dones = np.cumsum(np.concatenate([done[None, :], lay_g]), axis=0)
        first = (np.array(issued) + gpu_total) - dones[:-1]
        last = first + (L - 1) * (H - G)
        end = np.maximum(end, np.maximum(first, last).max(axis=0))
        done = dones[-1]
        issue = issue + (L - 1) * H
        done = done + (L - 1) * G
    for i, g in zip(post, post_g):
        issue = issue + h[i]
        end = np.maximum(end, issue + gpu_total - done)
        done = done + g
    hmat = np.array([np.broadcast_to(np.asarray(x, dtype=float), shape) for x in h])
    bounds = np.where(hmat > t, HOST, _stack([c.bound for c in costs], n, np.int8))
    host_bound = np.broadcast_to(host_total >= gpu_total, shape).copy()
    charged = t * np.array([[o.count] for o in ops], dtype=float)
    return StepTime(end, gpu_total, np.broadcast_to(np.asarray(host_total, dtype=float), shape).copy(), list(t),
                    list(bounds), host_bound, (t, bounds, charged))
