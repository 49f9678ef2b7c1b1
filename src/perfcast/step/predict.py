"""The step model's API: one prediction, or a vectorized sweep over batch/prompt/context."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, replace

import numpy as np

from perfcast.hardware import get_gpu
from perfcast.hardware.spec import DTYPE_BYTES, GPUSpec
from perfcast.models import get_model
from perfcast.models.builder import GRAPH_LAYOUT, HF_LAYOUT, MEGATRON_LAYOUT, StepShape, build_ops
from perfcast.models.spec import ModelSpec
from perfcast.ops.base import BOUNDS, SOURCES, Op, OpCost
from perfcast.profiles.registry import resolve_profile
from perfcast.step import memory as mem
from perfcast.step.costs import op_cost, step_costs, step_power
from perfcast.step.runtime import get_runtime, kernels_per_launch

GIB = mem.GIB
WEIGHT_DTYPES = ("bf16", "fp16", "fp8", "int8", "int4", "fp32")


class DtypeUnsupported(ValueError):
    """The GPU has no tensor cores for the requested compute dtype (fp8 on Ampere): a report over several
    GPUs lists such a GPU as skipped instead of failing."""


class InputError(ValueError):
    """A case perfcast cannot predict; the message says what would be valid."""


@dataclass(frozen=True)
class StepConfig:
    """Everything but the token counts: one deployment of one model on one GPU type."""

    model: ModelSpec
    gpu: GPUSpec
    tp: int = 1
    pp: int = 1
    dtype: str = "bf16"
    runtime: str = "cuda-graph"
    profile: str = "auto"
    kv_dtype: str | None = None
    wdtype: str | None = None
    ep: int = 1  # MoE: experts split over ep of the tp GPUs (all-to-all dispatch/combine)
    moe_imbalance: float = 1.0  # MoE: tokens of the busiest GPU over the uniform share (>= 1)


@dataclass(frozen=True)
class Prediction:
    """One predicted step. Times in ms, memory in GiB per GPU (the most loaded one)."""

    model: str
    gpu: str
    batch: int
    prompt: int
    context: int
    tp: int
    pp: int
    dtype: str
    runtime: str
    prefill_ms: float
    decode_ms: float
    weights_gib: float
    kv_cache_gib: float
    activations_gib: float
    total_gib: float
    fits: bool
    capacity_gib: float
    profile: str
    prefill_bound: str
    decode_bound: str
    source: str  # the least-trusted provenance among the ops that make up >= 5% of the time
    breakdown: list = field(default_factory=list)
    # how far such predictions were from measured runs (p90 of |error|, %), and on what basis
    prefill_err_p90_pct: float | None = None
    decode_err_p90_pct: float | None = None
    accuracy_basis: str = ""

    def to_dict(self, breakdown: bool = False) -> dict:
        d = {k: getattr(self, k) for k in (
            "model", "gpu", "batch", "prompt", "context", "tp", "pp", "dtype", "runtime",
            "prefill_ms", "decode_ms", "weights_gib", "kv_cache_gib", "activations_gib", "total_gib",
            "fits", "capacity_gib", "profile", "prefill_bound", "decode_bound", "source",
            "prefill_err_p90_pct", "decode_err_p90_pct", "accuracy_basis")}
        if breakdown:
            d["breakdown"] = self.breakdown
        return d


def _pos_int(name: str, v) -> np.ndarray:
    a = np.asarray(v)
    if a.dtype == bool or not np.issubdtype(a.dtype, np.number):
        raise InputError(f"{name} must be a positive integer, got {v!r}")
    if not np.all(np.isfinite(a)) or np.any(a != np.floor(a)) or np.any(a < 1):
        raise InputError(f"{name} must be a positive integer, got {v!r}")
    return a.astype(np.int64)


def make_config(model, gpu, tp=1, pp=1, dtype="bf16", runtime="cuda-graph", profile="auto",
                kv_dtype=None, wdtype=None, ep=1, moe_imbalance=1.0) -> StepConfig:
    """Resolve names and check the deployment; raises InputError/ValueError with a fix."""
    spec = get_model(model)
    g = get_gpu(gpu)
    for name, v in (("tp", tp), ("pp", pp)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InputError(f"{name} must be a positive integer, got {v!r}")
    if spec.n_heads % tp:
        valid = [d for d in range(1, spec.n_heads + 1) if spec.n_heads % d == 0]
        raise InputError(f"tp={tp} does not divide the {spec.n_heads} attention heads of {spec.name}; "
                         f"valid tp: {', '.join(map(str, valid))}")
    if pp > spec.n_layers:
        raise InputError(f"pp={pp} exceeds the {spec.n_layers} layers of {spec.name}; use pp <= {spec.n_layers}")
    for name, v in (("dtype", dtype), ("kv_dtype", kv_dtype), ("wdtype", wdtype)):
        if v is not None and v not in DTYPE_BYTES:
            raise InputError(f"unknown {name} {v!r}; choose one of {', '.join(DTYPE_BYTES)}")
    try:  # the GEMMs run in ``dtype``: the GPU needs tensor cores for it
        g.flops(_act_dtype_of(dtype))
    except KeyError:
        raise DtypeUnsupported(f"{g.id} has no {dtype} tensor cores in its datasheet; use dtype bf16 or fp16 (and "
                         f"wdtype int8/int4 for weight-only quantization), or a GPU with {dtype}") from None
    get_runtime(runtime)
    if isinstance(ep, bool) or not isinstance(ep, (int, np.integer)) or ep < 1 or tp % ep:
        raise InputError(f"ep={ep!r} must be a positive integer that divides tp={tp} (experts split over ep GPUs)")
    if ep > 1 and not spec.is_moe:
        raise InputError(f"ep={ep} needs a mixture-of-experts model; {spec.name} is dense")
    if isinstance(moe_imbalance, bool) or not isinstance(moe_imbalance, (int, float)) or not (
            1.0 <= moe_imbalance <= 64.0):
        raise InputError(f"moe_imbalance must be a number from 1 (uniform routing) to 64, got {moe_imbalance!r}")
    return StepConfig(spec, g, int(tp), int(pp), dtype, runtime, str(profile), kv_dtype, wdtype, int(ep),
                      float(moe_imbalance))


def _layout(cfg: StepConfig):
    if cfg.runtime == "eager":  # HF at tp 1 without a pipeline; else the plain Megatron-style decoder
        return HF_LAYOUT if cfg.tp == 1 and cfg.pp == 1 else MEGATRON_LAYOUT
    return GRAPH_LAYOUT


def _act_dtype(cfg: StepConfig) -> str:
    return _act_dtype_of(cfg.dtype)


def _act_dtype_of(dtype: str) -> str:
    # weight-only int4/int8 run bf16 activations; fp8 runs fp8 GEMMs
    return dtype if dtype in ("bf16", "fp16", "fp32", "fp8") else "bf16"


def step_ops(cfg: StepConfig, phase: str, batch, prompt, context) -> list[Op]:
    shape = StepShape(phase, np.asarray(batch), np.asarray(prompt), np.asarray(context))
    wd = cfg.wdtype or (cfg.dtype if cfg.dtype in ("int8", "int4") else None)
    return build_ops(cfg.model, shape, cfg.tp, _act_dtype(cfg), _layout(cfg), cfg.kv_dtype, wd, cfg.pp, cfg.ep,
                     cfg.moe_imbalance)


def _phase(cfg: StepConfig, phase: str, batch, prompt, context):
    prof = resolve_profile(cfg.gpu, cfg.profile)
    ops = step_ops(cfg, phase, batch, prompt, context)
    costs = step_costs(ops, cfg.gpu, prof)
    rt = get_runtime(cfg.runtime)(ops, costs, prof.host(host_key(cfg)), prof.eff)
    return ops, costs, _through_pipeline(cfg, phase, batch, prompt, context, prof, rt), prof


def _through_pipeline(cfg: StepConfig, phase: str, batch, prompt, context, prof, rt):
    """pp > 1: the step's time is one micro-batch through the pipeline, every stage its own graph launch
    or host process (perfcast.step.pipeline); the whole-model ops still give the breakdown and bounds."""
    if cfg.pp == 1:
        return rt
    from perfcast.step.pipeline import pipeline_seconds

    lat, _, st = pipeline_seconds(cfg, phase, batch, prompt, context, 1, prof)
    hb = np.logical_or.reduce(np.broadcast_arrays(*st.host_bound)) if cfg.runtime == "eager" else rt.host_bound
    return replace(rt, seconds=np.asarray(lat, dtype=float), host_bound=np.asarray(hb))


def host_key(cfg: StepConfig) -> str:
    """Which host model drives the step: HF eager at tp 1, the plain decoder's per-tp fit (tensor or
    pipeline parallel: every stage is a plain-decoder process), or the graph."""
    if cfg.runtime == "eager":
        return "eager-hf" if cfg.tp == 1 and cfg.pp == 1 else f"eager-tp{cfg.tp}"
    return cfg.runtime



def check_lengths(cfg: StepConfig, prompt, context):
    mp = cfg.model.max_positions
    if isinstance(prompt, int) and isinstance(context, int) and prompt <= mp and context <= mp:
        return
    for name, v in (("prompt", prompt), ("context", context)):
        if np.any(np.asarray(v) > mp):
            raise InputError(f"{name}={int(np.max(v))} exceeds max_position_embeddings={mp} of "
                             f"{cfg.model.name}; use {name} <= {mp}")


def sweep(model, gpu, batch=1, prompt=512, context=512, tp=1, pp=1, dtype="bf16", runtime="cuda-graph",
          profile="auto", kv_dtype=None, wdtype=None, as_frame: bool = False):
    """Vectorized predictions over broadcast arrays of batch, prompt and context.

    Returns a dict of numpy arrays (``prefill_ms``, ``decode_ms``, ``weights_gib``, ``kv_cache_gib``,
    ``activations_gib``, ``total_gib``, ``fits``), or a pandas DataFrame with ``as_frame=True``.
    """
    cfg = model if isinstance(model, StepConfig) else make_config(
        model, gpu, tp, pp, dtype, runtime, profile, kv_dtype, wdtype)
    # keep the inputs in their own (broadcastable) shapes: each op is costed on the fewest points
    b, p, c = _pos_int("batch", batch), _pos_int("prompt", prompt), _pos_int("context", context)
    check_lengths(cfg, p, c)
    out = _sweep_cfg(cfg, b, p, c)
    if as_frame:
        import pandas as pd  # optional

        bb, pp_, cc = np.broadcast_arrays(b, p, c)
        return pd.DataFrame({"batch": bb.ravel(), "prompt": pp_.ravel(), "context": cc.ravel(),
                             **{k: np.ravel(v) for k, v in out.items()}})
    return out


def _sweep_cfg(cfg: StepConfig, b, p, c) -> dict:
    shape = np.broadcast_shapes(np.shape(b), np.shape(p), np.shape(c))
    _, _, pre, _ = _phase(cfg, "prefill", b, p, c)
    _, _, dec, _ = _phase(cfg, "decode", b, p, c)
    m = mem.memory(cfg.model, cfg.gpu, b, p, c, cfg.tp, cfg.pp, _wdtype(cfg), cfg.kv_dtype or _kvd(cfg),
                   _act_dtype(cfg))
    out = {"prefill_ms": pre.seconds * 1e3, "decode_ms": dec.seconds * 1e3, "weights_gib": m.weights_bytes / GIB,
           "kv_cache_gib": m.kv_cache_bytes / GIB, "activations_gib": m.activations_bytes / GIB,
           "total_gib": m.total_bytes / GIB, "fits": m.fits}
    return {k: np.broadcast_to(v, shape) for k, v in out.items()}  # every result in the full sweep shape


def _wdtype(cfg: StepConfig) -> str:
    return cfg.wdtype or cfg.dtype


def _kvd(cfg: StepConfig) -> str:
    return cfg.dtype if cfg.dtype in ("bf16", "fp16", "fp32") else "bf16"


def _dominant_arrays(rt, costs, ops):
    """Per sweep point: the bound holding the most time, and the weakest provenance among the ops
    that hold >= 5% of it."""
    total = np.asarray(rt.seconds, dtype=float)
    shape = total.shape
    n, k = total.size, len(ops)
    src = np.empty((k,) + shape, dtype=np.int8)  # per op and point: provenance, bound code, time
    for i, c in enumerate(costs):
        src[i] = c.source
    if rt.stacked is not None and shape == (n,):
        _, bnd, t = rt.stacked
    else:
        t = np.empty((k,) + shape)
        bnd = np.empty((k,) + shape, dtype=np.intp)
        for i, (o, s, b) in enumerate(zip(ops, rt.op_seconds, rt.op_bound)):
            t[i] = np.asarray(s, dtype=float) * o.count
            bnd[i] = b
    # time per (bound, point), each sum taken op by op in op order (bincount adds in input order)
    by_bound = np.bincount((bnd.reshape(k, n).astype(np.intp) * n + np.arange(n)).ravel(), weights=t.ravel(),
                           minlength=len(BOUNDS) * n).reshape(len(BOUNDS), n)
    weakest = np.where(t >= 0.05 * total, src, 0).max(axis=0, initial=0).astype(np.int8)
    bound = np.argmax(by_bound, axis=0).reshape(shape)
    bound = np.where(_full(rt.host_bound, shape), BOUNDS.index("host"), bound)
    return bound, weakest


def _full(x, shape):
    """``x`` as an array of ``shape`` (a read-only broadcast view unless it has that shape already)."""
    a = np.asarray(x)
    return a if a.shape == shape else np.broadcast_to(a, shape)


def predict(model, gpu, batch: int = 1, prompt: int = 512, context: int = 512, tp: int = 1, pp: int = 1,
            dtype: str = "bf16", runtime: str = "cuda-graph", profile: str = "auto", breakdown: bool = False,
            kv_dtype: str | None = None, wdtype: str | None = None, ep: int = 1,
            moe_imbalance: float = 1.0) -> Prediction:
    """Predict one step: prefill (TTFT without queueing) and one decode step (TPOT), and memory."""
    cfg = make_config(model, gpu, tp, pp, dtype, runtime, profile, kv_dtype, wdtype, ep, moe_imbalance)
    b = int(_pos_int("batch", batch))
    p = int(_pos_int("prompt", prompt))
    c = int(_pos_int("context", context))
    check_lengths(cfg, p, c)
    return _predict_cfg(cfg, b, p, c, breakdown)


def predict_many(cfg: StepConfig, b, p, c) -> list[Prediction]:
    """Predictions for arrays of (batch, prompt, context) under one config, vectorized."""
    b, p, c = (np.atleast_1d(np.asarray(x, dtype=np.int64)) for x in (b, p, c))
    b, p, c = np.broadcast_arrays(b, p, c)
    shape = b.shape
    g = predict_groups([(cfg, b.ravel(), p.ravel(), c.ravel())])[0]
    cols = {k: np.reshape(g[k], shape).ravel() for k in GROUP_COLUMNS}
    out = []
    for i in range(b.size):
        out.append(Prediction(
            model=cfg.model.name, gpu=cfg.gpu.id, batch=int(b.flat[i]), prompt=int(p.flat[i]),
            context=int(c.flat[i]), tp=cfg.tp, pp=cfg.pp, dtype=cfg.dtype, runtime=cfg.runtime,
            prefill_ms=float(cols["prefill_ms"][i]), decode_ms=float(cols["decode_ms"][i]),
            weights_gib=float(cols["weights_gib"][i]), kv_cache_gib=float(cols["kv_cache_gib"][i]),
            activations_gib=float(cols["activations_gib"][i]), total_gib=float(cols["total_gib"][i]),
            fits=bool(cols["fits"][i]), capacity_gib=g["capacity_gib"], profile=g["profile"],
            prefill_bound=BOUNDS[int(cols["prefill_bound"][i])], decode_bound=BOUNDS[int(cols["decode_bound"][i])],
            source=SOURCES[int(cols["source"][i])], prefill_err_p90_pct=g["prefill_err_p90_pct"],
            decode_err_p90_pct=g["decode_err_p90_pct"], accuracy_basis=g["accuracy_basis"]))
    return out


# per-point columns of predict_groups (bounds and source as codes into BOUNDS / SOURCES)
GROUP_COLUMNS = ("prefill_ms", "decode_ms", "weights_gib", "kv_cache_gib", "activations_gib", "total_gib", "fits",
                 "prefill_bound", "decode_bound", "source")


def predict_groups(groups, merge: bool = True, return_errors: bool = False) -> list:
    """Predictions for many deployments at once: ``groups`` is a list of ``(cfg, batch, prompt, context)``
    with 1-D integer arrays of equal length. Returns, per group, the :data:`GROUP_COLUMNS` as arrays and
    the per-group constants (``capacity_gib``, ``profile``, accuracy figures).

    Every op is costed elementwise over the points of its group, so ops of equal shape in different
    groups (same GPU, profile, kernel, widths, dtypes) are costed once over the concatenation of their
    points (``merge``): a file of many deployments costs far less than one call per deployment, with
    identical numbers. ``merge=False`` costs each group on its own, op by op. A group that fails is
    redone on its own, so that it raises what it raises alone; ``return_errors``: that exception takes
    the group's place in the list instead of propagating."""
    out: list = [None] * len(groups)
    redo = set(range(len(groups))) if not merge else set()
    if merge:
        jobs, owner = [], []
        for g, (cfg, b, p, c) in enumerate(groups):
            try:
                prof = resolve_profile(cfg.gpu, cfg.profile)
                ops = [step_ops(cfg, phase, b, p, c) for phase in ("prefill", "decode")]
            except Exception:
                redo.add(g)
                continue
            for phase_ops in ops:
                jobs.append((prof, cfg.gpu, phase_ops, int(np.shape(b)[0])))
                owner.append(g)
        costs, failed = _merged_costs(jobs)
        redo.update(owner[j] for j in failed)
        first = {}
        for j, g in enumerate(owner):
            first.setdefault(g, j)
        for g, j in first.items():
            if g in redo:
                continue
            cfg, b, p, c = groups[g]
            try:
                out[g] = _finish_group(cfg, b, p, c, {"prefill": (jobs[j][2], costs[j]),
                                                      "decode": (jobs[j + 1][2], costs[j + 1])})
            except Exception:
                redo.add(g)
    for g in sorted(redo):
        cfg, b, p, c = groups[g]
        try:
            out[g] = _finish_group(cfg, b, p, c, None)
        except Exception as e:
            if not return_errors:
                raise
            out[g] = e
    return out


