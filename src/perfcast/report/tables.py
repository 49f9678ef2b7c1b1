"""Print an :class:`~perfcast.report.explain.Explanation` as rich tables."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from perfcast.report.explain import PHASES, Explanation

BOUND_STYLE = {"compute": "magenta", "memory": "cyan", "latency": "yellow", "launch": "yellow",
               "network": "green", "host": "red"}
SOURCE_STYLE = {"measured": "green", "interpolated": "yellow", "analytical": "red"}


def num(x, digits: int = 4) -> str:
    """A compact number: 4 significant digits, exponent only for very large or small values."""
    if x is None:
        return "-"
    if x == 0:
        return "0"
    return f"{x:.{digits}g}" if 1e-3 <= abs(x) < 1e6 else f"{x:.{digits - 1}e}"


def _styled(value: str, styles: dict) -> str:
    style = styles.get(value)
    return f"[{style}]{value}[/{style}]" if style else value


def _table(title: str, columns: list[tuple[str, str]]) -> Table:
    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for name, justify in columns:
        t.add_column(name, justify=justify, no_wrap=justify == "left")
    return t


def summary_table(exp: Explanation) -> Table:
    p = exp.prediction
    t = _table(f"{p['model']} on {p['gpu']}: batch {p['batch']}, prompt {p['prompt']}, context "
               f"{p['context']}, tp {p['tp']}, pp {p['pp']}, {p['dtype']}, {p['runtime']}",
               [("phase", "left"), ("ms", "right"), ("bound", "left"), ("tokens/s", "right")])
    t.add_row("prefill (TTFT)", num(p["prefill_ms"]), _styled(p["prefill_bound"], BOUND_STYLE),
              num(p["batch"] * p["prompt"] / (p["prefill_ms"] * 1e-3)))
    t.add_row("decode (TPOT)", num(p["decode_ms"]), _styled(p["decode_bound"], BOUND_STYLE),
              num(p["batch"] / (p["decode_ms"] * 1e-3)))
    t.caption = (f"profile: {p['profile']}; least-trusted source among the big ops: "
                 f"{_styled(p['source'], SOURCE_STYLE)}")
    return t


def ops_table(exp: Explanation, phase: str) -> Table:
    total = exp.prediction[f"{phase}_ms"]
    t = _table(f"{phase}: {num(total)} ms per step, by op",
               [("op", "left"), ("kind", "left"), ("count", "right"), ("ms", "right"),
                ("ms/launch", "right"), ("share %", "right"), ("bound", "left"), ("source", "left"),
                ("FLOP/byte", "right"), ("TFLOP/s", "right"), ("GB/s", "right")])
    for r in sorted(exp.phase_ops(phase), key=lambda r: -r["ms"]):
        tf = r["achieved_flops_per_s"]
        gb = r["achieved_bytes_per_s"]
        t.add_row(r["name"], r["kind"], str(r["count"]), num(r["ms"]), num(r["ms_per_launch"]),
                  f"{100 * r['share']:.1f}", _styled(r["bound"], BOUND_STYLE), _styled(r["source"], SOURCE_STYLE),
                  num(r["intensity_flop_per_byte"], 3), num(tf / 1e12 if tf else None, 3),
                  num(gb / 1e9 if gb else None, 3))
    return t


def families_table(exp: Explanation) -> Table:
    t = _table("time by op family (runtime = time outside kernels: gaps between kernels, graph launch, host dispatch)",
               [("phase", "left"), ("family", "left"), ("launches", "right"), ("ms", "right"),
                ("share %", "right")])
    for phase in PHASES:
        for r in (f for f in exp.families if f["phase"] == phase):
            t.add_row(phase, r["kind"], str(r["launches"]), num(r["ms"]), f"{100 * r['share']:.1f}")
    return t


def memory_table(exp: Explanation) -> Table:
    p = exp.prediction
    fits = "[green]fits[/green]" if p["fits"] else "[red]does NOT fit[/red]"
    t = _table(f"memory per GPU: {num(p['total_gib'])} of {num(p['capacity_gib'])} GiB ({fits})",
               [("component", "left"), ("GiB", "right"), ("% of capacity", "right")])
    for r in exp.memory:
        t.add_row(r["component"], num(r["gib"]), f"{100 * r['share_of_capacity']:.1f}")
    return t


def roofline_table(exp: Explanation) -> Table:
    r = exp.roofline
    t = _table(f"roofline of {r['gpu']} ({r['dtype']})", [("ceiling", "left"), ("value", "right")])
    t.add_row("peak compute", f"{num(r['peak_flops_per_s'] / 1e12)} TFLOP/s")
    t.add_row("memory bandwidth", f"{num(r['mem_bw_bytes_per_s'] / 1e12)} TB/s")
    t.add_row("ridge point", f"{num(r['ridge_flop_per_byte'])} FLOP/byte")
    return t


def print_explanation(exp: Explanation, console: Console | None = None) -> None:
    """Summary, per-op tables for both phases, families, memory and the roofline ceilings."""
    console = console or Console()
    console.print(summary_table(exp))
    for phase in PHASES:
        console.print()
        console.print(ops_table(exp, phase))
    for table in (families_table(exp), memory_table(exp), roofline_table(exp)):
        console.print()
        console.print(table)
