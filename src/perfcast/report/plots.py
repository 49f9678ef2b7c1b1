"""Pictures of an :class:`~perfcast.report.explain.Explanation` (matplotlib, extra ``perfcast[plot]``).

Figures are built with the object API (``matplotlib.figure.Figure``), never pyplot, so nothing
needs a display and nothing global is touched.
"""

from __future__ import annotations

from pathlib import Path

from perfcast.report.explain import PHASES, Explanation

FORMATS = ("png", "svg")
BOUND_COLOR = {"compute": "#8e44ad", "memory": "#2980b9", "latency": "#d4ac0d", "launch": "#e67e22",
               "network": "#27ae60", "host": "#c0392b"}
KIND_COLOR = {"gemm": "#2c7fb8", "attention": "#d95f0e", "elementwise": "#7fbc41", "collective": "#756bb1",
              "p2p": "#636363", "transfer": "#e7298a", "cpu": "#a6761d", "runtime": "#bdbdbd"}
MEMORY_COLOR = {"weights": "#2c7fb8", "kv_cache": "#d95f0e", "activations": "#7fbc41", "reserve": "#969696"}
PHASE_MARKER = {"prefill": "o", "decode": "s"}


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise PlotUnavailable("pictures need matplotlib: pip install 'perfcast[plot]' "
                              "(or leave out --out to print the tables only)") from e
    return Figure(figsize=(width, height), layout="constrained")


def _title(exp: Explanation) -> str:
    p = exp.prediction
    return (f"{p['model']} on {p['gpu']} - batch {p['batch']}, prompt {p['prompt']}, context {p['context']}, "
            f"tp {p['tp']}, pp {p['pp']}, {p['dtype']}, {p['runtime']}")


def breakdown_figure(exp: Explanation):
    """Per phase, one horizontal bar per op (ms per step), coloured by what binds it."""
    n = max(len(exp.phase_ops(ph)) for ph in PHASES)
    fig = _figure(12, 0.28 * n + 1.8)
    axes = fig.subplots(1, 2)
    for ax, phase in zip(axes, PHASES):
        rows = sorted(exp.phase_ops(phase), key=lambda r: r["ms"])
        ax.barh([r["name"] for r in rows], [r["ms"] for r in rows],
                color=[BOUND_COLOR.get(r["bound"], "#555") for r in rows])
        for i, r in enumerate(rows):
            ax.text(r["ms"], i, f" {100 * r['share']:.1f}% {r['source'][0]}", va="center", fontsize=7)
        ax.set_title(f"{phase}: {exp.prediction[phase + '_ms']:.4g} ms")
        ax.set_xlabel("ms per step (count x per launch)")
        ax.margins(x=0.25)
    handles = [_patch(c, b) for b, c in BOUND_COLOR.items() if any(r["bound"] == b for r in exp.ops)]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), title="bound "
               "(label: share, source m/i/a = measured/interpolated/analytical)")
    fig.suptitle(_title(exp), fontsize=9)
    return fig


def families_figure(exp: Explanation):
    """One stacked bar per phase: the share of its time each op family takes."""
    fig = _figure(9, 2.8)
    ax = fig.subplots()
    for y, phase in enumerate(PHASES):
        left = 0.0
        for f in (f for f in exp.families if f["phase"] == phase):
            w = 100 * f["share"]
            ax.barh(y, w, left=left, color=KIND_COLOR.get(f["kind"], "#555"), edgecolor="white")
            if w >= 4:
                ax.text(left + w / 2, y, f"{f['kind']}\n{f['ms']:.3g} ms", ha="center", va="center", fontsize=7)
            left += w
    ax.set_yticks(range(len(PHASES)), [f"{ph}\n{exp.prediction[ph + '_ms']:.4g} ms" for ph in PHASES])
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of the phase's time")
    kinds = dict.fromkeys(f["kind"] for f in exp.families)
    fig.legend(handles=[_patch(KIND_COLOR.get(k, "#555"), k) for k in kinds], loc="outside right upper", fontsize=8)
    ax.set_title("time by op family - " + _title(exp), fontsize=8)
    return fig


def memory_figure(exp: Explanation):
    """One stacked bar: GiB per component on the most loaded GPU, against its capacity."""
    p = exp.prediction
    fig = _figure(9, 2.2)
    ax = fig.subplots()
    left = 0.0
    for r in (r for r in exp.memory if r["component"] in MEMORY_COLOR):
        ax.barh(0, r["gib"], left=left, color=MEMORY_COLOR[r["component"]], edgecolor="white",
                label=f"{r['component']} {r['gib']:.3g} GiB")
        left += r["gib"]
    ax.axvline(p["capacity_gib"], color="#c0392b", linestyle="--", label=f"capacity {p['capacity_gib']:.4g} GiB")
    ax.set_yticks([])
    ax.set_xlim(0, max(p["capacity_gib"], p["total_gib"]) * 1.05)
    ax.set_xlabel("GiB per GPU")
    fig.legend(loc="outside right upper", fontsize=8)
    ax.set_title(f"memory: {p['total_gib']:.4g} GiB ({'fits' if p['fits'] else 'does NOT fit'}) - "
                 + _title(exp), fontsize=8)
    return fig


