"""A bounded local load test of ``perfcast ui``: N requests at C concurrent against 127.0.0.1.

Starts ``perfcast ui --port 0 --quiet`` (werkzeug's threaded server) in a subprocess, unless --url
points at one already running, then sends a fixed, seeded mix of requests:

- 70% ``/api/predict`` of random cases (model, GPU, tp, runtime, batch, prompt, context),
- 15% ``/api/sweep`` over batch or context,
- 5% catalogs (``/api/gpus``, ``/api/models``),
- 10% deliberately bad input, which must answer 400 or 422.

An error is a failed connection, a timeout, a 5xx, or a status other than the one expected.
Prints p50/p90/p99 latency per kind and overall; exits 1 if there was any error.

    python benchmarks/bench_ui_load.py                 # 2000 requests, 50 concurrent
    python benchmarks/bench_ui_load.py --requests 500 --concurrency 10 --json
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import subprocess
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import numpy as np

MODELS = ["meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-7B", "meta-llama/Llama-3.2-1B", "Qwen/Qwen3-30B-A3B",
          "meta-llama/Llama-3.1-70B"]
GPUS = ["h100-sxm", "h200", "a100-80gb", "l40s", "b200", "mi300x"]
BAD = [
    {"gpu": "h100-sxm"},
    {"model": "meta-llama/Llama-3.1-8B", "gpu": "nope"},
    {"model": "meta-llama/Llama-3.1-8B", "gpu": "h100", "batch": "-1"},
    {"model": "meta-llama/Llama-3.1-8B", "gpu": "h100", "batch": "abc"},
    {"model": "meta-llama/Llama-3.1-8B", "gpu": "h100", "tp": "3"},
    {"model": "meta-llama/Llama-3.1-8B", "gpu": "h100", "prompt": "999999"},
    {"model": "/etc/passwd", "gpu": "h100"},
]


def make_requests(n: int, seed: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """(kind, path with query, accepted statuses) for each request, reproducibly."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        r = rng.random()
        case = {"model": rng.choice(MODELS), "gpu": rng.choice(GPUS), "tp": rng.choice([1, 1, 2, 4]),
                "runtime": rng.choice(["cuda-graph", "eager"]), "batch": 2 ** rng.randint(0, 9),
                "prompt": 2 ** rng.randint(7, 14), "context": 2 ** rng.randint(7, 15)}
        if r < 0.70:
            out.append(("predict", "/api/predict?" + urllib.parse.urlencode(case), (200,)))
        elif r < 0.85:
            axis = rng.choice(["batch", "context"])
            values = "1,2,4,8,16,32,64,128,256" if axis == "batch" else "256,1024,4096,16384"
            q = urllib.parse.urlencode({**case, "axis": axis, "values": values})
            out.append(("sweep", "/api/sweep?" + q, (200,)))
        elif r < 0.90:
            out.append(("catalog", rng.choice(["/api/gpus", "/api/models"]), (200,)))
        else:
            out.append(("bad", "/api/predict?" + urllib.parse.urlencode(rng.choice(BAD)), (400, 422)))
    return out


def start_server() -> tuple[subprocess.Popen, str, int]:
    proc = subprocess.Popen([sys.executable, "-m", "perfcast.cli", "ui", "--port", "0", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r} {proc.stderr.read()[:2000]}")
    url = urllib.parse.urlparse(next(w for w in line.split() if w.startswith("http://")))
    return proc, url.hostname, url.port


def one(host: str, port: int, path: str, timeout: float) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    try:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.request("GET", path, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        json.loads(body)  # every answer, good or bad, is JSON
        return resp.status, time.perf_counter() - t0, ""
    except Exception as e:
        return 0, time.perf_counter() - t0, f"{e.__class__.__name__}: {e}"


def pct(values, q) -> float:
    return float(np.percentile(values, q) * 1e3) if values else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--url", default=None, help="A running server, e.g. http://127.0.0.1:8765 (default: start one).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=60.0, help="Seconds per request.")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    proc = None
    if a.url:
        u = urllib.parse.urlparse(a.url)
        host, port = u.hostname, u.port or 80
    else:
        proc, host, port = start_server()
    try:
        one(host, port, "/api/models", a.timeout)  # warm the catalogs, as a user's first page load does
        reqs = make_requests(a.requests, a.seed)
        results: list = [None] * len(reqs)
        lock = threading.Lock()

        def run(i):
            kind, path, ok = reqs[i]
            status, dt, err = one(host, port, path, a.timeout)
            with lock:
                results[i] = (kind, status, dt, err or ("" if status in ok else f"status {status} for {path}"))

        t0 = time.perf_counter()
        with ThreadPoolExecutor(a.concurrency) as pool:
            list(pool.map(run, range(len(reqs))))
        wall = time.perf_counter() - t0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)

    errors = [r for r in results if r[3]]
    summary = {"requests": len(results), "concurrency": a.concurrency, "wall_s": wall,
               "requests_per_s": len(results) / wall, "errors": len(errors),
               "error_examples": sorted({r[3] for r in errors})[:5], "kinds": {}}
    for kind in ("all", "predict", "sweep", "catalog", "bad"):
        lat = [r[2] for r in results if kind == "all" or r[0] == kind]
        summary["kinds"][kind] = {"n": len(lat), "p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90),
                                  "p99_ms": pct(lat, 99), "max_ms": max(lat) * 1e3 if lat else float("nan")}
    if a.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"{summary['requests']} requests, {a.concurrency} concurrent, {wall:.1f} s, "
              f"{summary['requests_per_s']:.0f} req/s, {summary['errors']} errors")
        print(f"{'kind':8} {'n':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for kind, s in summary["kinds"].items():
            print(f"{kind:8} {s['n']:5d} {s['p50_ms']:8.1f} {s['p90_ms']:8.1f} {s['p99_ms']:8.1f} {s['max_ms']:8.1f}")
        for e in summary["error_examples"]:
            print("error:", e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
