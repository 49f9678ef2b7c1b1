"""Deployment search on top of the serving simulator and the step model.

    from perfcast.search import SearchRequest, search
    res = search(SearchRequest(model="meta-llama/Llama-3.1-8B", rate_per_s=20, sla_ttft_ms=500,
                               sla_tpot_ms=50, gpus=("h100-sxm", "a100-80gb")))
    res.results[0].cost_per_hour_usd

Layout: ``space`` (candidates, memory pruning), ``analytic`` (steady-state pre-screen),
``evaluate`` (per-candidate work run in workers), ``executors`` (local processes or Ray),
``pipeline`` (the search itself and the Pareto frontier), ``prices``, ``output``, ``cli``.
Importing this package is light; the names below load on first use.
"""

_EXPORTS = {
    "search": "perfcast.search.pipeline", "SearchResult": "perfcast.search.pipeline",
    "pareto": "perfcast.search.pipeline", "SearchRequest": "perfcast.search.space",
    "Candidate": "perfcast.search.space", "Outcome": "perfcast.search.evaluate",
    "load_prices": "perfcast.search.prices",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'perfcast.search' has no attribute {name!r}")
