"""Offload plans costed per step, and the entry points (batch line, Python API).

Plans in this module (more register from ``moe``, ``stream`` and ``neurons``):

- ``layers`` (llama.cpp ``-ngl N``): the first N decoder layers (weights + KV) on the GPU, the rest
  on the CPU; embedding and LM head on the GPU; the hidden states cross PCIe twice when 0 < ... < L
  layers run on the CPU (after the last GPU layer, before the final norm).
  ``step = GPU(pre, N layers, post) + CPU(L - N layers) + 2 crossings + 1 hand-off``.
- ``ffn_cpu``: attention and the KV cache on the GPU, every MLP on the CPU: per layer two crossings
  and a hand-off. ``step = L x GPU(attention segment) + CPU(L MLPs) + 2L crossings + L hand-offs``.
- ``cpu``: everything on the CPU (no GPU at all), the CPU-only reference.

Device work is serial: eager PyTorch's ``.to()`` blocks, so neither device works while the other
does or while the hidden states cross. A crossing is one blocking copy each way
(``latency + bytes / bandwidth``, pageable unless ``pinned``). A hand-off is the extra cost of
returning to the GPU after the CPU streamed a block's weights (:meth:`CPUModel.handoff`: the GPU
segment dispatches with cold caches, the CPU threads resume); it is booked in ``handoff_s``.
"""

from __future__ import annotations

import numpy as np

from perfcast.offload import base
from perfcast.offload.base import GIB, Case, PhaseSplit, PlanResult, as_int, make_case, parse_offload, plan
from perfcast.offload.blocks import ATTN, EXPERTS, LAYER_BLOCKS, MLP, POST, PRE

ALL_LAYER = LAYER_BLOCKS


def serial_phase(case: Case, phase: str, gpu_frac: dict, cpu_frac: dict, segments: int = 1,
                 round_trips=0.0, parts=None) -> PhaseSplit:
    """A phase whose GPU work, CPU work, ``round_trips`` activation crossings and as many hand-offs
    (returns to the GPU after a CPU block) run one after another."""
    p = parts or case.parts(phase)
    g = p.gpu_seconds(gpu_frac, segments) if gpu_frac else np.zeros(np.shape(p.tokens))
    c = p.cpu_seconds(cpu_frac)
    x, nbytes = case.crossing(p, round_trips)
    x, nbytes = np.asarray(x, dtype=float), np.asarray(nbytes, dtype=float)
    h = case.handoffs(p, cpu_frac, round_trips) if gpu_frac and cpu_frac else np.zeros(np.shape(x))
    return PhaseSplit(g + c + x + h, g, c, x, nbytes, p.bound(gpu_frac, cpu_frac, x + h), p.source(bool(cpu_frac)),
                      h)


def _layer_fracs(n_gpu, L):
    g = {b: n_gpu / L for b in ALL_LAYER}
    c = {b: (L - n_gpu) / L for b in ALL_LAYER}
    return {PRE: 1.0, POST: 1.0, **g}, {k: v for k, v in c.items() if v > 0}


@plan("layers", "the first gpu_layers decoder layers on the GPU, the rest on the CPU",
      gpu_layers=(as_int, True))
def layers_plan(case: Case, gpu_layers: int) -> PlanResult:
    L = case.L
    if gpu_layers > L:
        raise ValueError(f"gpu_layers={gpu_layers} exceeds the {L} layers of {case.spec.name}; use 0..{L}")
    gf, cf = _layer_fracs(gpu_layers, L)
    trips = 0.0 if gpu_layers == L else 1.0
    phases = [serial_phase(case, ph, gf, cf, 1, trips) for ph in ("prefill", "decode")]
    w = case.weights
    on_gpu = w.ends + w.layer[:gpu_layers].sum()
    mem = case.memory(on_gpu, w.layer[gpu_layers:].sum(), gpu_layers, cpu_layers=gpu_layers < L)
    return PlanResult("layers", {"gpu_layers": gpu_layers}, gpu_layers, *phases, mem)


@plan("ffn_cpu", "attention and the KV cache on the GPU, every MLP on the CPU")
def ffn_cpu_plan(case: Case) -> PlanResult:
    L = case.L
    gf, cf = {PRE: 1.0, POST: 1.0, ATTN: 1.0}, {MLP: 1.0, EXPERTS: 1.0}
    phases = [serial_phase(case, ph, gf, cf, L, float(L)) for ph in ("prefill", "decode")]
    w = case.weights
    mem = case.memory(w.ends + w.attn.sum(), w.mlp.sum() + w.experts.sum(), L)
    return PlanResult("ffn_cpu", {}, None, *phases, mem)


@plan("cpu", "everything on the CPU, embedding and LM head included (no GPU)")
def cpu_plan(case: Case) -> PlanResult:
    cf = {PRE: 1.0, POST: 1.0, ATTN: 1.0, MLP: 1.0, EXPERTS: 1.0}
    phases = [serial_phase(case, ph, {}, cf) for ph in ("prefill", "decode")]
    mem = case.memory(0.0, case.weights.total, 0, gpu_used=False)
    return PlanResult("cpu", {}, 0, *phases, mem)


