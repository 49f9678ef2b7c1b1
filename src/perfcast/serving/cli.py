"""``perfcast simulate`` (and ``perfcast search``, from perfcast.search.cli). Light to import:
click only; the simulator loads inside the command."""

from __future__ import annotations

import json
import sys

import click


def register(main: click.Group) -> None:
    main.add_command(simulate)
    from perfcast.search.cli import register as register_search

    register_search(main)


def _fail(e: Exception):
    from perfcast.cli import _fail as fail

    fail(e)


@click.command()
@click.option("--config", "config_path", required=True, help="Serving config, JSON or YAML (see docs/serving.md).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--per-request", is_flag=True, help="Add one row per request (id, arrival_s, ttft_ms, e2e_ms, ...).")
@click.option("--trace-out", type=click.Path(dir_okay=False), default=None,
              help="Write a Chrome/Perfetto trace of every iteration of every replica.")
@click.option("--sensitivity", type=float, default=None, metavar="PCT",
              help="Also report the latencies if every iteration were PCT % faster or slower (two more runs).")
def simulate(config_path, as_json, per_request, trace_out, sensitivity):
    """Simulate serving a workload: TTFT, TPOT, ITL, E2E percentiles, throughput, goodput, KV use."""
    from perfcast.serving.config import load_config
    from perfcast.serving.simulator import Simulator
    from perfcast.serving.trace import write_chrome_trace

    try:
        cfg = load_config(config_path)
        sim = Simulator(cfg, trace=trace_out is not None)
        show = not as_json and sys.stderr.isatty()
        report = sim.run(_progress_bar if show else None)
        if show:
            click.echo("", err=True)
        if trace_out:
            write_chrome_trace(report.engines, trace_out)
    except (ValueError, OSError) as e:
        _fail(e)
    out = report.to_dict(per_request=per_request)
    if sensitivity is not None:
        from perfcast.serving.simulator import sensitivity as band

        try:
            out["sensitivity"] = band(cfg, sensitivity)
        except ValueError as e:
            _fail(e)
    if as_json:
        click.echo(json.dumps(out))
        return
    _print(out, per_request)
    if trace_out:
        click.echo(f"trace written to {trace_out} (open it in https://ui.perfetto.dev)")


def _progress_bar(done: int, total: int) -> None:
    width = 40
    k = int(width * done / max(total, 1))
    sys.stderr.write(f"\rsimulating [{'#' * k}{'.' * (width - k)}] {done}/{total} requests")
    sys.stderr.flush()


def _print(s: dict, per_request: bool) -> None:
    from perfcast.cli import _table

    dep = f"{s['model']} on {s['gpus']} x {s['gpu']} (tp={s['tp']}, pp={s['pp']}, {s['scheduler']}"
    dep += f", disaggregated {s['disaggregated']})" if s["disaggregated"] else f", {s['replicas']} replica(s))"
    rows = [[m] + [s[m][k] for k in ("mean", "p50", "p90", "p99")] for m in ("ttft_ms", "tpot_ms", "itl_ms",
                                                                         "e2e_ms", "queue_ms")]
    _table(dep, ["metric", "mean", "p50", "p90", "p99"], rows)
    kv = s["kv_cache"]
    click.echo(f"requests {s['requests']}  duration {s['duration_s']:.3f} s  "
               f"output {s['output_tokens_per_s']:.1f} tok/s  requests {s['requests_per_s']:.3f}/s  "
               f"preemptions {s['preemptions']}")
    click.echo(f"KV cache: {kv['blocks_per_engine']} blocks x {kv['block_size']} tokens per engine, "
               f"mean {100 * kv['mean_used_fraction']:.1f}% used, peak {100 * kv['peak_used_fraction']:.1f}%")
    if "goodput" in s:
        g = s["goodput"]
        click.echo(f"goodput: {g['requests_meeting_sla']} of {s['requests']} requests meet the SLA "
                   f"({100 * g['fraction']:.1f}%), {g['requests_per_s']:.3f} req/s")
    if s["overloaded"]:
        click.echo(f"WARNING: {s['overload_message']}")
    if "sensitivity" in s:
        b, pct = s["sensitivity"], s["sensitivity"]["service_time_pct"]

        def fmt(v):
            return "-" if v is None else f"{v:.1f}"

        _table(f"if every iteration took {pct:g}% less / more time",
               ["metric", f"p90 at -{pct:g}%", "p90", f"p90 at +{pct:g}%", f"mean at -{pct:g}%", "mean",
                f"mean at +{pct:g}%"],
               [[m, fmt(b["faster"][m]["p90"]), fmt(s[m]["p90"]), fmt(b["slower"][m]["p90"]),
                 fmt(b["faster"][m]["mean"]), fmt(s[m]["mean"]), fmt(b["slower"][m]["mean"])]
                for m in ("ttft_ms", "tpot_ms", "e2e_ms")])
    if per_request:
        _table("per request", ["id", "arrival_s", "ttft_ms", "e2e_ms", "output_tokens"],
               [[r["id"], r["arrival_s"], r["ttft_ms"], r["e2e_ms"], r["output_tokens"]] for r in s["per_request"]])
