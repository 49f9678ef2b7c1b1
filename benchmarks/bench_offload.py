"""Accuracy of the offload predictions against measured offloaded steps.

    python benchmarks/bench_offload.py                      # every benchmarks/data/offload_*.jsonl
    python benchmarks/bench_offload.py OUT.jsonl --json     # given files, one JSON row per case
    python benchmarks/bench_offload.py --measure-local      # re-measure the CPU-only cases on this host

Each measured line (written by ``perfcast.measure.offload_step``) is predicted with the same model
(``layers`` override included), plan, dtype, token counts and thread count, runtime ``eager`` with
``impl: plain`` (the harness's plain decoder runs eagerly), and two CPU descriptions: the CPU profile measured beside the
run (``cpu_profile``, relative to the file) and, where the CPU is in the catalog, the catalog entry.
Printed: per case measured vs predicted ms, and the MAPE per file, per plan and overall.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data"
LOCAL_OUT = DATA / "offload_local_2core.jsonl"
LOCAL_PROFILE = DATA / "cpu_profile_local"
LOCAL_CASES = [  # CPU-only decode/prefill of small models, sized for a 2-core host
    {"model": "Qwen/Qwen2.5-0.5B", "offload": {"plan": "cpu"}, "batch": 1, "prompt": 32, "context": 256,
     "dtype": "fp32"},
    {"model": "Qwen/Qwen2.5-0.5B", "offload": {"plan": "cpu"}, "batch": 4, "prompt": 32, "context": 256,
     "dtype": "fp32", "measure": "decode"},
    {"model": "Qwen/Qwen2.5-0.5B", "offload": {"plan": "cpu"}, "batch": 1, "prompt": 16, "context": 256,
     "dtype": "bf16"},
    {"model": "meta-llama/Llama-3.2-1B", "offload": {"plan": "cpu"}, "batch": 1, "prompt": 32, "context": 512,
     "dtype": "fp32", "layers": 8},
    {"model": "meta-llama/Llama-3.2-1B", "offload": {"plan": "cpu"}, "batch": 1, "prompt": 16, "context": 512,
     "dtype": "bf16", "layers": 8, "measure": "decode"},
    {"model": "Qwen/Qwen3-0.6B", "offload": {"plan": "cpu"}, "batch": 1, "prompt": 32, "context": 256,
     "dtype": "fp32", "measure": "decode"},
]


def predict_line(line: dict, cpu: str) -> dict:
    from perfcast.models import get_model
    from perfcast.offload.plans import predict_offload

    spec = get_model(line["model"])
    if line.get("layers"):
        spec = spec.with_layers(int(line["layers"]))
    return predict_offload(spec, line.get("gpu_id") or "h100-pcie", cpu, line["offload"],
                           batch=int(line.get("batch", 1)), prompt=int(line.get("prompt", 128)),
                           context=int(line.get("context", 512)), cpu_threads=line.get("cpu_threads"),
                           dtype=line.get("dtype", "bf16"), runtime=line.get("runtime", "eager"),
                           impl=line.get("impl", "plain"))


def cpu_sources(line: dict, path: Path) -> dict[str, str]:
    """{'profile': dir, 'catalog': id} as far as each is available for this line. The profile is the
    one the line cites (relative to the file), else ``<file stem>_cpu/`` beside the file."""
    from perfcast.hardware import get_cpu

    out = {}
    for cand in (line.get("cpu_profile"), path.stem + "_cpu"):
        if cand and (path.parent / cand / "meta.json").is_file():
            out["profile"] = str(path.parent / cand)
            break
    try:
        out["catalog"] = get_cpu(line.get("cpu_name", "")).id
    except ValueError:
        pass
    return out


def rows_of(path: Path) -> list[dict]:
    rows = []
    for text in path.read_text().splitlines():
        if not text.strip():
            continue
        line = json.loads(text)
        if "error" in line:
            rows.append({"file": path.name, "case": line.get("case"), "error": line["error"]})
            continue
        row = {"file": path.name, "case": line.get("case"), "model": line["model"].split("/")[-1],
               "layers": line.get("layers"), "plan": json.dumps(line["offload"], separators=(",", ":")),
               "dtype": line.get("dtype", "bf16"), "threads": line.get("cpu_threads"),
               "b": line.get("batch"), "p": line.get("prompt"), "c": line.get("context")}
        for src, cpu in cpu_sources(line, path).items():
            pred = predict_line(line, cpu)
            row[f"gpu_gib_{src}"] = pred["total_gib"]
            for ph in ("prefill", "decode"):
                if f"{ph}_ms" in line:
                    row[f"{ph}_meas"] = line[f"{ph}_ms"]
                    row[f"{ph}_{src}"] = pred[f"{ph}_ms"]
                    row[f"{ph}_{src}_err"] = (pred[f"{ph}_ms"] - line[f"{ph}_ms"]) / line[f"{ph}_ms"]
                    row[f"{ph}_{src}_ape"] = abs(row[f"{ph}_{src}_err"])
        rows.append(row)
    return rows


def mape(rows, key) -> tuple[float, int]:
    v = [r[key] for r in rows if key in r]
    return (100.0 * sum(v) / len(v), len(v)) if v else (float("nan"), 0)


def bias(rows, key) -> float:
    """Mean signed error (predicted - measured) / measured, in %: negative = predicted too fast."""
    v = [r[key] for r in rows if key in r]
    return 100.0 * sum(v) / len(v) if v else float("nan")


def plan_groups(ok: list[dict], src: str) -> list[list[dict]]:
    """The measured placements of one model and shape on one host (file), each predicted from ``src``."""
    groups: dict[tuple, list] = {}
    for r in ok:
        if f"decode_{src}" in r:
            groups.setdefault((r["file"], r["model"], r["b"], r["p"], r["c"], r["threads"]), []).append(r)
    return list(groups.values())


def ranking(ok: list[dict], src: str = "profile") -> None:
    """Does the plan perfcast predicts fastest measure fastest? Per (host file, model, shape) among the
    measured placements of that model: the predicted best vs the measured best, and pairwise order."""
    agree = pairs = top = n = 0
    for rs in plan_groups(ok, src):
        if len(rs) < 2:
            continue
        n += 1
        best_meas = min(rs, key=lambda r: r["decode_meas"])
        best_pred = min(rs, key=lambda r: r[f"decode_{src}"])
        top += best_meas is best_pred
        for i in range(len(rs)):
            for j in range(i + 1, len(rs)):
                a, b = rs[i], rs[j]
                if abs(a["decode_meas"] - b["decode_meas"]) < 0.05 * min(a["decode_meas"], b["decode_meas"]):
                    continue  # closer than the run-to-run noise: no order to check
                pairs += 1
                agree += (a["decode_meas"] < b["decode_meas"]) == (a[f"decode_{src}"] < b[f"decode_{src}"])
    if n:
        print(f"decode ranking ({src}): predicted-fastest plan is the measured-fastest in {top}/{n} groups; "
              f"pairwise order right in {agree}/{pairs} pairs that differ by more than 5%")


def choice(ok: list[dict], src: str = "profile") -> None:
    """The issue's claim, on the measured placements: under a VRAM budget equal to the GPU memory of each
    measured plan, the plan perfcast picks among the measured ones that fit (predicted fastest decode)
    against llama.cpp's memory-first plan (the measured layer split with the most GPU layers that fits):
    wherever they differ, is the pick measured at least as fast (or within the 5% run-to-run noise)? As in
    ``perfcast offload-search``, the pick leaves memory-first only for a predicted gain over ``PICK_MARGIN``."""
    from perfcast.offload.search import clears_margin

    budgets = differ = faster = tied = 0
    for rs in plan_groups(ok, src):
        for ref in rs:
            fit = [r for r in rs if r[f"gpu_gib_{src}"] <= ref[f"gpu_gib_{src}"] + 1e-9]
            splits = [r for r in fit if json.loads(r["plan"])["plan"] == "layers"]
            if not splits:
                continue
            mem_first = max(splits, key=lambda r: json.loads(r["plan"])["gpu_layers"])
            best = min([r for r in fit if r is mem_first
                        or clears_margin(1.0 / r[f"decode_{src}"], 1.0 / mem_first[f"decode_{src}"])],
                       key=lambda r: r[f"decode_{src}"])
            budgets += 1
            if best is not mem_first:
                differ += 1
                faster += best["decode_meas"] <= mem_first["decode_meas"]
                tied += mem_first["decode_meas"] < best["decode_meas"] <= 1.05 * mem_first["decode_meas"]
                print(f"  budget {ref[f'gpu_gib_{src}']:.2f} GiB, {ref['file']} {ref['model']}: picks {best['plan']} "
                      f"(measured {best['decode_meas']:.2f} ms, predicted {best[f'decode_{src}']:.2f}) over "
                      f"memory-first {mem_first['plan']} ({mem_first['decode_meas']:.2f} ms, predicted "
                      f"{mem_first[f'decode_{src}']:.2f})")
    if budgets:
        print(f"plan choice ({src}): {budgets} VRAM budgets; the predicted-best plan differs from memory-first in "
              f"{differ}; of those it is measured faster in {faster}, within 5% in {tied}, slower in "
              f"{differ - faster - tied}")


def report(rows: list[dict]) -> None:
    ok = [r for r in rows if "error" not in r]
    hdr = f"{'case':<44} {'dtype':>5} {'thr':>3} {'pre meas':>9} {'pre pred':>9} {'dec meas':>9} {'dec pred':>9}  src"
    print(hdr)
    for r in ok:
        name = f"{r['model']}{'/L' + str(r['layers']) if r['layers'] else ''} {r['plan']} b{r['b']}"
        for src in ("profile", "catalog"):
            if f"decode_{src}" not in r and f"prefill_{src}" not in r:
                continue
            def f(k, r=r):
                return f"{r[k]:9.2f}" if k in r else f"{'-':>9}"

            print(f"{name[:44]:<44} {r['dtype']:>5} {r['threads']!s:>3} {f('prefill_meas')} {f('prefill_' + src)} "
                  f"{f('decode_meas')} {f('decode_' + src)}  {src}")
    for r in rows:
        if "error" in r:
            print(f"{r['file']} case {r['case']}: error {r['error']}")
    print()
    groups = {"all": ok}
    for r in ok:
        groups.setdefault(f"file {r['file']}", []).append(r)
        groups.setdefault(f"plan {json.loads(r['plan'])['plan']}", []).append(r)
        groups.setdefault(f"{r['threads']} CPU threads", []).append(r)
    for g, rs in groups.items():
        parts = []
        for src in ("profile", "catalog"):
            for ph in ("prefill", "decode"):
                m, n = mape(rs, f"{ph}_{src}_ape")
                if n:
                    parts.append(f"{ph}/{src} {m:5.1f}% bias {bias(rs, f'{ph}_{src}_err'):+5.1f}% (n={n})")
        print(f"MAPE {g:<40} " + "  ".join(parts))
    ranking(ok)
    choice(ok)


def measure_local() -> int:
    """Calibrate this host's CPU and measure LOCAL_CASES at 1 thread and at every core."""
    import tempfile

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cores = len(os.sched_getaffinity(0))
    py = sys.executable
    subprocess.run([py, "-m", "perfcast.measure.cpu_calibrate", "--out", str(LOCAL_PROFILE), "--threads",
                    f"1,{cores}", "--wait-idle", "60"], check=True, env=env)
    with tempfile.TemporaryDirectory() as tmp:
        cases = Path(tmp) / "cases.jsonl"
        cases.write_text("".join(json.dumps(c) + "\n" for c in LOCAL_CASES))
        outs = []
        for t in sorted({1, cores}):
            out = Path(tmp) / f"out{t}.jsonl"
            subprocess.run([py, "-m", "perfcast.measure.offload_step", "--cases", str(cases), "--out", str(out),
                            "--device", "cpu", "--threads", str(t), "--cpu-profile", str(LOCAL_PROFILE),
                            "--wait-idle", "60"], check=False, env=env)
            outs += [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    for o in outs:  # the profile beside the data file
        o["cpu_profile"] = os.path.relpath(LOCAL_PROFILE, LOCAL_OUT.parent)
    LOCAL_OUT.write_text("".join(json.dumps(o) + "\n" for o in outs))
    print(f"wrote {LOCAL_OUT}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="*", help="measured JSONL files [default: benchmarks/data/offload_*.jsonl]")
    ap.add_argument("--json", action="store_true", help="one JSON row per case")
    ap.add_argument("--measure-local", action="store_true", help="re-measure the CPU-only cases on this host")
    a = ap.parse_args(argv)
    if a.measure_local:
        measure_local()
    files = [Path(f) for f in a.files] or [Path(f) for f in sorted(glob.glob(str(DATA / "offload_*.jsonl")))]
    if not files:
        print("no measured offload files (run perfcast.measure.offload_step first)", file=sys.stderr)
        return 1
    rows = [r for f in files for r in rows_of(f)]
    if a.json:
        print("\n".join(json.dumps(r) for r in rows))
    else:
        report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
