"""Request-level serving simulation on top of the step model.

    from perfcast.serving import load_config, simulate
    report = simulate(load_config("serve.json"))
    report.summary["ttft_ms"]["p90"]

Layout: ``config`` (what a run is), ``workload`` (its requests), ``capacity`` (KV blocks from the
memory model), ``steptime`` (iteration time from the step model), ``schedulers/`` (engines and
routers), ``events`` + ``simulator`` (the event loop), ``metrics`` (the report), ``trace`` (Chrome
trace), ``cli`` (``perfcast simulate``). Importing this package is light; the names below load on
first use.
"""

_EXPORTS = {
    "ConfigError": "perfcast.serving.config", "ServingConfig": "perfcast.serving.config",
    "load_config": "perfcast.serving.config", "parse_config": "perfcast.serving.config",
    "Report": "perfcast.serving.metrics", "Simulator": "perfcast.serving.simulator",
    "simulate": "perfcast.serving.simulator", "write_chrome_trace": "perfcast.serving.trace",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'perfcast.serving' has no attribute {name!r}")
