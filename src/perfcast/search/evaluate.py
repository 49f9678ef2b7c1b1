"""Evaluate candidates in a worker process: analytic estimates for a layout's candidates, then
short simulations of the ones worth verifying. Both take and return plain picklable objects, so
local processes and Ray workers run them alike."""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

from perfcast.hardware import get_gpu
from perfcast.search.analytic import Aggregated, Disaggregated
from perfcast.search.space import Candidate, SearchRequest, mean_tokens
from perfcast.serving import config as sc
from perfcast.serving.capacity import kv_bytes_per_token, kv_capacity
from perfcast.serving.simulator import Simulator
from perfcast.serving.steptime import iteration_model
from perfcast.step.predict import make_config

MAX_ATTEMPTS = 4


@dataclass(frozen=True)
class Outcome:
    """One candidate at the requested rate: how many units, what it costs, what it achieves."""

    candidate: Candidate
    units: int
    gpus: int
    cost_per_hour_usd: float
    ttft_p90_ms: float
    tpot_p90_ms: float
    tpot_mean_ms: float
    tokens_per_s_per_gpu: float
    tokens_per_s_per_user: float
    meets_sla: bool
    source: str  # "analytic" (estimate) or "simulated"
    reason: str | None = None
    equivalent: int = 1  # configurations (other limits) that simulated to the same numbers

    def row(self) -> dict:
        c = asdict(self.candidate)
        c["mode"] = self.candidate.mode
        d = {k: v for k, v in asdict(self).items() if k != "candidate"}
        return {**c, **d}


def price(req: SearchRequest, gpu_id: str) -> float:
    g = get_gpu(gpu_id)
    return float(req.prices.get(g.id, g.price_per_hour_usd))


def _layout_model(req: SearchRequest, c: Candidate):
    """The step config and one iteration-time table per layout, big enough for every limit searched."""
    step = _step_config(req.model, c.gpu, c.tp, c.pp, req.dtype, req.runtime, req.profile)
    return step, iteration_model(step, max(req.max_batched_tokens), max(req.max_num_seqs))


@functools.cache
def _step_config(*args):
    return make_config(*args)


def estimate(req: SearchRequest, c: Candidate) -> Outcome:
    """Analytic: units needed at the rate, cost, and latencies estimated at each unit's share."""
    step, model = _layout_model(req, c)
    P, O = mean_tokens(req.input_tokens), max(mean_tokens(req.output_tokens), 1.0)
    cap = kv_capacity(step, req.block_size, c.max_batched_tokens, req.gpu_memory_utilization)
    kv_tokens = cap.blocks // c.pp * req.block_size  # per engine (a PP replica runs pp of them)
    ttft_s, tpot_s = req.sla_ttft_ms / 1e3, req.sla_tpot_ms / 1e3
    if c.disaggregated:
        xfer = P * kv_bytes_per_token(step) * 8.0 / (req.kv_link_gbps * 1e9)
        unit = Disaggregated(model, P, O, c.max_num_seqs, c.max_batched_tokens, kv_tokens, c.prefill * c.pp,
                             c.decode * c.pp, xfer)
        engines = 1
    else:
        unit = Aggregated(model, P, O, c.max_num_seqs, c.max_batched_tokens, kv_tokens)
        engines = c.pp
    top = unit.estimate(ttft_s, tpot_s)
    if top.rate_per_s <= 0:
        return Outcome(c, 0, 0, math.inf, top.ttft_ms, top.tpot_ms, top.tpot_ms, 0.0, 0.0, False, "analytic",
                       top.reason)
    units = math.ceil(req.rate_per_s / (top.rate_per_s * engines))
    e = unit.estimate(ttft_s, tpot_s, req.rate_per_s / units / engines)
    gpus = units * c.gpus_per_unit
    return Outcome(c, units, gpus, gpus * price(req, c.gpu), e.ttft_ms, e.tpot_ms, e.tpot_ms,
                   req.rate_per_s * O / gpus, 1e3 / e.tpot_ms, True, "analytic")


