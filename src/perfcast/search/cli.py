"""``perfcast search``. Light to import (click only); the search loads inside the command."""

from __future__ import annotations

import json
import sys

import click


def register(main: click.Group) -> None:
    main.add_command(search)


def _ints(name: str, s: str) -> tuple[int, ...]:
    try:
        v = tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--{name} takes comma-separated integers, got {s!r}") from None
    if not v or min(v) < 1:
        raise ValueError(f"--{name} takes positive integers, got {s!r}")
    return v


def _splits(s: str) -> tuple[tuple[int, int], ...]:
    if s.strip().lower() in ("", "none", "off"):
        return ()
    out = []
    for part in s.split(","):
        try:
            p, d = (int(x) for x in part.split(":"))
        except ValueError:
            raise ValueError(f"--disagg takes prefill:decode pairs such as 1:1,1:2, got {part!r}") from None
        if p < 1 or d < 1:
            raise ValueError(f"--disagg counts must be >= 1, got {part!r}")
        out.append((p, d))
    return tuple(out)


def _tokens(name: str, s: str):
    from perfcast.serving.config import TokenDist

    try:
        v = json.loads(s)
    except json.JSONDecodeError:
        raise ValueError(f"--{name} takes an integer or a JSON object such as "
                         '\'{"dist": "lognormal", "mean": 512, "sigma": 0.8}\'') from None
    return TokenDist.parse(name.replace("-", "_"), v)


@click.command()
@click.option("--model", required=True, help="Model id or config.json path.")
@click.option("--rate", type=float, required=True, help="Requests per second to serve.")
@click.option("--sla-ttft-ms", type=float, required=True, help="p90 time to first token, ms.")
@click.option("--sla-tpot-ms", type=float, required=True, help="p90 time per output token, ms.")
@click.option("--gpus", default=None, help="Comma-separated GPU ids [default: every catalog GPU with a price].")
@click.option("--max-gpus", type=int, default=8, show_default=True, help="Most GPUs in one replica (tp x pp).")
@click.option("--tp", "tps", default="1,2,4,8", show_default=True)
@click.option("--pp", "pps", default="1,2", show_default=True)
@click.option("--max-num-seqs", default="32,64,128,256", show_default=True)
@click.option("--max-batched-tokens", default="2048,4096,8192,16384", show_default=True)
@click.option("--disagg", default="1:1,1:2,2:1", show_default=True,
              help="Disaggregated prefill:decode replicas per unit to try ('none' for aggregated only).")
@click.option("--kv-link-gbps", type=float, default=400.0, show_default=True, help="Prefill-to-decode KV link.")
@click.option("--input-tokens", default="512", show_default=True, help="Integer or JSON distribution.")
@click.option("--output-tokens", default="128", show_default=True, help="Integer or JSON distribution.")
@click.option("--dtype", default="bf16", show_default=True)
@click.option("--runtime", default="cuda-graph", show_default=True)
@click.option("--profile", default="auto", show_default=True)
@click.option("--prices", "prices_path", default=None, help="JSON or CSV of $/GPU-hour by GPU.")
@click.option("--rank", type=click.Choice(["cost", "gpus"]), default="cost", show_default=True)
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--workers", type=int, default=None, help="Worker processes [default: all cores].")
@click.option("--sim-requests", type=int, default=300, show_default=True, help="Requests per verifying simulation.")
@click.option("--verify", type=int, default=40, show_default=True,
              help="Simulate this many of the best analytic candidates (plus their Pareto set).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--csv", "csv_out", default=None, help="Write every result to this CSV file.")
