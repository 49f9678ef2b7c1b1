"""``perfcast op``: one kernel's predicted time, with its bound and provenance."""

from __future__ import annotations

import math

from dataclasses import dataclass

import numpy as np

from perfcast.hardware import get_gpu
from perfcast.hardware.spec import DTYPE_BYTES
from perfcast.ops.base import BOUNDS, SOURCES, Op
from perfcast.profiles.registry import resolve_profile

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
ELEMENTWISE = ("rmsnorm", "rmsnorm_eager", "layernorm", "silu_mul", "gelu_mul", "gelu", "add", "rope",
               "kv_write", "kv_write_decode", "embedding", "copy", "quant_fp8")
# op -> (required fields, optional fields with defaults)
FIELDS: dict[str, tuple[tuple[str, ...], dict]] = {
    "gemm": (("m", "n", "k"), {}),
    "attention": (("batch", "heads", "head_dim", "q_len", "kv_len"), {"kv_heads": None, "causal": None,
                                                                      "window": None}),
    **{e: (("tokens", "hidden"), {}) for e in ELEMENTWISE},
    **{c: (("bytes", "gpus"), {}) for c in COLLECTIVES},
}


@dataclass(frozen=True)
class OpPrediction:
    op: str
    gpu: str
    ms: float
    bound: str
    source: str
    flops: float
    bytes: float
    profile: str

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["achieved_tflops"] = self.flops / (self.ms * 1e-3) / 1e12 if self.ms > 0 else 0.0
        d["achieved_gbps"] = self.bytes / (self.ms * 1e-3) / 1e9 if self.ms > 0 else 0.0
        return d


def _int_field(name: str, v, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    if not np.isfinite(v) or v != int(v) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def make_op(op: str, dtype: str = "bf16", **f) -> Op:
    """Validate the contract's fields for ``op`` and build the :class:`Op`."""
    if op not in FIELDS:
        raise ValueError(f"unknown op {op!r}; choose one of {', '.join(FIELDS)}")
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_BYTES)}")
    req, opt = FIELDS[op]
    missing = [r for r in req if f.get(r) is None]
    if missing:
        raise ValueError(f"op {op!r} needs field(s) {', '.join(missing)} (has: {', '.join(sorted(f)) or 'none'})")
    if op == "gemm":
        m, n, k = (_int_field(x, f[x]) for x in ("m", "n", "k"))
        return Op(op, "gemm", {"m": m, "n": n, "k": k}, 1, dtype)
    if op == "attention":
        b = _int_field("batch", f["batch"])
        h = _int_field("heads", f["heads"])
        kvh = _int_field("kv_heads", f["kv_heads"]) if f.get("kv_heads") is not None else h
        if h % kvh:
            raise ValueError(f"heads ({h}) must be a multiple of kv_heads ({kvh})")
        hd = _int_field("head_dim", f["head_dim"])
        q = _int_field("q_len", f["q_len"])
        kv = _int_field("kv_len", f["kv_len"])
        if q > kv:
            raise ValueError(f"q_len ({q}) must not exceed kv_len ({kv})")
        causal = f.get("causal")
        causal = (q > 1) if causal is None else causal
        if not isinstance(causal, bool):
            raise ValueError(f"causal must be true or false, got {causal!r}")
        w = f.get("window")
        w = _int_field("window", w) if w is not None else None
        return Op(op, "attention", {"batch": b, "heads": h, "kv_heads": kvh, "head_dim": hd, "q_len": q,
                                    "kv_len": kv, "causal": causal, "window": w}, 1, dtype)
    if op in ELEMENTWISE:
        t = _int_field("tokens", f["tokens"])
        w = _int_field("hidden", f["hidden"])
        return Op(op, "elementwise", {"op": op, "tokens": t, "width": w}, 1, dtype)
    nbytes = _int_field("bytes", f["bytes"])
    g = _int_field("gpus", f["gpus"])
    if g < 2:
        raise ValueError(f"gpus must be >= 2 for a collective, got {g}")
    return Op(op, "collective", {"coll": op, "bytes": nbytes, "gpus": g}, 1, dtype)


def predict_op(op: str, gpu: str, dtype: str = "bf16", profile: str = "auto", **fields) -> OpPrediction:
    """Predict one kernel (fields as in CONTRACT.md's ``perfcast op`` table)."""
    from perfcast.step.costs import op_cost

    g, o, prof = prepare_op(op, gpu, dtype, profile, **fields)
    return op_prediction(op, g, prof, op_cost(o, g, prof))


def prepare_op(op: str, gpu: str, dtype: str = "bf16", profile: str = "auto", **fields):
    """The checked (GPU, op, profile) of one ``perfcast op`` case (raises with the fix)."""
    g = get_gpu(gpu)
    o = make_op(op, dtype, **fields)
    # one kernel is answered as it runs alone (as the tables were timed); model steps apply the power cap
    return g, o, resolve_profile(g, profile).alone()


def op_prediction(op: str, g, prof, c, i=None) -> OpPrediction:
    """The prediction from a cost (point ``i`` of a cost costed over many points)."""
    at = (lambda x: x) if i is None else (lambda x: x[i])
    ms, flops, nbytes = float(at(c.seconds)) * 1e3, float(at(c.flops)), float(at(c.bytes))
    if not (math.isfinite(ms) and math.isfinite(flops) and math.isfinite(nbytes)):
        raise ValueError("the sizes are too large: a result overflows float64 (keep each size below about 1e15)")
    return OpPrediction(op, g.id, ms, BOUNDS[int(at(c.bound))], SOURCES[int(at(c.source))], flops, nbytes, prof.name)


# the fields of each op kind that vary from case to case (the rest fix the kernel's shape)
POINT_FIELDS = {"gemm": ("m",), "attention": ("batch", "q_len", "kv_len"), "elementwise": ("tokens",),
                "collective": ("bytes",)}
