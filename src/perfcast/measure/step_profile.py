"""Kernel-by-kernel profile of whole model steps (the plain decoder, captured in one CUDA graph).

    perfcast profile-step --model meta-llama/Llama-3.1-8B --batch 8 --prompt 2048 [--measure decode]
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

FAMILIES = ("gemm", "attention", "elementwise")
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


def predicted(rec: dict, profile: str = "auto") -> dict:
    """perfcast's prediction of a profiled step (``rec``: a step_profile line, or any dict with model,
    gpu_id, batch, prompt, context, measure): total ms and ms per op kind of that phase."""
    from perfcast.step.predict import predict

    phase = rec.get("measure", "decode")
    p = predict(model=rec["model"], gpu=rec["gpu_id"], batch=int(rec["batch"]), prompt=int(rec["prompt"]),
                context=int(rec["context"]), runtime="cuda-graph", profile=profile, breakdown=True,
                dtype=rec.get("dtype", "bf16"))
    fam = dict.fromkeys(FAMILIES, 0.0)
    for op in p.breakdown:
        if op["phase"] == phase:
            fam[op["kind"]] = fam.get(op["kind"], 0.0) + float(op["ms"])
    total = float(p.prefill_ms if phase == "prefill" else p.decode_ms)
    return {"total_ms": total, "family_ms": fam, "other_ms": total - sum(fam.values())}


def compare(rec: dict, profile: str = "auto") -> dict:
    """A profiled step beside its prediction: step ms, ms per kernel family (GEMM, attention,
    elementwise) and the rest ("other": graph time outside any kernel, measured; step time outside the
    op costs, predicted)."""
    pred = predicted(rec, profile)
    meas_fam = {f: float(rec["family_ms"].get(f, 0.0)) for f in FAMILIES}
    return {"measured_ms": float(rec["graph_ms"]), "predicted_ms": pred["total_ms"],
            "measured_family_ms": meas_fam, "predicted_family_ms": pred["family_ms"],
            "measured_other_ms": float(rec["graph_ms"]) - sum(meas_fam.values()),
            "predicted_other_ms": pred["other_ms"]}


def compare_lines(rec: dict, profile: str = "auto") -> list[str]:
    """``compare`` as a small table: one line per family, measured, predicted and the difference."""
    c = compare(rec, profile)
    rows = [("step", c["measured_ms"], c["predicted_ms"])]
    rows += [(f, c["measured_family_ms"][f], c["predicted_family_ms"][f]) for f in FAMILIES]
    rows.append(("other", c["measured_other_ms"], c["predicted_other_ms"]))
    out = [f"{rec['model']} {rec.get('measure', 'decode')} b{rec['batch']} p{rec['prompt']} c{rec['context']} "
           f"on {rec['gpu_id']} (cuda-graph)", f"  {'':12s} {'measured ms':>12s} {'predicted ms':>13s} {'diff':>8s}"]
    for name, m, p in rows:
        diff = f"{(p - m) / m * 100:+7.1f}%" if m > 0 and name != "other" else ""
        out.append(f"  {name:12s} {m:12.3f} {p:13.3f} {diff:>8s}")
    return out


def profile_case(case: dict, reps: int = 10) -> dict:
    import torch

    from perfcast.measure.model_step import _Group, gpu_id
    from perfcast.measure.timing import capture_graph, kernel_profile, replay_times_ms

    dev = torch.device("cuda")
    phase = case.get("measure", "decode")
    b, prompt, context = int(case["batch"]), int(case["prompt"]), int(case["context"])
    dtype = case.get("dtype", "bf16")  # fp8: e4m3 linears through _scaled_mm (decoder.Decoder fp8)
    if dtype not in ("bf16", "fp8"):
        raise ValueError(f"dtype must be bf16 or fp8, not {dtype!r}")
    group = _Group(case["model"], case.get("layers"), "plain", dev, torch.bfloat16, 0, 1, fp8=dtype == "fp8")
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
    return {**case, "dtype": dtype, "runtime": "cuda-graph", "gpu": p.name, "gpu_id": gpu_id(p.name, p.total_memory),
            "torch": torch.__version__, "layers": group.n_layers, "graph_ms": times[len(times) // 2],
            "graph_min_ms": times[0], "kernels_per_step": kp["kernels_per_step"],
            "kernel_time_ms": kp["kernel_time_ms"], "family_ms": fam, "kernels": kernels}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="perfcast profile-step", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="step_profile", help="output folder (default: ./step_profile)")
    ap.add_argument("--cases", default=None, help="JSON Lines of cases (default: --model, or a built-in set of 7)")
    ap.add_argument("--model", default=None, help="one case: a shipped model id or a config.json")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=2048)
    ap.add_argument("--context", type=int, default=None, help="default: --prompt")
    ap.add_argument("--measure", choices=("decode", "prefill"), default="decode")
    ap.add_argument("--profile", default="auto", help="the profile the comparison predicts with")
    ap.add_argument("--dtype", choices=("bf16", "fp8"), default=None,
                    help="fp8: e4m3 linears (model_step --dtype fp8); default: each case's own, else bf16")
    a = ap.parse_args(argv)
    if min(a.batch, a.prompt, a.context or a.prompt) < 1:
        ap.error("--batch, --prompt and --context must be positive")
    from perfcast.measure.timing import import_torch

    torch = import_torch()
    if not torch.cuda.is_available():
        raise SystemExit("perfcast: step_profile needs a CUDA GPU")
    cases = DEFAULT_CASES
    if a.cases:
        cases = [json.loads(line) for line in Path(a.cases).read_text().splitlines() if line.strip()]
    elif a.model:
        cases = [{"model": a.model, "batch": a.batch, "prompt": a.prompt, "context": a.context or a.prompt,
                  "measure": a.measure}]
    if a.dtype:
        cases = [{**c, "dtype": a.dtype} for c in cases]
    out = start_out_dir(torch, a.out)
    with open(out / "step_profile.jsonl", "w") as f:
        for c in cases:
            try:
                rec = profile_case(dict(c))
            except Exception as e:  # keep going: one failing case must not end the run
                rec = {**c, "error": f"{type(e).__name__}: {str(e)[:200]}"}
            f.write(json.dumps(rec) + "\n")
            f.flush()
            if "error" in rec:
                print(f"{c.get('model')}: {rec['error']}", file=sys.stderr)
            else:
                try:
                    print("\n".join(compare_lines(rec, a.profile)))
                except ValueError as e:  # a GPU or model perfcast cannot predict: the profile is still written
                    print(f"{c.get('model')}: measured {rec['graph_ms']:.3f} ms; no prediction ({e})")
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