def _finish_group(cfg: StepConfig, b, p, c, costed) -> dict:
    """Step times, bounds, memory and accuracy of one group; ``costed``: phase -> (ops, costs) already
    costed, or None to cost them here."""
    res = {}
    prof = resolve_profile(cfg.gpu, cfg.profile)
    rt_fn = get_runtime(cfg.runtime)
    host = prof.host(host_key(cfg))
    for phase in ("prefill", "decode"):
        if costed is None:
            ops = step_ops(cfg, phase, b, p, c)
            costs = step_costs(ops, cfg.gpu, prof)
        else:  # costed alone by op_cost (merged over groups): the step's power state here
            ops, costs = costed[phase]
            costs = step_power(ops, costs, prof)
        rt = _through_pipeline(cfg, phase, b, p, c, prof, rt_fn(ops, costs, host, prof.eff))
        bound, src = _dominant_arrays(rt, costs, ops)
        res[phase] = (np.broadcast_to(rt.seconds * 1e3, b.shape), bound, src)
    m = mem.memory(cfg.model, cfg.gpu, b, p, c, cfg.tp, cfg.pp, _wdtype(cfg), cfg.kv_dtype or _kvd(cfg),
                   _act_dtype(cfg))
    tot_bytes = m.total_bytes
    w, kv, act, tot = (np.broadcast_to(x / GIB, b.shape) for x in (
        m.weights_bytes, m.kv_cache_bytes, m.activations_bytes, tot_bytes))
    fits = np.broadcast_to(tot_bytes <= m.capacity_bytes, b.shape)
    pms, pb, ps = res["prefill"]
    dms, db, ds = res["decode"]
    pre_err, dec_err, basis = accuracy_of(cfg, prof.name)
    return {"prefill_ms": pms, "decode_ms": dms, "weights_gib": w, "kv_cache_gib": kv, "activations_gib": act,
            "total_gib": tot, "fits": fits, "prefill_bound": np.broadcast_to(pb, b.shape),
            "decode_bound": np.broadcast_to(db, b.shape), "source": np.broadcast_to(np.maximum(ps, ds), b.shape),
            "capacity_gib": cfg.gpu.mem_capacity_bytes / GIB, "profile": prof.name,
            "prefill_err_p90_pct": pre_err, "decode_err_p90_pct": dec_err, "accuracy_basis": basis}


