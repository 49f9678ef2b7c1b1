"""JSON Lines batch mode (CONTRACT.md): one JSON object in, one out, same order, errors in place.

Lines that share a deployment (model, gpu, tp, pp, dtypes, runtime, profile) are predicted together
through the vectorized step model, so a file of many lines costs little more than one.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable

import numpy as np

PREDICT_KEYS = ("model", "gpu", "tp", "pp", "dtype", "runtime", "profile", "kv_dtype", "wdtype", "ep",
                "moe_imbalance")
PREDICT_DEFAULTS = {"tp": 1, "pp": 1, "ep": 1, "moe_imbalance": 1.0, "dtype": "bf16", "runtime": "cuda-graph",
                    "profile": "auto",
                    "kv_dtype": None, "wdtype": None}


def _err(msg: str) -> dict:
    return {"error": str(msg).splitlines()[0] if str(msg) else "error"}


def parse_line(line: str):
    """A dict, or an error dict when the line is not a JSON object."""
    s = line.strip()
    if not s:
        return None, _err("empty line: expected one JSON object")
    try:
        obj = json.loads(s, parse_constant=lambda c: float(c))
    except (json.JSONDecodeError, RecursionError, ValueError) as e:
        return None, _err(f"not valid JSON ({e.__class__.__name__}: {e}); expected one JSON object per line")
    if not isinstance(obj, dict):
        return None, _err(f"expected a JSON object, got {type(obj).__name__}")
    return obj, None


def _as_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{name} must be a positive integer, got {json.dumps(v)[:60]}")
    if isinstance(v, float) and (not math.isfinite(v) or v != int(v)):
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    iv = int(v)
    if iv < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if iv > 1 << 40:
        raise ValueError(f"{name}={iv} is too large")
    return iv


def _str_or_none(name: str, v):
    if v is None or isinstance(v, str):
        return v
    raise ValueError(f"{name} must be a string, got {json.dumps(v)[:60]}")


def predict_lines(lines: Iterable[str]) -> tuple[list[dict], bool]:
    """Predict each line; returns (output objects in order, all_ok)."""
    from perfcast.step.predict import _predict_cfg, check_lengths, make_config, predict_many

    outputs: list[dict | None] = []
    groups: dict[tuple, list[tuple[int, int, int, int]]] = {}
    configs: dict[tuple, object] = {}
    singles: list[tuple[int, dict]] = []
    for i, line in enumerate(lines):
        obj, err = parse_line(line)
        outputs.append(err)
        if err:
            continue
        try:
            if obj.get("model") is None:
                raise ValueError("missing field 'model' (a shipped id such as meta-llama/Llama-3.1-8B, or a path)")
            if obj.get("gpu") is None:
                raise ValueError("missing field 'gpu' (e.g. h100-sxm; `perfcast gpus` lists them)")
            vals = {k: obj.get(k, PREDICT_DEFAULTS.get(k)) for k in PREDICT_KEYS}
            if vals["tp"] is None:
                vals["tp"] = 1
            if vals["pp"] is None:
                vals["pp"] = 1
            for k in ("model", "gpu", "dtype", "runtime", "profile", "kv_dtype", "wdtype"):
                _str_or_none(k, vals[k])
            vals["tp"], vals["pp"] = _as_int("tp", vals["tp"]), _as_int("pp", vals["pp"])
            vals["ep"] = _as_int("ep", 1 if vals["ep"] is None else vals["ep"])
            mi = 1.0 if vals["moe_imbalance"] is None else vals["moe_imbalance"]
            if isinstance(mi, bool) or not isinstance(mi, (int, float)) or not math.isfinite(mi):
                raise ValueError(f"moe_imbalance must be a number >= 1, got {json.dumps(mi)[:60]}")
            vals["moe_imbalance"] = float(mi)
            for k in ("dtype", "runtime", "profile"):
                if vals[k] is None:
                    vals[k] = PREDICT_DEFAULTS[k]
            b = _as_int("batch", obj.get("batch", 1))
            p = _as_int("prompt", obj.get("prompt", 512))
            c = _as_int("context", obj.get("context", p))
            key = tuple(vals[k] for k in PREDICT_KEYS)
            if key not in configs:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    configs[key] = make_config(**vals)
            cfg = configs[key]
            check_lengths(cfg, p, c)
            if obj.get("offload") is not None:
                from perfcast.offload.plans import predict_offload_case

                outputs[i] = predict_offload_case(cfg, obj, b, p, c)
                continue
            if obj.get("breakdown"):
                singles.append((i, {"cfg": cfg, "b": b, "p": p, "c": c}))
            else:
                groups.setdefault(key, []).append((i, b, p, c))
        except Exception as e:  # every failure becomes this line's error, never a traceback
            outputs[i] = _err(e if str(e) else e.__class__.__name__)
    for key, rows in groups.items():
        cfg = configs[key]
        idx = [r[0] for r in rows]
        try:
            preds = predict_many(cfg, np.array([r[1] for r in rows]), np.array([r[2] for r in rows]),
                                 np.array([r[3] for r in rows]))
            for i, pr in zip(idx, preds):
                outputs[i] = pr.to_dict()
        except Exception as e:
            for i in idx:
                outputs[i] = _err(e)
    for i, a in singles:
        try:
            outputs[i] = _predict_cfg(a["cfg"], a["b"], a["p"], a["c"], True).to_dict(breakdown=True)
        except Exception as e:
            outputs[i] = _err(e)
    ok = all("error" not in o for o in outputs)
    return outputs, ok


OP_KEYS = ("op", "gpu", "dtype", "profile")


def op_lines(lines: Iterable[str]) -> tuple[list[dict], bool]:
    from perfcast.ops.predict import predict_op

    outputs = []
    for line in lines:
        obj, err = parse_line(line)
        if err:
            outputs.append(err)
            continue
        try:
            for k in ("op", "gpu"):
                if obj.get(k) is None:
                    raise ValueError(f"missing field {k!r}")
            for k in OP_KEYS:
                _str_or_none(k, obj.get(k))
            fields = {k: v for k, v in obj.items() if k not in OP_KEYS}
            r = predict_op(obj["op"], obj["gpu"], obj.get("dtype") or "bf16", obj.get("profile") or "auto",
                           **fields)
            outputs.append(r.to_dict())
        except Exception as e:
            outputs.append(_err(e if str(e) else e.__class__.__name__))
    return outputs, all("error" not in o for o in outputs)


def read_lines(path: str) -> list[str]:
    import sys

    if path == "-":
        data = sys.stdin.buffer.read()
    else:
        with open(path, "rb") as f:
            data = f.read()
    text = data.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln.removesuffix("\r") for ln in lines]


def dumps(obj: dict) -> str:
    return json.dumps(obj, allow_nan=False, default=_default)


def _default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