def warm(req: SearchRequest) -> None:
    """Load the GPUs' profiles here, before workers fork: they inherit them instead of each
    loading its own (a fraction of a second each)."""
    from perfcast.profiles.registry import resolve_profile

    for g in req.gpus:
        resolve_profile(get_gpu(g), req.profile)


def estimate_many(task: tuple[SearchRequest, list[Candidate]]) -> list[Outcome]:
    req, cands = task
    return [estimate(req, c) for c in cands]


def simulate_unit(req: SearchRequest, c: Candidate, units: int):
    """Simulate one unit at its share of the rate (Poisson thinning: a random 1/units of a
    Poisson stream is Poisson), with ``req.sim_requests`` requests."""
    cfg = sc.ServingConfig(
        model=req.model, gpu=c.gpu, tp=c.tp, pp=c.pp, replicas=1, dtype=req.dtype, runtime=req.runtime,
        profile=req.profile, max_num_seqs=c.max_num_seqs, max_batched_tokens=c.max_batched_tokens,
        block_size=req.block_size, gpu_memory_utilization=req.gpu_memory_utilization,
        disaggregated=sc.Disaggregated(c.prefill, c.decode, req.kv_link_gbps) if c.disaggregated else None,
        workload=sc.Workload("poisson", req.rate_per_s / units, req.sim_requests, req.input_tokens,
                          req.output_tokens, req.seed))
    return Simulator(cfg).run().summary


def _meets(req: SearchRequest, s: dict) -> bool:
    tpot = s["tpot_ms"]["p90"]
    return (not s["overloaded"] and s["ttft_ms"]["p90"] <= req.sla_ttft_ms
            and (tpot is None or tpot <= req.sla_tpot_ms))


def verify(req: SearchRequest, guess: Outcome) -> Outcome:
    """Simulate at the analytic unit count, then step down while the SLA still holds, or up
    (by a quarter) until it does; at most ``MAX_ATTEMPTS`` simulations."""
    units, best, tries = max(guess.units, 1), None, 0
    try:
        s = simulate_unit(req, guess.candidate, units)
        tries += 1
        if _meets(req, s):
            best = (units, s)
            while units > 1 and tries < MAX_ATTEMPTS:
                s = simulate_unit(req, guess.candidate, units - 1)
                tries += 1
                if not _meets(req, s):
                    break
                units -= 1
                best = (units, s)
        while best is None and tries < MAX_ATTEMPTS:
            units += max(1, math.ceil(units * 0.25))
            s = simulate_unit(req, guess.candidate, units)
            tries += 1
            if _meets(req, s):
                best = (units, s)
    except sc.ConfigError as e:
        return _failed(guess, str(e).splitlines()[0])
    if best is None:
        return _failed(guess, f"misses the SLA in simulation even with {units} units")
    return _simulated(req, guess.candidate, *best)


def _simulated(req: SearchRequest, c: Candidate, units: int, s: dict) -> Outcome:
    gpus = units * c.gpus_per_unit
    tpot_mean = s["tpot_ms"]["mean"] or s["itl_ms"]["mean"] or math.inf
    return Outcome(c, units, gpus, gpus * price(req, c.gpu), s["ttft_ms"]["p90"], s["tpot_ms"]["p90"] or 0.0,
                   tpot_mean, req.rate_per_s * mean_tokens(req.output_tokens) / gpus, 1e3 / tpot_mean, True,
                   "simulated")


def _failed(guess: Outcome, reason: str) -> Outcome:
    return Outcome(guess.candidate, 0, 0, math.inf, guess.ttft_p90_ms, guess.tpot_p90_ms, guess.tpot_mean_ms,
                   0.0, 0.0, False, "simulated", reason)


def verify_many(task: tuple[SearchRequest, list[Outcome]]) -> list[Outcome]:
    req, guesses = task
    return [verify(req, g) for g in guesses]
