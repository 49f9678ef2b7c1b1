"""Fit ``graph_gap_s`` (host.json, cuda-graph): the GPU idle between back-to-back kernels of a captured
step, per kernel, from the kernel-by-kernel step profiles (``perfcast profile-step``).

For every decode step profiled on a GPU kind (``benchmarks/data/*/step_profile*/step_profile.jsonl``):
(graph replay time - the kernels' summed GPU time) / kernels per step; the median over those steps is the
gap. Prefill steps are left out: their kernels are long, and the graph-minus-kernels difference there is
within the profiler's own overhead (it comes out negative in half of them). The step model keeps charging
the gap inside each op (the per-kernel graph discount was fitted on step totals with it in); the value only
moves it, in a breakdown, out of the ops into the time no op accounts for.

    python benchmarks/fit_graph_gap.py [--write]   (--write: into src/perfcast/profiles/data/<gpu>/host.json)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data"


def gaps(root: Path = DATA) -> dict[str, list[tuple[str, float]]]:
    """{gpu_id: [(step label, gap seconds per kernel)]} over the decode step profiles."""
    out: dict[str, list] = {}
    for f in sorted(root.glob("*/step_profile*/step_profile.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            if r.get("measure") != "decode" or not r.get("kernels_per_step"):
                continue
            g = (float(r["graph_ms"]) - float(r["kernel_time_ms"])) * 1e-3 / float(r["kernels_per_step"])
            label = f"{f.parent.parent.name} {r['model'].split('/')[-1]} b{r['batch']}"
            out.setdefault(r["gpu_id"], []).append((label, g))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="write graph_gap_s into the shipped host.json files")
    a = ap.parse_args(argv)
    for gpu, rows in sorted(gaps().items()):
        v = np.array([g for _, g in rows])
        med = float(np.median(v))
        print(f"{gpu}: {len(v)} decode steps, gap per kernel median {med * 1e6:.2f} us "
              f"(range {v.min() * 1e6:.2f}-{v.max() * 1e6:.2f})")
        for label, g in rows:
            print(f"   {label:40s} {g * 1e6:5.2f} us")
        host = ROOT / "src" / "perfcast" / "profiles" / "data" / gpu / "host.json"
        if a.write and host.is_file():
            d = json.loads(host.read_text())
            d["runtimes"]["cuda-graph"]["graph_gap_s"] = round(med, 9)
            d.setdefault("fit", {})["graph_gap"] = (f"benchmarks/fit_graph_gap.py: median over {len(v)} decode step "
                                                    "profiles of (graph - kernel time) / kernels")
            host.write_text(json.dumps(d, indent=1) + "\n")
            print(f"   wrote {host.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
