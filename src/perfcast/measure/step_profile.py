"""Kernel-by-kernel profile of whole model steps (the plain decoder, captured in one CUDA graph).

    PYTHONPATH=src python3 -m perfcast.measure.step_profile --out DIR [--cases FILE.jsonl]

Each case (``model``, ``batch``, ``prompt``, ``context``, ``measure``: ``decode`` or ``prefill``) is built
exactly as ``perfcast measure`` / ``model_step`` builds it (random weights), captured in one CUDA graph,
timed by replay with CUDA events, then replayed under ``torch.profiler`` and the GPU time summed per
kernel name. Writes ``step_profile.jsonl``: one line per case with the graph time, the kernel count and
kernel time per step, and every kernel (name, calls and ms per step, and its family by name: gemm,
attention or elementwise). ``benchmarks/bench_step_profile.py`` sets those families beside perfcast's
per-op prediction of the same step, so a step error can be put on the ops that make it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from perfcast.measure.env import start_out_dir

DEFAULT_CASES = (
    {"model": "meta-llama/Llama-3.2-1B", "batch": 1, "prompt": 2048, "context": 2048, "measure": "decode"},
    {"model": "meta-llama/Llama-3.2-1B", "batch": 32, "prompt": 2048, "context": 2048, "measure": "decode"},
    {"model": "meta-llama/Llama-3.1-8B", "batch": 1, "prompt": 2048, "context": 2048, "measure": "decode"},
    {"model": "meta-llama/Llama-3.1-8B", "batch": 32, "prompt": 2048, "context": 2048, "measure": "decode"},
    {"model": "Qwen/Qwen3-8B", "batch": 8, "prompt": 2048, "context": 2048, "measure": "decode"},
    {"model": "meta-llama/Llama-3.2-1B", "batch": 1, "prompt": 2048, "context": 2048, "measure": "prefill"},
    {"model": "meta-llama/Llama-3.1-8B", "batch": 1, "prompt": 2048, "context": 2048, "measure": "prefill"},
)

_ATTN = ("flash", "fmha", "sdpa", "attention", "cudnn")
_GEMM = ("gemm", "xmma", "cutlass", "nvjet", "cublas", "splitk", "sm90_", "sm80_", "ampere_", "hopper")


def kernel_family(name: str) -> str:
    """A kernel's family from its name: ``attention`` (flash/cuDNN SDPA kernels), ``gemm`` (cuBLAS,
    CUTLASS and nvjet GEMMs) or ``elementwise`` (everything else: norms, RoPE, copies, reductions)."""
    n = name.lower()
    if any(t in n for t in _ATTN):
        return "attention"
    if any(t in n for t in _GEMM):
        return "gemm"
    return "elementwise"


def profile_case(case: dict, reps: int = 10) -> dict:
    import torch

    from perfcast.measure.model_step import _Group, gpu_id
    from perfcast.measure.timing import capture_graph, kernel_profile, replay_times_ms

    dev = torch.device("cuda")
    phase = case.get("measure", "decode")
    b, prompt, context = int(case["batch"]), int(case["prompt"]), int(case["context"])
    group = _Group(case["model"], case.get("layers"), "plain", dev, torch.bfloat16, 0, 1)
    try:
        _, fn = group.step(phase, b, prompt, context)
        g = capture_graph(torch, fn)
        times = sorted(replay_times_ms(torch, g, 30))
        kp = kernel_profile(torch, g, reps)
    finally:
        group.release()
    p = torch.cuda.get_device_properties(0)
    kernels = [{"name": k[:200], "family": kernel_family(k), "calls": round(v[0], 3), "ms": v[1]}
               for k, v in sorted(kp["by_name"].items(), key=lambda kv: -kv[1][1])]
    fam: dict[str, float] = {}
    for k in kernels:
        fam[k["family"]] = fam.get(k["family"], 0.0) + k["ms"]
    return {**case, "runtime": "cuda-graph", "gpu": p.name, "gpu_id": gpu_id(p.name, p.total_memory),
            "torch": torch.__version__, "layers": group.n_layers, "graph_ms": times[len(times) // 2],
            "graph_min_ms": times[0], "kernels_per_step": kp["kernels_per_step"],
            "kernel_time_ms": kp["kernel_time_ms"], "family_ms": fam, "kernels": kernels}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perfcast.measure.step_profile", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", default=None, help="JSON Lines of cases (default: a built-in set of 7)")
    a = ap.parse_args(argv)
    from perfcast.measure.timing import import_torch

    torch = import_torch()
    if not torch.cuda.is_available():
        raise SystemExit("perfcast: step_profile needs a CUDA GPU")
    cases = DEFAULT_CASES
    if a.cases:
        cases = [json.loads(line) for line in Path(a.cases).read_text().splitlines() if line.strip()]
    out = start_out_dir(torch, a.out)
    with open(out / "step_profile.jsonl", "w") as f:
        for c in cases:
            try:
                rec = profile_case(dict(c))
            except Exception as e:  # keep going: one failing case must not end the run
                rec = {**c, "error": f"{type(e).__name__}: {str(e)[:200]}"}
            f.write(json.dumps(rec) + "\n")
            f.flush()
            print(json.dumps({k: rec.get(k) for k in ("model", "batch", "measure", "graph_ms", "kernels_per_step",
                                                       "kernel_time_ms", "family_ms", "error")}))
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