# op kinds whose cost is elementwise over the points of the op's array fields (safe to cost together)
_MERGEABLE = frozenset(("gemm", "attention", "elementwise", "collective", "p2p"))


def _op_signature(op: Op):
    """(what the cost depends on besides the per-point arrays, names of the array fields); None when
    the op must be costed alone."""
    if op.kind not in _MERGEABLE:
        return None, ()
    arrays = []
    sig = [op.kind, op.dtype, op.wdtype, op.device]
    for k, v in op.dims.items():
        if k == "width" and op.kind == "elementwise" and type(v) is int:
            # an elementwise kernel's width only scales its bytes and flops, point by point: kernels of
            # other models' widths are costed together too (as exact float64 products)
            if abs(v) > 1 << 53:
                return None, ()
            sig.append(k)
            arrays.append(k)
        elif type(v) is np.ndarray:
            if v.ndim > 1:
                return None, ()
            sig += (k, v.dtype.str)
            arrays.append(k)
        else:  # the type too: 1, 1.0 and True are equal keys but not the same input
            sig += (k, type(v), v)
    if op.meta:
        sig.append(tuple(sorted(op.meta.items())))
    return tuple(sig), arrays


def _merged_costs(jobs) -> tuple[list[list], set]:
    """Costs of every op of every job ``(profile, gpu, ops, points)``; ops of equal signature on the same
    profile are costed once over the concatenation of their jobs' points, then split back. Also returns
    the jobs whose costing raised (their costs are incomplete)."""
    costs = [[None] * len(ops) for _, _, ops, _ in jobs]
    failed: set = set()
    buckets: dict = {}
    for j, (prof, gpu, ops, _) in enumerate(jobs):
        for i, o in enumerate(ops):
            sig, arrays = _op_signature(o)
            if sig is None or not arrays:
                try:
                    costs[j][i] = op_cost(o, gpu, prof)
                except Exception:
                    failed.add(j)
                continue
            try:
                buckets.setdefault((id(prof), id(gpu), sig), (prof, gpu, arrays, []))[3].append((j, i))
            except TypeError:  # an unhashable field: cost it alone
                buckets[("alone", j, i)] = (prof, gpu, arrays, [(j, i)])
    for prof, gpu, arrays, members in buckets.values():
        try:
            if len(members) == 1:
                j, i = members[0]
                costs[j][i] = op_cost(jobs[j][2][i], gpu, prof)
                continue
            first = jobs[members[0][0]][2][members[0][1]]
            dims = dict(first.dims)
            for k in arrays:
                dims[k] = np.concatenate([_points_of(jobs[j][2][i].dims[k], jobs[j][3]) for j, i in members])
            c = _cost_points(_with_dims(first, dims), gpu, prof, arrays)
        except Exception:
            failed.update(j for j, _ in members)
            continue
        sec, bnd, src, fl, by = c.seconds, c.bound, c.source, c.flops, c.bytes
        if sec.ndim == 0:  # no field depends on the points
            for j, i in members:
                costs[j][i] = c
            continue
        start = 0
        for j, i in members:  # every field has the shape of seconds (OpCost.of)
            end = start + jobs[j][3]
            costs[j][i] = OpCost(sec[start:end], bnd[start:end], src[start:end], fl[start:end], by[start:end])
            start = end
    return costs, failed


