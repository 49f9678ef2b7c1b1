"""Kernel-by-kernel profile of the MoE layer stack (perfcast.measure.extras ``moe``) under its CUDA graph.

    PYTHONPATH=src python3 -m perfcast.measure.moe_profile --out DIR [--tokens 8,128,512]

For each case, the stack is captured in a CUDA graph exactly as ``extras`` does, replayed under
``torch.profiler`` (CUDA activity), and the GPU kernel time is summed by kernel name. Writes
``moe_profile.jsonl`` (one line per case: graph time by CUDA events, kernel count, total kernel time,
and the top kernels by time): the split between GEMMs, gathers and scatter-adds that the
aggregate stack time hides.
"""

from __future__ import annotations

import argparse
import json
import sys

from perfcast.measure.env import start_out_dir
from perfcast.measure.extras import MOE_CASES, capture_and_time, moe_layer
from perfcast.measure.timing import import_torch, kernel_profile


def profile_case(torch, F, label, h, inter, experts, top_k, layers, tokens, reps=10):
    gen = torch.Generator().manual_seed(0)
    fns = [moe_layer(torch, F, h, inter, experts, top_k, tokens, gen) for _ in range(layers)]
    x = torch.randn(tokens, h, device="cuda", dtype=torch.bfloat16)
    out = torch.zeros_like(x)

    def step():
        for fn, _ in fns:
            fn(x, out)

    g, times = capture_and_time(torch, step)
    kp = kernel_profile(torch, g, reps)
    top = sorted(kp["by_name"].items(), key=lambda kv: -kv[1][1])[:12]
    return {"model": label, "tokens": tokens, "layers": layers, "experts": experts, "top_k": top_k,
            "active_experts": [a for _, a in fns], "graph_ms": times[len(times) // 2],
            "kernels_per_step": kp["kernels_per_step"], "kernel_time_ms": kp["kernel_time_ms"],
            "top": [{"name": k[:160], "count_per_step": v[0], "ms_per_step": v[1]} for k, v in top]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perfcast.measure.moe_profile", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokens", default="8,128,512,2048")
    a = ap.parse_args(argv)
    torch = import_torch()
    import torch.nn.functional as F

    out = start_out_dir(torch, a.out)
    with open(out / "moe_profile.jsonl", "w") as f:
        for label, h, inter, experts, top_k, layers in MOE_CASES:
            for t in (int(v) for v in a.tokens.split(",")):
                try:
                    rec = profile_case(torch, F, label, h, inter, experts, top_k, layers, t)
                except Exception as e:  # keep going: one failing case must not end the run
                    rec = {"model": label, "tokens": t, "error": f"{type(e).__name__}: {str(e)[:200]}"}
                f.write(json.dumps(rec) + "\n")
                f.flush()
                print(json.dumps({k: rec.get(k) for k in ("model", "tokens", "graph_ms", "kernels_per_step",
                                                           "kernel_time_ms", "error")}))
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
