"""Prediction speed: the batch CLI (lines/s, start-up included) and the vectorized sweep (points/s).

    python benchmarks/bench_speed.py
"""

import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
import time

import numpy as np

MODELS = ["meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.2-1B", "Qwen/Qwen2.5-14B", "meta-llama/Llama-3.1-70B",
          "mistralai/Mistral-7B-v0.1", "google/gemma-2-9b"]
GPUS = ["h100-sxm", "h200", "a100-80gb", "l40s"]


def cli_lines(n=20000, seed=0):
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        m = rng.choice(MODELS)
        tp = rng.choice([1, 2, 4, 8]) if "70B" in m else rng.choice([1, 2])
        lines.append(json.dumps({"model": m, "gpu": rng.choice(GPUS), "batch": rng.randint(1, 256),
                                 "prompt": rng.randint(16, 8192), "context": rng.randint(16, 8192), "tp": tp,
                                 "runtime": rng.choice(["cuda-graph", "eager"])}))
    return lines


def run_cli(path, n, env=None):
    t = time.perf_counter()
    # `python -m perfcast` is the `perfcast` console script (perfcast._entry)
    r = subprocess.run([sys.executable, "-m", "perfcast", "predict", "--cases", path, "--json"],
                       capture_output=True, text=True, env=None if env is None else {**os.environ, **env})
    dt = time.perf_counter() - t
    n_out = len(r.stdout.splitlines())
    assert n_out == n, (n_out, r.stderr[-500:])
    return dt, r.returncode


def main():
    lines = cli_lines()
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.write("\n".join(lines) + "\n")
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as one:
        one.write(lines[0] + "\n")
    # byte-compiled as `pip install` leaves it (this VM sets PYTHONDONTWRITEBYTECODE, so a source tree
    # would otherwise be compiled anew on every run, ~50 ms)
    import compileall

    import perfcast

    compileall.compile_dir(str(Path(perfcast.__file__).parent), quiet=1)
    run_cli(one.name, 1)  # the disk cache of profile tables in place (a changed perfcast rebuilds it once)
    dt, rc = run_cli(f.name, len(lines))
    print(f"batch CLI: {len(lines)} mixed predict lines in {dt:.2f} s = {len(lines) / dt:,.0f} lines/s "
          f"(start-up included, exit {rc})")
    dt, rc = run_cli(f.name, len(lines), {"PERFCAST_WORKERS": "1"})
    print(f"batch CLI, one process (PERFCAST_WORKERS=1): {dt:.2f} s = {len(lines) / dt:,.0f} lines/s")
    with tempfile.TemporaryDirectory() as cold:
        dt, rc = run_cli(f.name, len(lines), {"PERFCAST_CACHE_DIR": cold})
    print(f"batch CLI, cold cache (profile tables built from CSV): {dt:.2f} s = {len(lines) / dt:,.0f} lines/s")
    b = np.arange(1, 1001)[:, None]
    c = (np.arange(1, 1001) * 16)[None, :]
    perfcast.sweep("meta-llama/Llama-3.1-8B", "h100-sxm", batch=1, prompt=16, context=16)  # warm caches
    t = time.perf_counter()
    out = perfcast.sweep("meta-llama/Llama-3.1-8B", "h100-sxm", batch=b, prompt=512, context=c)
    dt = time.perf_counter() - t
    print(f"vectorized sweep: {out['decode_ms'].size:,} (batch, context) points in {dt:.2f} s")
    t = time.perf_counter()
    for i in range(200):
        perfcast.predict("meta-llama/Llama-3.1-8B", "h100-sxm", batch=1 + i, prompt=512, context=1024)
    dt = (time.perf_counter() - t) / 200
    print(f"single predict() call: {dt * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
