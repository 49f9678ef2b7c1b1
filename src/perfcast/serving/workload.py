"""Requests of a serving run: synthetic (Poisson or gamma arrivals, token-count distributions) or
read from a trace (CSV or JSONL with ``arrival_s``, ``input_tokens``, ``output_tokens``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from perfcast.serving.config import ConfigError, TokenDist, Workload
from perfcast.serving.request import Request

TRACE_COLUMNS = ("arrival_s", "input_tokens", "output_tokens")


def sample_tokens(d: TokenDist, n: int, rng: np.random.Generator, cap: int) -> np.ndarray:
    """``n`` token counts drawn from ``d``, within 1..cap."""
    hi = min(d.max or cap, cap)
    if d.dist == "fixed":
        x = np.full(n, d.value)
    elif d.dist == "uniform":
        x = rng.integers(d.min, hi + 1, size=n)
    else:  # lognormal with the given arithmetic mean
        mu = np.log(d.mean) - d.sigma ** 2 / 2.0
        x = np.round(rng.lognormal(mu, d.sigma, size=n))
    return np.clip(x, max(d.min, 1), hi).astype(np.int64)


def arrivals(w: Workload, rng: np.random.Generator) -> np.ndarray:
    """Arrival times (s) of ``w.requests`` requests, the first at t = 0."""
    n = w.requests
    if w.arrival == "poisson":
        gaps = rng.exponential(1.0 / w.rate_per_s, size=n)
    else:  # gamma: shape 1/cv^2 keeps the mean gap at 1/rate
        k = 1.0 / w.cv ** 2
        gaps = rng.gamma(k, 1.0 / (w.rate_per_s * k), size=n)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def generate(w: Workload, max_positions: int) -> list[Request]:
    """The run's requests, sorted by arrival; the same seed gives the same requests."""
    if w.trace:
        t, p, o = read_trace(w.trace)
    else:
        rng = np.random.default_rng(w.seed)
        t = arrivals(w, rng)
        o = sample_tokens(w.output_tokens, w.requests, rng, max_positions - 1)
        p = sample_tokens(w.input_tokens, w.requests, rng, max_positions - 1)
        p = np.minimum(p, max_positions - o)  # a request never outgrows the context window
    if w.arrival_speedup != 1.0:
        t = np.asarray(t, dtype=float) / w.arrival_speedup
    order = np.argsort(t, kind="stable")
    return [Request(i, float(t[j]), int(p[j]), int(o[j])) for i, j in enumerate(order)]


def read_trace(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Columns ``arrival_s``, ``input_tokens``, ``output_tokens`` of a CSV or JSONL trace."""
    p = Path(path)
    rows: list[dict] = []
    with p.open() as f:
        if p.suffix.lower() in (".jsonl", ".json", ".ndjson"):
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        raise ConfigError(f"{p.name} line {n} is not JSON") from None
        else:
            rows = list(csv.DictReader(f))
    if not rows:
        raise ConfigError(f"trace {p.name} holds no requests")
    missing = [c for c in TRACE_COLUMNS if c not in rows[0]]
    if missing:
        raise ConfigError(f"trace {p.name} lacks column(s) {', '.join(missing)}; it needs "
                          f"{', '.join(TRACE_COLUMNS)}")
    try:
        t = np.array([float(r["arrival_s"]) for r in rows])
        ins = np.array([int(float(r["input_tokens"])) for r in rows])
        outs = np.array([int(float(r["output_tokens"])) for r in rows])
    except (TypeError, ValueError) as e:
        raise ConfigError(f"trace {p.name}: a value is not a number ({e})") from None
    if np.any(t < 0) or np.any(ins < 1) or np.any(outs < 1):
        raise ConfigError(f"trace {p.name}: arrival_s must be >= 0 and token counts >= 1")
    return t, ins, outs