@click.option("--plot", "plot_out", default=None, help="Write the Pareto plot (PNG) here.")
@click.option("--top", type=int, default=15, show_default=True, help="Rows in the printed table.")
def search(model, rate, sla_ttft_ms, sla_tpot_ms, gpus, max_gpus, tps, pps, max_num_seqs, max_batched_tokens,
           disagg, kv_link_gbps, input_tokens, output_tokens, dtype, runtime, profile, prices_path, rank,
           executor, workers, sim_requests, verify, seed, as_json, csv_out, plot_out, top):
    """Find the cheapest deployments that meet p90 TTFT and p90 TPOT at a request rate."""
    from perfcast.cli import _fail, _table

    try:
        req = _request(model, rate, sla_ttft_ms, sla_tpot_ms, gpus, max_gpus, tps, pps, max_num_seqs,
                       max_batched_tokens, disagg, kv_link_gbps, input_tokens, output_tokens, dtype, runtime,
                       profile, prices_path, sim_requests, verify, seed)
        import sys

        from perfcast.search.pipeline import search as run_search

        show = not as_json and sys.stderr.isatty()
        res = run_search(req, executor, workers, rank, progress=_bar if show else None)
        if show:
            sys.stderr.write("\n")
    except (ValueError, OSError) as e:
        _fail(e)
    from perfcast.search import output

    notes = []
    if csv_out:
        output.write_csv(res, csv_out)
        notes.append(f"CSV written to {csv_out}")
    if plot_out:
        notes.append(output.plot(res, plot_out))
    if as_json:
        click.echo(json.dumps(res.to_dict()))
        for n in notes:
            click.echo(n, err=True)
        return
    _table(f"{model} at {rate:g} req/s: p90 TTFT <= {sla_ttft_ms:g} ms, p90 TPOT <= {sla_tpot_ms:g} ms "
           f"(ranked by {rank})", list(output.HEADERS), output.table_rows(res, top))
    click.echo(f"{res.considered} configurations: {res.pruned} pruned by memory, {res.screened_out} screened "
               f"out analytically, {res.simulated} simulated, {len(res.results)} meet the SLA; "
               f"Pareto frontier {len(res.frontier)}; {res.seconds:.2f} s")
    if not res.results:
        reasons = sorted(res.rejected.items(), key=lambda kv: -kv[1])[:3]
        click.echo("nothing meets the SLA; most common reasons: "
                   + "; ".join(f"{why} ({n})" for why, n in reasons), err=True)
    for n in notes:
        click.echo(n)
    sys.stdout.flush()


def _request(model, rate, sla_ttft_ms, sla_tpot_ms, gpus, max_gpus, tps, pps, max_num_seqs, max_batched_tokens,
             disagg, kv_link_gbps, input_tokens, output_tokens, dtype, runtime, profile, prices_path,
             sim_requests, verify, seed):
    from perfcast.hardware import get_gpu, list_gpus
    from perfcast.search.prices import load_prices
    from perfcast.search.space import SearchRequest
    from perfcast.step.predict import make_config

    for name, v in (("rate", rate), ("sla-ttft-ms", sla_ttft_ms), ("sla-tpot-ms", sla_tpot_ms),
                    ("kv-link-gbps", kv_link_gbps)):
        if not v > 0:
            raise ValueError(f"--{name} must be > 0, got {v}")
    prices = load_prices(prices_path) if prices_path else {}
    if gpus:
        ids = tuple(dict.fromkeys(get_gpu(g.strip()).id for g in gpus.split(",") if g.strip()))
    else:
        ids = tuple(g.id for g in list_gpus() if prices.get(g.id, g.price_per_hour_usd) > 0)
    make_config(model, ids[0], dtype=dtype, runtime=runtime)  # fail early on a bad model/dtype/runtime
    splits = _splits(disagg)
    return SearchRequest(
        model=model, rate_per_s=rate, sla_ttft_ms=sla_ttft_ms, sla_tpot_ms=sla_tpot_ms, gpus=ids,
        max_gpus=max_gpus, tp=_ints("tp", tps), pp=_ints("pp", pps), max_num_seqs=_ints("max-num-seqs", max_num_seqs),
        max_batched_tokens=_ints("max-batched-tokens", max_batched_tokens), splits=splits,
        input_tokens=_tokens("input-tokens", input_tokens), output_tokens=_tokens("output-tokens", output_tokens),
        dtype=dtype, runtime=runtime, profile=profile, kv_link_gbps=kv_link_gbps, sim_requests=sim_requests,
        verify=verify, seed=seed, prices=prices)


def _bar(stage: str, done: int, total: int) -> None:

    width = 30
    k = int(width * done / max(total, 1))
    sys.stderr.write(f"\rsearch: {stage:8s} [{'#' * k}{'.' * (width - k)}] {done}/{total} groups")
    sys.stderr.flush()