def _points_of(v, n: int) -> np.ndarray:
    """A field's value at each of ``n`` points (one value repeated, or the array as it is)."""
    if type(v) is np.ndarray and v.shape == (n,):
        return v
    a = np.asarray(v)
    return np.full(n, a, dtype=a.dtype) if a.ndim == 0 else np.broadcast_to(a, (n,))


def _cost_points(op: Op, gpu, prof, arrays) -> OpCost:
    """``op_cost`` of an op whose array fields are 1-D, costing each distinct point once when the points
    repeat (decode GEMMs of many lines share few batch sizes); costs are elementwise, so the numbers
    are those of costing every point."""
    if len(arrays) == 1:
        v = op.dims[arrays[0]]
        if v.size >= 64 and v.dtype.kind in "iu":
            lo, hi = int(v.min()), int(v.max())
            if lo >= 0 and hi < 4 * v.size:  # small counts: distinct values by a table, not a sort
                seen = np.zeros(hi + 1, dtype=bool)
                seen[v] = True
                u = np.flatnonzero(seen)
                # worth it when the repeats save more than the gather costs (a GEMM point costs most)
                if (v.size - u.size >= 16) if op.kind == "gemm" else (2 * u.size <= v.size):
                    inv = (np.cumsum(seen) - 1)[v]
                    c = op_cost(_with_dims(op, {**op.dims, arrays[0]: u.astype(v.dtype)}), gpu, prof)
                    return OpCost(*(x[inv] if x.ndim else x for x in (c.seconds, c.bound, c.source, c.flops,
                                                                        c.bytes)))
    return op_cost(op, gpu, prof)


