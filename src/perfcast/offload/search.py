"""Enumerate offload placements that fit a VRAM budget and pick the fastest decode.

Candidates: ``layers`` with every gpu_layers 0..L, ``ffn_cpu``, ``experts_cpu`` with every
n_cpu_moe (MoE models), ``stream`` with every resident layer count, ``neurons`` at several hot
fractions (dense models), and ``cpu``. Two references are reported beside the best plan:

- memory-first: llama.cpp's automatic choice (``-ngl`` auto / ``--fit``): the most layers that fit;
- frequency-first: the neuron split that fills the GPU with the hottest neurons (largest hot fraction
  that fits).

The best plan maximizes predicted decode tokens/s among the plans that fit (ties: faster prefill), so
it is never slower than either reference; it leaves memory-first only for a plan predicted faster by
more than ``PICK_MARGIN`` (the run-to-run noise of measured offloaded steps, 5%): a smaller predicted
gain is within the model's error and not worth leaving llama.cpp's default for.
"""

from __future__ import annotations

import math

import numpy as np

from perfcast.offload.base import GIB, PLANS, Case, make_case
from perfcast.offload.plans import result_dict

PICK_MARGIN = 0.05  # predicted decode gain over memory-first needed to pick another plan


def clears_margin(rate: float, memory_first_rate: float) -> bool:
    """Is a plan's predicted decode rate (tokens/s, or 1/seconds) enough to leave memory-first for it?"""
    return rate > memory_first_rate * (1.0 + PICK_MARGIN)
HOT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _label(off: dict) -> str:
    rest = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in off.items()
                    if k not in ("plan", "sparsity", "activation_profile"))
    return f"{off['plan']} {rest}".strip()


def _row(case: Case, off: dict) -> dict | None:
    pd = PLANS[off["plan"]]
    try:
        res = pd.fn(case, **{k: v for k, v in off.items() if k != "plan"})
    except ValueError:
        return None
    d = result_dict(case, res)
    o = d["offload"]
    return {"label": _label(off), "offload": off, "prefill_ms": d["prefill_ms"], "decode_ms": d["decode_ms"],
            "decode_tokens_per_s": o["decode_tokens_per_s"], "gpu_gib": d["total_gib"],
            "cpu_gib": o["cpu_total_gib"], "fits": d["fits"], "decode_bound": d["decode_bound"],
            "gpu_ms": o["decode"]["gpu_ms"], "cpu_ms": o["decode"]["cpu_ms"], "pcie_ms": o["decode"]["pcie_ms"],
            "handoff_ms": o["decode"]["handoff_ms"],
            "detail": d}


def _neuron_fields(sparsity, activation_profile) -> dict:
    return {"activation_profile": activation_profile} if activation_profile else {"sparsity": float(sparsity)}


def max_hot_fraction(case: Case, fields: dict) -> float | None:
    """The largest hot fraction whose GPU memory fits (memory is linear in it), to 0.01."""
    fn = PLANS["neurons"].fn
    try:
        m0 = float(np.ravel(fn(case, hot_fraction=0.0, **fields).memory.gpu_total)[0])
        m1 = float(np.ravel(fn(case, hot_fraction=1.0, **fields).memory.gpu_total)[0])
    except ValueError:
        return None
    if m0 > case.vram_bytes:
        return None
    if m1 <= case.vram_bytes:
        return 1.0
    return math.floor(100 * (case.vram_bytes - m0) / (m1 - m0)) / 100


def candidates(case: Case, neuron_fields: dict, hot_fractions=HOT_FRACTIONS) -> list[dict]:
    spec, L = case.spec, case.L
    offs = [{"plan": "layers", "gpu_layers": n} for n in range(L + 1)]
    offs += [{"plan": "ffn_cpu"}, {"plan": "cpu"}]
    if spec.is_moe:
        offs += [{"plan": "experts_cpu", "n_cpu_moe": n} for n in range(1, spec.n_moe_layers + 1)]
    else:
        offs += [{"plan": "neurons", "hot_fraction": f, **neuron_fields} for f in hot_fractions]
    offs += [{"plan": "stream", "gpu_layers": n} for n in range(L)]
    return offs


def search(model, gpu, cpu, vram_gib: float | None = None, batch: int = 1, prompt: int = 512,
           context: int | None = None, cpu_threads: int | None = None, dtype: str = "bf16",
           runtime: str = "cuda-graph", profile: str = "auto", sparsity: float = 0.0,
           activation_profile: str | None = None, hot_fractions=HOT_FRACTIONS) -> dict:
    """Every candidate placement costed; the best, memory-first and frequency-first ones picked out."""
    from perfcast.step.predict import check_lengths, make_config

    cfg = make_config(model, gpu, 1, 1, dtype, runtime, profile)
    context = prompt if context is None else context
    check_lengths(cfg, prompt, context)
    if vram_gib is not None and not (isinstance(vram_gib, (int, float)) and vram_gib > 0):
        raise ValueError(f"--vram-gib must be a positive number, got {vram_gib!r}")
    case = make_case(cfg, cpu, cpu_threads, batch, prompt, context, None, vram_gib)
    nf = _neuron_fields(sparsity, activation_profile)
    rows = [r for r in (_row(case, o) for o in candidates(case, nf, hot_fractions)) if r is not None]
    fitting = [r for r in rows if r["fits"]]
    layer_fits = [r for r in fitting if r["offload"]["plan"] == "layers"]
    memory_first = max(layer_fits, key=lambda r: r["offload"]["gpu_layers"], default=None)
    freq_first = None
    if not case.spec.is_moe:
        f = max_hot_fraction(case, nf)
        if f is not None:
            freq_first = _row(case, {"plan": "neurons", "hot_fraction": f, **nf})
            if freq_first is not None and freq_first["fits"]:
                fitting.append(freq_first)
    if memory_first is not None:
        mf = memory_first["decode_tokens_per_s"]
        fitting = [r for r in fitting if r is memory_first or clears_margin(r["decode_tokens_per_s"], mf)]
    best = max(fitting, key=lambda r: (r["decode_tokens_per_s"], -r["prefill_ms"]), default=None)
    rows.sort(key=lambda r: (not r["fits"], -r["decode_tokens_per_s"]))
    out = {"model": cfg.model.name, "gpu": cfg.gpu.id, "cpu": case.cpu.id, "cpu_source": case.cpu.source,
           "cpu_threads": case.cpu.threads, "vram_gib": case.vram_bytes / GIB, "batch": batch, "prompt": prompt,
           "context": context, "best": best, "memory_first": memory_first, "frequency_first": freq_first,
           "candidates": rows}
    if best and memory_first:
        out["speedup_vs_memory_first"] = best["decode_tokens_per_s"] / memory_first["decode_tokens_per_s"]
    if best is None:
        out["error"] = (f"no placement fits {case.vram_bytes / GIB:.1f} GiB of VRAM and "
                        f"{case.cpu.mem_capacity_bytes / GIB:.0f} GiB of host memory")
    return out
