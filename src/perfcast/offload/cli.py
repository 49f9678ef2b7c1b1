"""CLI commands of the offload package: ``perfcast offload`` and ``perfcast calibrate-cpu``.

Kept light (click only at import); the work is imported inside each command.
"""

from __future__ import annotations

import sys

import click


def register(main: click.Group) -> None:
    main.add_command(offload)
    main.add_command(calibrate_cpu)


class _UserError(click.ClickException):
    """One line on stderr, exit 1, no traceback (as perfcast.cli does)."""

    def show(self, file=None):
        click.echo(f"perfcast: error: {self.message}", err=True)


def _fail(e: Exception):
    raise _UserError(str(e).splitlines()[0] if str(e) else e.__class__.__name__)


def _table(title: str, columns: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i == 0 or c == "pick" else "right")
    for r in rows:
        t.add_row(*[f"{x:.4g}" if isinstance(x, float) else str(x) for x in r])
    Console(width=None if sys.stdout.isatty() else 200).print(t)


@click.command()
@click.option("--model", required=True, help="Shipped model id (`perfcast models`) or a path to config.json.")
@click.option("--gpu", required=True, help="GPU id or alias (`perfcast gpus`).")
@click.option("--cpu", required=True, help="CPU id (`perfcast cpus`) or a `perfcast calibrate-cpu` directory.")
@click.option("--vram-gib", type=float, default=None, help="VRAM budget [default: the GPU's memory].")
@click.option("--batch", type=int, default=1, show_default=True)
@click.option("--prompt", type=int, default=512, show_default=True)
@click.option("--context", type=int, default=None, help="KV-cache tokens at decode [default: prompt].")
@click.option("--cpu-threads", type=int, default=None, help="CPU threads [default: all cores].")
@click.option("--dtype", default="bf16", show_default=True)
@click.option("--runtime", default="cuda-graph", show_default=True, help="GPU runtime: cuda-graph or eager.")
@click.option("--profile", default="auto", show_default=True, help="GPU profile: auto, none or a directory.")
@click.option("--sparsity", type=float, default=0.0, show_default=True,
              help="Neuron plans: FFN neurons inactive per token (~0.9 for ReLU models, 0 for SwiGLU).")
@click.option("--activation-profile", default=None, help="Neuron plans: per-neuron firing frequencies file.")
@click.option("--all", "show_all", is_flag=True, help="Show every candidate, not the best 12.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def offload(model, gpu, cpu, vram_gib, batch, prompt, context, cpu_threads, dtype, runtime, profile, sparsity,
            activation_profile, show_all, as_json):
    """Pick where layers, FFNs, experts or neurons live when the model does not fit the GPU."""
    from perfcast.offload.search import search

    try:
        r = search(model, gpu, cpu, vram_gib, batch, prompt, context, cpu_threads, dtype, runtime, profile,
                   sparsity, activation_profile)
    except Exception as e:
        _fail(e)
    if as_json:
        from perfcast.batch import dumps

        slim = dict(r)
        slim["candidates"] = [{k: v for k, v in c.items() if k != "detail"} for c in r["candidates"]]
        click.echo(dumps(slim))
        sys.exit(0 if r.get("best") else 1)
    _print(r, show_all)
    sys.exit(0 if r.get("best") else 1)


def _print(r: dict, show_all: bool) -> None:
    marks = {}
    for key, tag in (("best", "best"), ("memory_first", "memory-first"), ("frequency_first", "frequency-first")):
        if r.get(key):
            marks.setdefault(r[key]["label"], []).append(tag)
    rows = r["candidates"] if show_all else r["candidates"][:12]
    extra = [r[k] for k in ("memory_first", "frequency_first") if r.get(k) and r[k] not in rows]
    table = []
    for c in rows + extra:
        table.append([c["label"], c["decode_tokens_per_s"], c["decode_ms"], c["prefill_ms"], c["gpu_ms"],
                      c["cpu_ms"], c["pcie_ms"], c["handoff_ms"], c["gpu_gib"], c["cpu_gib"], "yes" if c["fits"] else "NO",
                      ", ".join(marks.get(c["label"], []))])
    title = (f"perfcast offload: {r['model']} on {r['gpu']} ({r['vram_gib']:.1f} GiB) + {r['cpu']} "
             f"({r['cpu_threads']} threads), b{r['batch']} p{r['prompt']} c{r['context']}")
    _table(title, ["name", "decode tok/s", "decode ms", "prefill ms", "gpu ms", "cpu ms", "pcie ms", "hand-off ms",
                   "GiB GPU", "GiB CPU", "fits", "pick"], table)
    if r.get("error"):
        click.echo(f"perfcast: {r['error']}", err=True)
    elif r.get("speedup_vs_memory_first"):
        click.echo(f"best: {r['best']['label']} = {r['speedup_vs_memory_first']:.2f}x the decode tokens/s of "
                   f"llama.cpp's memory-first {r['memory_first']['label']}")


@click.command("calibrate-cpu", add_help_option=False,
               context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def calibrate_cpu(ctx):
    """Measure this host's CPU (GEMV/GEMM, memory bandwidth, PCIe copies) into a CPU profile directory."""
    from perfcast.measure import cpu_calibrate

    sys.exit(cpu_calibrate.main(list(ctx.args)) or 0)


__all__ = ["calibrate_cpu", "offload", "register"]
