"""``perfcast explain``, ``perfcast report`` and ``perfcast ui``.

Imports click only: numpy, rich, matplotlib and Flask load inside the commands, so that
``perfcast --help`` stays fast.
"""

from __future__ import annotations

import sys

import click


class _Error(click.ClickException):
    """One line on stderr, exit 1, no traceback (the format of perfcast.cli.UserError)."""

    def show(self, file=None):
        click.echo(f"perfcast: error: {self.message}", err=True)


def _fail(e: Exception | str):
    msg = str(e).strip().strip("'\"") or e.__class__.__name__
    raise _Error(msg.splitlines()[0])


def _ints(text: str | None, name: str) -> list[int] | None:
    if text is None:
        return None
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        vals = []
    if not vals or min(vals) < 1:
        raise _Error(f"--{name} must be a comma-separated list of positive integers, got {text!r}")
    return vals


def _case_options(*middle, context_help: str):
    """The deployment flags shared by explain and report (as in ``perfcast predict``); ``middle``
    options are listed right after --model."""
    opts = [
        click.option("--model", required=True, help="Shipped model id (`perfcast models`) or a path to config.json."),
        *middle,
        click.option("--batch", type=int, default=8, show_default=True, help="Sequences per step."),
        click.option("--context", type=int, default=None, help=context_help),
        click.option("--tp", type=int, default=1, show_default=True),
        click.option("--pp", type=int, default=1, show_default=True),
        click.option("--dtype", default="bf16", show_default=True),
        click.option("--runtime", default="cuda-graph", show_default=True, help="cuda-graph or eager."),
        click.option("--profile", default="auto", show_default=True, help="auto, none, or a calibrated profile dir."),
    ]

    def deco(fn):
        for opt in reversed(opts):
            fn = opt(fn)
        return fn

    return deco


def _console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


@click.command()
@_case_options(click.option("--gpu", required=True, help="GPU id or alias (`perfcast gpus`)."),
               click.option("--prompt", type=int, default=2048, show_default=True,
                            help="Prompt tokens per sequence (prefill)."),
               context_help="KV-cache tokens per sequence at decode [default: prompt].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write pictures (breakdown, families, memory, roofline) and explain.json here.")
@click.option("--format", "fmt", type=click.Choice(["png", "svg"]), default="png", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the explanation as JSON instead of tables.")
def explain(model, gpu, batch, prompt, context, tp, pp, dtype, runtime, profile, out_dir, fmt, as_json):
    """Why a step takes the time it takes: per-op breakdown with bound and provenance, time by op family,
    memory by component, and the ops on the GPU's roofline."""
    from perfcast.report.explain import explain as build

    try:
        exp = build(model, gpu, batch, prompt, context, tp, pp, dtype, runtime, profile)
    except Exception as e:
        _fail(e)
    written = []
    if out_dir is not None:
        from pathlib import Path

        from perfcast.batch import dumps
        from perfcast.report.plots import PlotUnavailable, write_figures

        try:
            written = write_figures(exp, out_dir, fmt)
        except PlotUnavailable as e:
            _fail(e)
        except OSError as e:
            _fail(f"cannot write to {out_dir}: {e}")
        path = Path(out_dir) / "explain.json"
        path.write_text(dumps(exp.to_dict()) + "\n", encoding="utf-8")
        written.append(path)
    if as_json:
        from perfcast.batch import dumps

        click.echo(dumps(exp.to_dict()))
        return
    from perfcast.report.tables import print_explanation

    console = _console()
    print_explanation(exp, console)
    for p in written:
        console.print(f"wrote {p}")


@click.command()
@_case_options(click.option("--gpus", required=True, help="Comma-separated GPU ids or aliases, e.g. h100-sxm,h200."),
               context_help="Context (= prompt) of the reference point and of the batch sweep [default: 2048].")
@click.option("--batches", default=None, help="Batch sizes to sweep [default: 1,2,4,...,1024].")
@click.option("--contexts", default=None, help="Contexts to sweep [default: 256,512,... up to the model's limit].")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default="report.html", show_default=True)
@click.option("--title", default=None, help="Page title.")
def report(model, gpus, batch, context, tp, pp, dtype, runtime, profile, batches, contexts, out_path, title):
    """A self-contained, offline HTML report comparing GPUs: latency vs batch and context, throughput vs
    latency, GPU vs GPU, and the memory wall. Reference point: --batch at --context (default 2048)."""
    from perfcast.report.html import write_report
    from perfcast.report.sweeps import report_data

    names = [g.strip() for g in gpus.split(",") if g.strip()]
    try:
        data = report_data(model, names, batch, 2048 if context is None else context, _ints(batches, "batches"),
                           _ints(contexts, "contexts"), tp, pp, dtype, runtime, profile)
    except _Error:
        raise
    except Exception as e:
        _fail(e)
    try:
        path = write_report(data, out_path, title)
    except OSError as e:
        _fail(f"cannot write {out_path}: {e}")
    for s in data["skipped"]:
        click.echo(f"perfcast: warning: {s['gpu']} left out: {s['error']}", err=True)
    click.echo(f"wrote {path} ({len(data['gpus'])} GPUs, {path.stat().st_size // 1024} KiB, no external resources)")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (keep it local).")
@click.option("--port", type=int, default=8765, show_default=True, help="0 picks a free port.")
@click.option("--quiet", is_flag=True, help="Do not log each request.")
def ui(host, port, quiet):
    """A local web app: pick model, GPU, parallelism, dtype, runtime, batch and context, and see the
    prediction, breakdown and charts update. Needs Flask: pip install 'perfcast[web]'."""
    try:
        from perfcast.report.web import serve
    except ImportError as e:
        _fail(f"the web UI needs Flask: pip install 'perfcast[web]' ({e})")
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"perfcast: warning: serving on {host}: anyone who can reach it can use it", err=True)
    try:
        serve(host, port, quiet)
    except OSError as e:
        _fail(f"cannot listen on {host}:{port}: {e}")


def register(main: click.Group) -> None:
    """Add the report commands to the ``perfcast`` group."""
    for cmd in (explain, report, ui):
        main.add_command(cmd)
