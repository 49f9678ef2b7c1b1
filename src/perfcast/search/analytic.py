"""Analytic pre-screen: how many requests/s one unit sustains within the SLA, and its latencies at
a given rate, from the iteration-time model the simulator uses, in a steady state instead of an
event loop.

Aggregated (continuous batching, chunked prefill): with ``n`` requests decoding, an iteration of
time ``t`` holds ``n`` decode tokens and, by Little's law, ``n * P / O`` prompt tokens (``P``,
``O``: mean prompt and output tokens); the arrival rate is ``n / (O * t)``. TPOT ~ ``t``; TTFT ~
half an iteration of waiting plus the iterations the prompt's chunks take. The largest ``n`` whose
TPOT and TTFT stay under ``MARGIN`` x the SLA, within ``max_num_seqs``, the token budget and the
KV cache, gives the engine's rate. These are means held against a p90 target, yet the estimate
came out close to, and mostly below, simulation: on seven layouts (8B to 70B, A100/L40S/H100,
aggregated and disaggregated) the simulated rate at which p90 TTFT and TPOT just meet the SLA was
0.98-1.3x the estimate with ``MARGIN = 1`` (the steady state charges every iteration the mean
prompt load, while in the simulation most iterations are decode-only).

Disaggregated: prefill replicas as an M/D/1 queue of full-budget iterations (TTFT = prefill time
x (1 + rho / (2 (1 - rho)))); decode replicas as above without prompt tokens, plus the KV
transfer spread over the output tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from perfcast.serving.steptime import IterationModel, chunk_pairs

MARGIN = 1.0
MAX_RHO = 0.9


@dataclass(frozen=True)
class Estimate:
    rate_per_s: float  # most requests/s the unit sustains within the SLA (0: none)
    ttft_ms: float  # at the rate asked for (or at the most, when none was asked)
    tpot_ms: float
    reason: str | None = None


def prefill_seconds(model: IterationModel, prompt: int, budget: int) -> float:
    """One prompt alone, cut into chunks of ``budget`` tokens."""
    t, done = 0.0, 0
    while done < prompt:
        q = min(budget, prompt - done)
        t += model.seconds(q, 1, 0, 0.0, 1, q, chunk_pairs(q, done + q))
        done += q
    return t


def _largest(ok, hi: float) -> float:
    """Largest n in (0, hi] with ok(n), for ok true at small n and monotone (0 if never)."""
    lo = min(1e-3, hi)
    if not ok(lo):
        return 0.0
    if ok(hi):
        return hi
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
        if hi - lo < 0.01 * hi:
            break
    return lo


def _fixed_point(seconds, rate: float, O: float, n_max: float) -> float:
    """Decode concurrency n = rate * O * t(n) (Little's law), from below."""
    n = 0.0
    for _ in range(60):
        new = min(rate * O * seconds(n), n_max)
        if abs(new - n) <= 1e-3 * max(new, 1e-9):
            return new
        n = new
    return n


class Aggregated:
    """One engine doing both phases."""

    def __init__(self, model: IterationModel, P: float, O: float, max_seqs: int, budget: int, kv_tokens: float):
        self.m, self.P, self.O, self.budget = model, P, O, budget
        self.ctx = P + O / 2.0
        self.n_max = min(float(max_seqs), budget / (1.0 + P / O), kv_tokens / self.ctx)

    def iteration(self, n: float) -> float:
        nd, prompts = max(1, round(n)), n / self.O
        q = max(1, round(prompts * self.P))
        chunks = max(1, math.ceil(prompts))
        return self.m.seconds(nd + q, nd + chunks, nd, nd * self.ctx, chunks, q,
                              prompts * self.P * (self.P + 1) / 2.0)

    def ttft(self, n: float, t: float) -> float:
        nd = round(n)
        room = max(self.budget - nd, 1)
        first = int(min(max(round(self.P), 1), room))  # a new prompt's chunk, among the decodes
        t_in = self.m.seconds(nd + first, nd + 1, nd, nd * self.ctx, 1, first, chunk_pairs(first, first))
        return 0.5 * t + math.ceil(self.P / room) * t_in

    def estimate(self, ttft_s: float, tpot_s: float, rate: float | None = None) -> Estimate:
        if self.n_max <= 0:
            return Estimate(0.0, math.inf, math.inf, "no room for one request")

        def ok(n):
            t = self.iteration(n)
            return t <= MARGIN * tpot_s and self.ttft(n, t) <= MARGIN * ttft_s

        n = _largest(ok, self.n_max)
        if n == 0.0:
            t = self.iteration(1e-3)
            why = ("a decode step alone exceeds the TPOT SLA" if t > MARGIN * tpot_s
                   else "the prefill alone exceeds the TTFT SLA")
            return Estimate(0.0, self.ttft(0, t) * 1e3, t * 1e3, why)
        most = n / (self.O * self.iteration(n))
        if rate is not None and rate < most:
            n = _fixed_point(self.iteration, rate, self.O, self.n_max)
        t = self.iteration(n)
        return Estimate(most, self.ttft(n, t) * 1e3, t * 1e3)


class Disaggregated:
    """``prefill`` prefill engines and ``decode`` decode engines per unit."""

    def __init__(self, model: IterationModel, P: float, O: float, max_seqs: int, budget: int, kv_tokens: float,
                 prefill: int, decode: int, xfer_s: float):
        self.m, self.P, self.O, self.prefill, self.decode = model, P, O, prefill, decode
        self.ctx = P + O / 2.0
        self.n_max = min(float(max_seqs), kv_tokens / self.ctx)
        self.spread = xfer_s / max(O - 1.0, 1.0)  # the transfer delays one token of O - 1
        Pi = max(1, round(P))
        self.t_alone = prefill_seconds(model, Pi, budget)
        k = max(1, budget // Pi)
        self.cap_p = (k / model.seconds(k * Pi, k, 0, 0.0, k, k * Pi, k * chunk_pairs(Pi, Pi))
                      if Pi <= budget else 1.0 / self.t_alone)

    def step(self, n: float) -> float:
        nd = max(1, round(n))
        return self.m.decode(nd, nd * self.ctx)

    def estimate(self, ttft_s: float, tpot_s: float, rate: float | None = None) -> Estimate:
        if self.t_alone > MARGIN * ttft_s:
            return Estimate(0.0, self.t_alone * 1e3, math.inf, "the prefill alone exceeds the TTFT SLA")
        x = MARGIN * ttft_s / self.t_alone - 1.0
        rate_p = self.prefill * min(MAX_RHO, 2 * x / (1 + 2 * x)) * self.cap_p
        n = _largest(lambda n: self.step(n) + self.spread <= MARGIN * tpot_s, self.n_max)
        if n == 0.0:
            return Estimate(0.0, self.t_alone * 1e3, (self.step(1) + self.spread) * 1e3,
                            "a decode step alone exceeds the TPOT SLA")
        most = min(rate_p, self.decode * n / (self.O * self.step(n)))
        r = most if rate is None or rate >= most else rate
        rho = r / (self.prefill * self.cap_p)
        n = _fixed_point(self.step, r / self.decode, self.O, self.n_max)
        return Estimate(most, self.t_alone * (1 + rho / (2 * (1 - rho))) * 1e3,
                        (self.step(n) + self.spread) * 1e3)