def roofline_figure(exp: Explanation):
    """Ops at (FLOP/byte, achieved FLOP/s) under the compute and bandwidth ceilings, log-log."""
    import numpy as np

    r = exp.roofline
    pts = [o for o in exp.ops if o["intensity_flop_per_byte"] and o["achieved_flops_per_s"]]
    fig = _figure(9, 6)
    ax = fig.subplots()
    xs = [o["intensity_flop_per_byte"] for o in pts] or [r["ridge_flop_per_byte"]]
    lo = min(min(xs), r["ridge_flop_per_byte"]) / 4
    hi = max(max(xs), r["ridge_flop_per_byte"]) * 4
    x = np.geomspace(lo, hi, 200)
    ax.plot(x, np.minimum(r["peak_flops_per_s"], r["mem_bw_bytes_per_s"] * x), color="black", lw=1.5)
    ax.axhline(r["peak_flops_per_s"], color="black", lw=0.6, ls=":")
    ax.plot(x, r["mem_bw_bytes_per_s"] * x, color="black", lw=0.6, ls=":")
    ax.text(hi, r["peak_flops_per_s"], f"{r['peak_flops_per_s'] / 1e12:.4g} TFLOP/s ({r['dtype']})",
            ha="right", va="bottom", fontsize=8)
    ax.text(lo * 1.2, r["mem_bw_bytes_per_s"] * lo * 1.5, f"{r['mem_bw_bytes_per_s'] / 1e12:.3g} TB/s",
            rotation=0, fontsize=8)
    for o in pts:
        ax.scatter(o["intensity_flop_per_byte"], o["achieved_flops_per_s"], marker=PHASE_MARKER[o["phase"]],
                   color=BOUND_COLOR.get(o["bound"], "#555"), s=18 + 120 * o["share"], alpha=0.8,
                   edgecolors="black", linewidths=0.4)
    for (x0, y0), names in _label_groups(pts).items():
        ax.annotate(", ".join(names), (x0, y0), fontsize=7, xytext=(5, -3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ys = [o["achieved_flops_per_s"] for o in pts] + [r["mem_bw_bytes_per_s"] * lo]
    ax.set_ylim(min(ys) / 3, r["peak_flops_per_s"] * 3)
    ax.set_xlabel("arithmetic intensity (FLOP / byte of DRAM traffic)")
    ax.set_ylabel("achieved FLOP/s")
    handles = [_patch(c, b) for b, c in BOUND_COLOR.items() if any(o["bound"] == b for o in pts)]
    handles += [_marker(m, ph) for ph, m in PHASE_MARKER.items()]
    ax.legend(handles=handles, fontsize=8, loc="lower right", title="colour: bound, size: share")
    ax.set_title(f"roofline of {r['gpu_name']} - " + _title(exp), fontsize=8)
    return fig


def _label_groups(pts: list[dict], min_share: float = 0.03) -> dict[tuple, list[str]]:
    """Names of the ops worth a label, merged where points sit on top of each other (same place on
    the log-log plot to within about a quarter decade), so that labels do not overprint."""
    import math

    groups: dict[tuple, list[str]] = {}
    anchor: dict[tuple, tuple] = {}
    for o in sorted(pts, key=lambda o: -o["share"]):
        if o["share"] < min_share:
            continue
        x, y = o["intensity_flop_per_byte"], o["achieved_flops_per_s"]
        key = (round(math.log10(x) * 4), round(math.log10(y) * 4))
        anchor.setdefault(key, (x, y))
        groups.setdefault(anchor[key], []).append(f"{o['name']} ({o['phase'][0]})")
    return groups


def _patch(color: str, label: str):
    from matplotlib.patches import Patch

    return Patch(color=color, label=label)


def _marker(marker: str, label: str):
    from matplotlib.lines import Line2D

    return Line2D([], [], marker=marker, color="gray", ls="", label=label)


FIGURES = {"breakdown": breakdown_figure, "families": families_figure, "memory": memory_figure,
           "roofline": roofline_figure}


def write_figures(exp: Explanation, out_dir: str | Path, fmt: str = "png") -> list[Path]:
    """Write ``breakdown``, ``families``, ``memory`` and ``roofline`` pictures into ``out_dir``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, build in FIGURES.items():
        path = out / f"{name}.{fmt}"
        build(exp).savefig(path, dpi=130, format=fmt)
        paths.append(path)
    return paths
