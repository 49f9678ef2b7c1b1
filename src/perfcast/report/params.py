"""Checking the web UI's inputs: query strings or JSON bodies -> keyword arguments for the API.

Every problem raises :class:`BadInput` with a message that says what would be valid; the web layer
turns it into a 400 JSON answer. The UI takes only shipped model ids and the ``auto``/``none``
profiles, never a file path, so a browser cannot make the server read files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# generous but bounded, so one request cannot ask for unbounded work
LIMITS = {"batch": 1 << 20, "prompt": 1 << 22, "context": 1 << 22, "tp": 1024, "pp": 1024}
PROFILES = ("auto", "none")
AXES = ("batch", "context")
MAX_SWEEP_POINTS = 64
CASE_FIELDS = ("model", "gpu", "batch", "prompt", "context", "tp", "pp", "dtype", "runtime", "profile")
_DIGITS = re.compile(r"[ \t]*[0-9]{1,12}[ \t]*")  # ASCII only: int() also reads other scripts' digits


class BadInput(ValueError):
    """The request cannot be answered as given; the message says why and what would be valid."""


def dtypes() -> tuple[str, ...]:
    from perfcast.step.predict import WEIGHT_DTYPES

    return WEIGHT_DTYPES


def runtimes() -> list[str]:
    from perfcast.step.runtime import runtimes as names

    return names()


def _norm(s: str) -> str:
    return "".join(ch for ch in s.lower() if ch.isalnum())


def shipped_model(name) -> str:
    """The shipped model id that ``name`` spells (full Hugging Face id or the part after '/')."""
    from perfcast.models import list_models

    if not isinstance(name, str) or not name.strip():
        raise BadInput("model must be the id of a shipped model (GET /api/models lists them)")
    ids = list_models()
    table = {_norm(i): i for i in ids}
    for i in ids:
        table.setdefault(_norm(i.split("/")[-1]), i)
    hit = table.get(_norm(name))
    if hit is None:
        raise BadInput(f"unknown model {name[:80]!r}; GET /api/models lists the shipped ones")
    return hit


def gpu_id(name) -> str:
    from perfcast.hardware import get_gpu

    if not isinstance(name, str) or not name.strip():
        raise BadInput("gpu must be a GPU id or alias such as h100-sxm (GET /api/gpus lists them)")
    try:
        return get_gpu(name[:200]).id
    except ValueError as e:
        raise BadInput(str(e)) from None


def positive_int(name: str, value) -> int:
    """A positive integer from JSON (int, or a float with no fraction) or a query string."""
    limit = LIMITS[name]
    if isinstance(value, str):
        if not _DIGITS.fullmatch(value):
            raise BadInput(f"{name} must be a positive integer, got {value[:40]!r}")
        value = int(value)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"{name} must be a positive integer, got {type(value).__name__}")
    if not 1 <= value <= limit:
        raise BadInput(f"{name} must be between 1 and {limit}, got {value}")
    return value


def choice(name: str, value, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        shown = value[:40] if isinstance(value, str) else type(value).__name__
        raise BadInput(f"unknown {name} {shown!r}; choose one of {', '.join(choices)}")
    return value


def _check_fields(src: Mapping, allowed: tuple[str, ...]) -> None:
    unknown = sorted(str(k)[:40] for k in src if k not in allowed)
    if unknown:
        raise BadInput(f"unknown field(s) {', '.join(unknown)}; accepted: {', '.join(allowed)}")


def parse_case(src: Mapping) -> dict:
    """Keyword arguments for :func:`perfcast.predict` (``context`` defaults to ``prompt``)."""
    if not isinstance(src, Mapping):
        raise BadInput("expected a JSON object of fields (model, gpu, batch, prompt, context, ...)")
    _check_fields(src, CASE_FIELDS)
    case = {"model": shipped_model(src.get("model")), "gpu": gpu_id(src.get("gpu"))}
    for name, default in (("batch", 1), ("prompt", 512), ("tp", 1), ("pp", 1)):
        case[name] = positive_int(name, src.get(name, default))
    case["context"] = positive_int("context", src.get("context", case["prompt"]))
    case["dtype"] = choice("dtype", src.get("dtype", "bf16"), dtypes())
    case["runtime"] = choice("runtime", src.get("runtime", "cuda-graph"), runtimes())
    case["profile"] = choice("profile", src.get("profile", "auto"), PROFILES)
    return case


def parse_values(name: str, raw) -> list[int]:
    """Sweep values: a JSON list of integers or a comma-separated string."""
    if isinstance(raw, str):
        raw = [v for v in raw.split(",") if v.strip()]
    if not isinstance(raw, list) or not raw:
        raise BadInput(f"values must be a non-empty list of {name} values, e.g. 1,2,4,8")
    if len(raw) > MAX_SWEEP_POINTS:
        raise BadInput(f"at most {MAX_SWEEP_POINTS} sweep values, got {len(raw)}")
    return [positive_int(name, v) for v in raw]


def parse_sweep(src: Mapping) -> tuple[dict, str, list[int]]:
    """(case, axis, values): ``axis`` is ``batch`` (at the case's prompt and context) or ``context``
    (at the case's batch, with prompt == context)."""
    if not isinstance(src, Mapping):
        raise BadInput("expected a JSON object of fields (model, gpu, axis, values, ...)")
    _check_fields(src, CASE_FIELDS + ("axis", "values"))
    axis = choice("axis", src.get("axis", "batch"), AXES)
    values = parse_values(axis, src.get("values"))
    case = parse_case({k: v for k, v in src.items() if k not in ("axis", "values")})
    return case, axis, values
