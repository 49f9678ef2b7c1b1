"""How fast `perfcast simulate` runs: 10,000 requests of Llama-3.1-8B on one H100 SXM.

    python benchmarks/bench_serving.py [--requests 10000] [--repeat 3]

Prints wall time per run (target: <= 2 s on a 2-core machine), simulated iterations and the
summary latencies, for three loads: the headline one (a ShareGPT-like mix at moderate load), a
light one (small batches: the most iterations per request) and one past capacity.
"""

from __future__ import annotations

import argparse
import time

from perfcast.serving import parse_config, steptime
from perfcast.serving.simulator import Simulator

MIX = {"input_tokens": {"dist": "lognormal", "mean": 512, "sigma": 1.0, "max": 4096},
       "output_tokens": {"dist": "lognormal", "mean": 256, "sigma": 0.8, "max": 1024}}
LOADS = {"moderate (headline)": 12.0, "light": 3.0, "past capacity": 60.0}


def run(rate: float, requests: int, cold: bool) -> tuple[float, dict, int]:
    if cold:
        steptime._CACHE.clear()
    cfg = parse_config({"model": "meta-llama/Llama-3.1-8B", "gpu": "h100-sxm",
                        "workload": {"arrival": "poisson", "rate_per_s": rate, "requests": requests, "seed": 0,
                                     **MIX}})
    t0 = time.perf_counter()
    sim = Simulator(cfg)
    rep = sim.run()
    return time.perf_counter() - t0, rep.summary, sum(e.it for e in sim.engines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    for name, rate in LOADS.items():
        times = []
        for i in range(a.repeat):
            dt, s, its = run(rate, a.requests, cold=(i == 0))
            times.append(dt)
        print(f"{name:>20}: {a.requests} requests at {rate:g}/s -> {its} iterations, "
              f"best {min(times):.3f} s, cold {times[0]:.3f} s ({1e6 * min(times) / its:.1f} us/iteration); "
              f"TTFT p90 {s['ttft_ms']['p90']:.1f} ms, TPOT p90 {s['tpot_ms']['p90']:.2f} ms, "
              f"{s['output_tokens_per_s']:.0f} tok/s, overloaded={s['overloaded']}")


if __name__ == "__main__":
    main()