def _with_dims(op: Op, dims: dict) -> Op:
    """A copy of ``op`` with other ``dims`` (``dataclasses.replace`` without its per-call introspection)."""
    new = object.__new__(type(op))
    new.__dict__.update(op.__dict__)
    new.__dict__["dims"] = dims
    return new


@functools.cache
def _accuracy_table() -> dict:
    from importlib import resources

    f = resources.files("perfcast.profiles") / "data" / "accuracy.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def accuracy_of(cfg: StepConfig, profile_name: str) -> tuple[float | None, float | None, str]:
    """The p90 |error| measured for this kind of prediction (benchmarks/bench_e2e.py), and its basis.

    A GPU's own profile uses the errors measured with own profiles; a GPU predicted from another GPU's
    ratios on Hopper uses the transfer errors measured between H100 and H200; other architectures were
    never measured, so they get no figure."""
    table = _accuracy_table()
    own = profile_name.startswith("measured:")

    def measured(kind: str, key: str, what: str):
        """(prefill p90, decode p90, basis) of table[kind] at '<phase>:<runtime>:<key>', or None."""
        pre = table.get(kind, {}).get(f"prefill:{cfg.runtime}:{key}")
        dec = table.get(kind, {}).get(f"decode:{cfg.runtime}:{key}")
        if pre is None and dec is None:
            return None
        return (pre or {}).get("p90_pct"), (dec or {}).get("p90_pct"), (
            f"{kind} profile, measured {what} ({(pre or {}).get('n', 0)} prefill, {(dec or {}).get('n', 0)} decode cases)")

    if cfg.dtype == "fp8" and not (cfg.model.is_moe or cfg.model.is_mla) and cfg.wdtype in (None, "fp8") \
            and cfg.kv_dtype in (None, "bf16") and cfg.pp == 1 and own:
        # FP8 linears (e4m3 weights, _scaled_mm), measured on each GPU's own profile: cuda-graph at tp 1;
        # cuda-graph decode and eager prefill at tp 2 (one 2xH200 host)
        got = measured("own", ("tp1" if cfg.tp == 1 else "tp>1") + ":fp8", "FP8 steps")
        if got is not None:
            return got
    if cfg.model.is_moe or cfg.model.is_mla or cfg.dtype not in ("bf16", "fp16"):
        return None, None, ("not validated (MoE, MLA, quantized steps other than FP8 linears, and FP8 on other "
                            "profiles, runtimes or pipeline stages were not measured end to end)")
    if cfg.pp > 1:  # measured with the GPU's own profile only, at tp 1 and tp 2 (benchmarks/bench_pp.py)
        got = measured("own", "pp>1" if cfg.tp == 1 else "tp>1,pp>1",
                       "pipeline-parallel steps" if cfg.tp == 1 else "TP x PP steps") if own else None
        if got is None:
            return None, None, ("not validated (pipeline parallelism was measured on a measured GPU only, at tp 1 "
                                "and, with cuda-graph decode and eager prefill, at tp 2)")
        return got
    if not own and cfg.gpu.architecture != "hopper":
        return None, None, f"not validated: no {cfg.gpu.architecture} GPU was measured (datasheet x Hopper ratios)"
    kind = "own" if own else "transfer"
    return measured(kind, "tp1" if cfg.tp == 1 else "tp>1", "H100/H200 steps") or (
        None, None, f"{kind} profile, measured H100/H200 steps (0 prefill, 0 decode cases)")


