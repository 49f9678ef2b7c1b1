"""The step model's API: one prediction, or a vectorized sweep over batch/prompt/context."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from perfcast.hardware import get_gpu
from perfcast.hardware.spec import DTYPE_BYTES, GPUSpec
from perfcast.models import get_model
from perfcast.models.builder import GRAPH_LAYOUT, HF_LAYOUT, MEGATRON_LAYOUT, StepShape, build_ops
from perfcast.models.spec import ModelSpec
from perfcast.ops.base import BOUNDS, SOURCES, Op
from perfcast.profiles.registry import resolve_profile
from perfcast.step import memory as mem
from perfcast.step.costs import op_cost
from perfcast.step.runtime import get_runtime

GIB = mem.GIB
WEIGHT_DTYPES = ("bf16", "fp16", "fp8", "int8", "int4", "fp32")


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

    def to_dict(self, breakdown: bool = False) -> dict:
        d = {k: getattr(self, k) for k in (
            "model", "gpu", "batch", "prompt", "context", "tp", "pp", "dtype", "runtime",
            "prefill_ms", "decode_ms", "weights_gib", "kv_cache_gib", "activations_gib", "total_gib",
            "fits", "capacity_gib", "profile", "prefill_bound", "decode_bound", "source")}
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
                kv_dtype=None, wdtype=None) -> StepConfig:
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
    get_runtime(runtime)
    return StepConfig(spec, g, int(tp), int(pp), dtype, runtime, str(profile), kv_dtype, wdtype)


def _layout(cfg: StepConfig):
    if cfg.runtime == "eager":
        return HF_LAYOUT if cfg.tp == 1 else MEGATRON_LAYOUT
    return GRAPH_LAYOUT


def _act_dtype(cfg: StepConfig) -> str:
    # weight-only int4/int8 run bf16 activations; fp8 runs fp8 GEMMs
    return cfg.dtype if cfg.dtype in ("bf16", "fp16", "fp32", "fp8") else "bf16"


def step_ops(cfg: StepConfig, phase: str, batch, prompt, context) -> list[Op]:
    shape = StepShape(phase, np.asarray(batch), np.asarray(prompt), np.asarray(context))
    wd = cfg.wdtype or (cfg.dtype if cfg.dtype in ("int8", "int4") else None)
    return build_ops(cfg.model, shape, cfg.tp, _act_dtype(cfg), _layout(cfg), cfg.kv_dtype, wd, cfg.pp)


def _phase(cfg: StepConfig, phase: str, batch, prompt, context):
    prof = resolve_profile(cfg.gpu, cfg.profile)
    ops = step_ops(cfg, phase, batch, prompt, context)
    costs = [op_cost(o, cfg.gpu, prof) for o in ops]
    rt = get_runtime(cfg.runtime)(ops, costs, prof.host(_host_key(cfg)), prof.eff)
    return ops, costs, rt, prof


def _host_key(cfg: StepConfig) -> str:
    if cfg.runtime == "eager":
        return "eager-hf" if cfg.tp == 1 else "eager-tp"
    return cfg.runtime


def check_lengths(cfg: StepConfig, prompt, context):
    mp = cfg.model.max_positions
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
    b, p, c = np.broadcast_arrays(_pos_int("batch", batch), _pos_int("prompt", prompt),
                                  _pos_int("context", context))
    check_lengths(cfg, p, c)
    out = _sweep_cfg(cfg, b, p, c)
    if as_frame:
        import pandas as pd  # optional

        return pd.DataFrame({"batch": b.ravel(), "prompt": p.ravel(), "context": c.ravel(),
                             **{k: np.ravel(v) for k, v in out.items()}})
    return out


def _sweep_cfg(cfg: StepConfig, b, p, c) -> dict:
    _, _, pre, _ = _phase(cfg, "prefill", b, p, c)
    _, _, dec, _ = _phase(cfg, "decode", b, p, c)
    m = mem.memory(cfg.model, cfg.gpu, b, p, c, cfg.tp, cfg.pp, _wdtype(cfg), cfg.kv_dtype or _kvd(cfg),
                   _act_dtype(cfg))
    return {
        "prefill_ms": np.broadcast_to(pre.seconds * 1e3, b.shape),
        "decode_ms": np.broadcast_to(dec.seconds * 1e3, b.shape),
        "weights_gib": np.broadcast_to(m.weights_bytes / GIB, b.shape),
        "kv_cache_gib": np.broadcast_to(m.kv_cache_bytes / GIB, b.shape),
        "activations_gib": np.broadcast_to(m.activations_bytes / GIB, b.shape),
        "total_gib": np.broadcast_to(m.total_bytes / GIB, b.shape),
        "fits": np.broadcast_to(m.fits, b.shape),
    }


def _wdtype(cfg: StepConfig) -> str:
    return cfg.wdtype or cfg.dtype


def _kvd(cfg: StepConfig) -> str:
    return cfg.dtype if cfg.dtype in ("bf16", "fp16", "fp32") else "bf16"


def _dominant(rt, costs, ops) -> tuple[str, str]:
    """The bound of the op family holding the most time, and the weakest provenance among big ops."""
    total = float(rt.seconds)
    by_bound: dict[int, float] = {}
    weakest = 0
    for o, c, s, bnd in zip(ops, costs, rt.op_seconds, rt.op_bound):
        t = float(np.asarray(s)) * o.count
        by_bound[int(bnd)] = by_bound.get(int(bnd), 0.0) + t
        if total > 0 and t / total >= 0.05:
            weakest = max(weakest, int(c.source))
    if rt.host_bound.item():
        return "host", SOURCES[weakest]
    b = max(by_bound, key=by_bound.get) if by_bound else 0
    return BOUNDS[b], SOURCES[weakest]


def predict(model, gpu, batch: int = 1, prompt: int = 512, context: int = 512, tp: int = 1, pp: int = 1,
            dtype: str = "bf16", runtime: str = "cuda-graph", profile: str = "auto", breakdown: bool = False,
            kv_dtype: str | None = None, wdtype: str | None = None) -> Prediction:
    """Predict one step: prefill (TTFT without queueing) and one decode step (TPOT), and memory."""
    cfg = make_config(model, gpu, tp, pp, dtype, runtime, profile, kv_dtype, wdtype)
    b = int(_pos_int("batch", batch))
    p = int(_pos_int("prompt", prompt))
    c = int(_pos_int("context", context))
    check_lengths(cfg, p, c)
    return _predict_cfg(cfg, b, p, c, breakdown)


def _predict_cfg(cfg: StepConfig, b: int, p: int, c: int, breakdown: bool = False) -> Prediction:
    rows = []
    res = {}
    for phase in ("prefill", "decode"):
        ops, costs, rt, prof = _phase(cfg, phase, b, p, c)
        res[phase] = _dominant(rt, costs, ops) + (float(rt.seconds) * 1e3, prof.name)
        if breakdown:
            total = float(rt.seconds)
            for o, cst, s, bnd in zip(ops, costs, rt.op_seconds, rt.op_bound):
                ms = float(np.asarray(s)) * o.count * 1e3
                rows.append({
                    "phase": phase, "name": o.name, "kind": o.kind, "count": o.count, "ms": ms,
                    "ms_per_launch": float(np.asarray(s)) * 1e3,
                    "share": ms / (total * 1e3) if total > 0 else 0.0,
                    "bound": BOUNDS[int(bnd)], "source": SOURCES[int(cst.source)],
                    "flops": float(cst.flops) * o.count, "bytes": float(cst.bytes) * o.count,
                })
    m = mem.memory(cfg.model, cfg.gpu, b, p, c, cfg.tp, cfg.pp, _wdtype(cfg), cfg.kv_dtype or _kvd(cfg),
                   _act_dtype(cfg))
    pb, ps, pms, pname = res["prefill"]
    db, ds, dms, _ = res["decode"]
    order = {s: i for i, s in enumerate(SOURCES)}
    return Prediction(
        model=cfg.model.name, gpu=cfg.gpu.id, batch=b, prompt=p, context=c, tp=cfg.tp, pp=cfg.pp,
        dtype=cfg.dtype, runtime=cfg.runtime, prefill_ms=pms, decode_ms=dms,
        weights_gib=float(m.weights_bytes) / GIB, kv_cache_gib=float(m.kv_cache_bytes) / GIB,
        activations_gib=float(m.activations_bytes) / GIB, total_gib=float(m.total_bytes) / GIB,
        fits=bool(m.fits), capacity_gib=cfg.gpu.mem_capacity_bytes / GIB, profile=pname,
        prefill_bound=pb, decode_bound=db, source=max(ps, ds, key=order.get), breakdown=rows,
    )
