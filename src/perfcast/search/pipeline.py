"""Deployment search: enumerate, prune by memory, pre-screen analytically, verify by simulation.

1. Every combination of GPU type, TP, PP, ``max_num_seqs``, ``max_batched_tokens`` and
   aggregated / disaggregated (prefill:decode replicas per unit) is listed.
2. Layouts the model cannot use and deployments whose memory holds no KV cache are dropped.
3. For each remaining candidate the analytic steady state (:mod:`perfcast.search.analytic`) gives
   the most requests/s one unit sustains within the SLA, hence the units the rate needs, the GPU
   count and the $/hour.
4. The ``verify`` cheapest candidates (by the ranking key) and the analytic Pareto set are
   simulated for ``sim_requests`` requests at their share of the rate; units are added until the
   simulated p90 TTFT and p90 TPOT meet the SLA. Only simulated deployments that meet it are
   reported, ranked by $/hour (or GPU count).

Work is grouped by layout (GPU, TP, PP) so that each worker builds one iteration-time table per
layout; groups run on local processes or on Ray.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from perfcast.search.executors import Pool
from perfcast.search.space import Candidate, SearchRequest, candidates, prune

RANKS = ("cost", "gpus")


@dataclass
class SearchResult:
    request: SearchRequest
    results: list  # Outcome, simulated and meeting the SLA, best first
    frontier: list  # Pareto set of results: tokens/s per GPU vs tokens/s per user
    considered: int = 0
    pruned: int = 0
    screened_out: int = 0
    simulated: int = 0
    seconds: float = 0.0
    rejected: dict = field(default_factory=dict)  # reason -> count

    def to_dict(self) -> dict:
        r = self.request
        return {"model": r.model, "rate_per_s": r.rate_per_s,
                "sla": {"ttft_p90_ms": r.sla_ttft_ms, "tpot_p90_ms": r.sla_tpot_ms},
                "considered": self.considered, "pruned_memory": self.pruned, "screened_out": self.screened_out,
                "simulated": self.simulated, "seconds": self.seconds, "rejected": self.rejected,
                "results": [o.row() for o in self.results], "frontier": [o.row() for o in self.frontier]}


def rank_key(rank: str):
    if rank not in RANKS:
        raise ValueError(f"unknown ranking {rank!r}; choose one of {', '.join(RANKS)}")
    if rank == "cost":
        return lambda o: (o.cost_per_hour_usd, o.gpus, o.ttft_p90_ms, _limits(o))
    return lambda o: (o.gpus, o.cost_per_hour_usd, o.ttft_p90_ms, _limits(o))


def _limits(o) -> tuple[int, int]:
    return (o.candidate.max_num_seqs, o.candidate.max_batched_tokens)


def pareto(outcomes: list) -> list:
    """Outcomes no other beats on both tokens/s per GPU and tokens/s per user."""
    front, best_gpu = [], -1.0
    for o in sorted(outcomes, key=lambda o: (-o.tokens_per_s_per_user, -o.tokens_per_s_per_gpu)):
        if o.tokens_per_s_per_gpu > best_gpu:
            front.append(o)
            best_gpu = o.tokens_per_s_per_gpu
    return front


def _representatives(ranked: list) -> list:
    """One candidate per distinct analytic outcome of a layout and mode: where the scheduler
    limits do not bind, every limit gives the same estimate, and the largest limits (the least
    likely to bind in a real, bursty run) stand for them all."""
    seen = set()
    loosest_first = sorted(ranked, key=lambda o: (-o.candidate.max_num_seqs, -o.candidate.max_batched_tokens))
    keep = set()
    for o in loosest_first:
        c = o.candidate
        k = (c.layout, c.mode, o.units, round(o.ttft_p90_ms, 3), round(o.tpot_p90_ms, 3))
        if k not in seen:
            seen.add(k)
            keep.add(o)
    return [o for o in ranked if o in keep]


def _collapse(ranked: list) -> list:
    """Merge results of one layout and mode that simulated to the same numbers (limits that did not
    bind); the first in rank order stays, counting the others in ``equivalent``."""
    from dataclasses import replace

    first: dict[tuple, int] = {}
    out: list = []
    for o in ranked:
        c = o.candidate
        k = (c.layout, c.mode, o.units, o.ttft_p90_ms, o.tpot_p90_ms)
        if k in first:
            i = first[k]
            out[i] = replace(out[i], equivalent=out[i].equivalent + 1)
        else:
            first[k] = len(out)
            out.append(o)
    return out


def _by_layout(items: list, cand=lambda x: x) -> list[list]:
    groups: dict[tuple, list] = {}
    for x in items:
        groups.setdefault(cand(x).layout, []).append(x)
    return sorted(groups.values(), key=len, reverse=True)


def search(req: SearchRequest, executor: str = "local", workers: int | None = None, rank: str = "cost",
           pool: Pool | None = None, progress=None) -> SearchResult:
    """``progress(stage, done, total)``, if given, is called as work units finish."""
    from perfcast.search.evaluate import estimate_many, verify_many, warm

    t0 = time.perf_counter()
    warm(req)
    key = rank_key(rank)
    all_c = candidates(req)
    kept, why = prune(req, all_c)
    rejected: dict[str, int] = {}
    for reason in why.values():
        rejected[reason] = rejected.get(reason, 0) + 1
    own = pool is None
    pool = pool or Pool(executor, workers)
    try:
        tick_e = (lambda d, n: progress("estimate", d, n)) if progress else None
        tick_v = (lambda d, n: progress("simulate", d, n)) if progress else None
        est = [o for part in pool.map(estimate_many, [(req, g) for g in _by_layout(kept)], tick_e) for o in part]
        feasible = sorted((o for o in est if o.meets_sla), key=key)
        for o in est:
            if not o.meets_sla:
                rejected[o.reason] = rejected.get(o.reason, 0) + 1
        reps = _representatives(feasible)
        pick = list(dict.fromkeys(reps[:req.verify] + pareto(reps)))
        groups = _by_layout(pick, lambda o: o.candidate)
        sims = [o for part in pool.map(verify_many, [(req, g) for g in groups], tick_v) for o in part]
    finally:
        if own:
            pool.close()
    for o in sims:
        if not o.meets_sla:
            rejected[o.reason] = rejected.get(o.reason, 0) + 1
    good = _collapse(sorted((o for o in sims if o.meets_sla), key=key))
    return SearchResult(req, good, pareto(good), len(all_c), len(all_c) - len(kept),
                        len(est) - len(feasible), len(sims), time.perf_counter() - t0, rejected)


__all__ = ["RANKS", "Candidate", "SearchRequest", "SearchResult", "pareto", "search"]