# ------------------------------------------------------------------------------ entry points
def run_plan(case: Case, off: dict) -> PlanResult:
    pd, params, _ = parse_offload(off)
    return pd.fn(case, **params)


def _f(x) -> float:
    return float(np.ravel(x)[0])


def result_dict(case: Case, res: PlanResult) -> dict:
    """The ``perfcast predict`` keys (GPU memory in ``*_gib``) plus an ``offload`` object."""
    cfg, m, cpu = case.cfg, res.memory, case.cpu
    pre, dec = res.prefill, res.decode
    prof = case.parts("decode").prof

    def split(ph: PhaseSplit) -> dict:
        return {"ms": _f(ph.seconds) * 1e3, "gpu_ms": _f(ph.gpu_s) * 1e3, "cpu_ms": _f(ph.cpu_s) * 1e3,
                "pcie_ms": _f(ph.pcie_s) * 1e3, "handoff_ms": _f(ph.handoff_s) * 1e3,
                "pcie_bytes": _f(ph.pcie_bytes), "bound": ph.bound}

    off = {"plan": res.plan, **res.params, "gpu_layers": res.gpu_layers, "cpu_layers": (
        None if res.gpu_layers is None else case.L - res.gpu_layers),
        "cpu": cpu.id, "cpu_name": cpu.name, "cpu_source": cpu.source, "cpu_threads": cpu.threads,
        "pinned": res.params.get("pinned", bool(case.pinned)), "gpu_weights_gib": _f(m.gpu_weights) / GIB, "gpu_extra_gib": _f(m.gpu_extra) / GIB,
        "cpu_weights_gib": _f(m.cpu_weights) / GIB, "cpu_kv_cache_gib": _f(m.cpu_kv) / GIB,
        "cpu_activations_gib": _f(m.cpu_act) / GIB, "cpu_total_gib": _f(m.cpu_total) / GIB,
        "cpu_capacity_gib": m.cpu_capacity / GIB, "fits_gpu": bool(np.ravel(m.fits_gpu)[0]),
        "fits_cpu": bool(np.ravel(m.fits_cpu)[0]), "prefill": split(pre), "decode": split(dec),
        "decode_tokens_per_s": _f(case.batch) / _f(dec.seconds), "notes": list(res.notes)}
    src = max((pre.source, dec.source), key=("measured", "interpolated", "analytical").index)
    return {
        "model": cfg.model.name, "gpu": cfg.gpu.id, "batch": int(_f(case.batch)), "prompt": int(_f(case.prompt)),
        "context": int(_f(case.context)), "tp": cfg.tp, "pp": cfg.pp, "dtype": cfg.dtype, "runtime": cfg.runtime,
        "prefill_ms": _f(pre.seconds) * 1e3, "decode_ms": _f(dec.seconds) * 1e3,
        "weights_gib": _f(m.gpu_weights) / GIB, "kv_cache_gib": _f(m.gpu_kv) / GIB,
        "activations_gib": _f(m.gpu_act) / GIB, "total_gib": _f(m.gpu_total) / GIB,
        "fits": bool(np.ravel(m.fits)[0]), "capacity_gib": m.gpu_capacity / GIB, "profile": prof.name,
        "prefill_bound": pre.bound, "decode_bound": dec.bound, "source": src, "offload": off,
    }


def predict_offload_case(cfg, obj: dict, batch: int, prompt: int, context: int) -> dict:
    """A ``perfcast predict`` batch line that carries ``offload`` (plus ``cpu``, ``cpu_threads`` and, for
    ``eager``, ``impl``: ``hf`` by default, ``plain`` for the plain decoder that offload_step measures)."""
    _, _, common = parse_offload(obj.get("offload"))
    case = make_case(cfg, obj.get("cpu"), obj.get("cpu_threads"), batch, prompt, context,
                     common["pinned"], common["vram_gib"], obj.get("impl"))
    return result_dict(case, run_plan(case, obj["offload"]))


def predict_offload(model, gpu, cpu, offload: dict, batch: int = 1, prompt: int = 512, context: int | None = None,
                    cpu_threads: int | None = None, dtype: str = "bf16", runtime: str = "cuda-graph",
                    profile: str = "auto", kv_dtype: str | None = None, wdtype: str | None = None,
                    impl: str = "hf") -> dict:
    """Python API: one offloaded step (same dict as a batch line)."""
    from perfcast.step.predict import check_lengths, make_config

    cfg = make_config(model, gpu, 1, 1, dtype, runtime, profile, kv_dtype, wdtype)
    context = prompt if context is None else context
    for name, v in (("batch", batch), ("prompt", prompt), ("context", context)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    check_lengths(cfg, prompt, context)
    return predict_offload_case(cfg, {"offload": offload, "cpu": cpu, "cpu_threads": cpu_threads, "impl": impl},
                                batch, prompt, context)


from perfcast.offload import moe, neurons, stream  # noqa: F401  (register their plans)

__all__ = ["base", "predict_offload", "predict_offload_case", "result_dict", "run_plan", "serial_phase"]
