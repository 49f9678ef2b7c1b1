"""How fast `perfcast search` runs: a 1,000-configuration search on local processes.

    python benchmarks/bench_search.py [--workers 2] [--model meta-llama/Llama-3.1-8B]

5 GPU types x TP {1, 2, 4, 8} x max_num_seqs {32..512} x max_batched_tokens {2048..32768} x
{aggregated, disaggregated 1P:1D} = 1,000 configurations (target: <= 10 s on two cores). Prints the
wall time (pool start-up included), how many were pruned, screened out, simulated, and the best.
"""

from __future__ import annotations

import argparse
import time

from perfcast.search import SearchRequest, search
from perfcast.search.executors import Pool
from perfcast.search.space import candidates
from perfcast.serving.config import TokenDist

GPUS = ("h100-sxm", "h200", "a100-80gb", "a100-40gb", "l40s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default="meta-llama/Llama-3.1-8B")
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--sla-ttft-ms", type=float, default=500.0)
    ap.add_argument("--sla-tpot-ms", type=float, default=40.0)
    a = ap.parse_args()
    req = SearchRequest(model=a.model, rate_per_s=a.rate, sla_ttft_ms=a.sla_ttft_ms, sla_tpot_ms=a.sla_tpot_ms,
                        gpus=GPUS, tp=(1, 2, 4, 8), pp=(1,), max_num_seqs=(32, 64, 128, 256, 512),
                        max_batched_tokens=(2048, 4096, 8192, 16384, 32768), splits=((1, 1),),
                        input_tokens=TokenDist("lognormal", min=1, max=4096, mean=512, sigma=1.0),
                        output_tokens=TokenDist("lognormal", min=1, max=1024, mean=256, sigma=0.8))
    assert len(candidates(req)) == 1000
    t0 = time.perf_counter()
    with Pool("local", a.workers) as pool:
        res = search(req, pool=pool)
    wall = time.perf_counter() - t0
    print(f"{res.considered} configurations of {a.model} at {a.rate:g} req/s on {a.workers} worker(s): "
          f"{wall:.2f} s wall ({res.seconds:.2f} s in search); {res.pruned} pruned by memory, "
          f"{res.screened_out} screened out analytically, {res.simulated} simulated "
          f"({req.sim_requests} requests each), {len(res.results)} meet the SLA")
    for o in res.results[:5]:
        c = o.candidate
        print(f"  {c.gpu} tp{c.tp} pp{c.pp} {c.mode} seqs {c.max_num_seqs} tokens {c.max_batched_tokens}: "
              f"{o.units} unit(s), {o.gpus} GPUs, ${o.cost_per_hour_usd:.2f}/h, TTFT p90 {o.ttft_p90_ms:.0f} ms, "
              f"TPOT p90 {o.tpot_p90_ms:.1f} ms")


if __name__ == "__main__":
    main()