def _graph_gaps(cfg: StepConfig, prof, ops) -> list[float]:
    """Per op, seconds per launch of GPU idle between its kernels and the next under ``cuda-graph`` (the
    profile's measured ``graph_gap_s`` times the op's kernels): the step charges it inside each op's time,
    a breakdown shows it apart, in the time no op accounts for (``runtime`` in ``perfcast explain``),
    beside the graph launch. Zero under other runtimes."""
    if cfg.runtime != "cuda-graph":
        return [0.0] * len(ops)
    g = prof.host(host_key(cfg)).graph_gap_s
    return [0.0 if o.kind in ("host", "p2p")  # pipeline sends run outside the graphs
            else g * float(np.asarray(kernels_per_launch(o), dtype=float).ravel()[0]) for o in ops]


def _predict_cfg(cfg: StepConfig, b: int, p: int, c: int, breakdown: bool = False) -> Prediction:
    pred = predict_many(cfg, b, p, c)[0]
    if not breakdown:
        return pred
    rows = []
    for phase in ("prefill", "decode"):
        ops, costs, rt, prof = _phase(cfg, phase, b, p, c)
        total = float(rt.seconds)
        gap = _graph_gaps(cfg, prof, ops)
        for o, cst, s, bnd, g in zip(ops, costs, rt.op_seconds, rt.op_bound, gap):
            per = max(float(np.asarray(s)) - g, 0.0)  # the kernel's own time; the gap after it goes apart
            ms = per * o.count * 1e3
            rows.append({
                "phase": phase, "name": o.name, "kind": o.kind, "count": o.count, "ms": ms,
                "ms_per_launch": per * 1e3,
                "share": ms / (total * 1e3) if total > 0 else 0.0,
                "bound": BOUNDS[int(bnd)], "source": SOURCES[int(cst.source)],
                "flops": float(cst.flops) * o.count, "bytes": float(cst.bytes) * o.count,
            })
    return replace(pred, breakdown=rows)
