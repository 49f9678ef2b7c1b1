"""``neurons``: PowerInfer-style hot/cold split of every FFN between GPU and CPU.

The hottest ``hot_fraction`` f of each layer's FFN neurons (gate/up rows and down columns) live on the
GPU, the rest on the CPU. Per layer: attention and a low-rank activation predictor run on the GPU;
the hidden states go to the CPU; the GPU computes the active hot neurons while the CPU computes the
active cold ones; the CPU's partial sum comes back and is merged. Per layer::

    t = GPU(attention + predictor) + max(GPU(hot), CPU(cold) + 2 crossings) + GPU(merge) + hand-off

(the hand-off: the next layer's GPU dispatch runs after the CPU streamed the cold neurons' weights,
:meth:`~perfcast.offload.cpu.CPUModel.handoff`).

Activity: a fraction ``a = 1 - sparsity`` of neurons fires per token, and the hottest f of neurons
carry ``coverage(f)`` of the firings: from an ``activation_profile`` (per-neuron firing frequencies),
or ``min(f ** skew, f / a)`` (skew 0.14: 20% of neurons take 80% of firings, as PowerInfer reports
for ReLU models). A set of neurons firing with probability q per token is touched by T tokens with
probability ``1 - (1 - q)^T``; only touched rows are read (sparse GEMV), so large batches and prefill
go dense. ``sparsity 0`` (dense SwiGLU models) makes this a static split of each FFN across devices.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from perfcast.hardware.spec import DTYPE_BYTES
from perfcast.offload.base import (
    Case,
    PhaseSplit,
    PlanResult,
    as_fraction,
    as_int,
    as_path,
    as_positive,
    plan,
)
from perfcast.offload.blocks import ATTN, DENSE_FFN, POST, PRE, _gemm
from perfcast.ops.base import Op
from perfcast.step.predict import _wdtype

PRED, HOT, COLD, MERGE = "pred", "hot", "cold", "merge"
DEFAULT_SKEW = 0.14
DEFAULT_RANK = 256


def load_activation_profile(path: str, width: int):
    """(mean firing rate a, coverage(f)) from per-neuron frequencies (JSON list/list of lists, or .npy)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"activation_profile {path!r} does not exist")
    try:
        if p.suffix == ".npy":
            freq = np.load(p)
        else:
            data = json.loads(p.read_text())
            freq = np.asarray(data.get("frequencies") if isinstance(data, dict) else data, dtype=float)
    except (ValueError, TypeError, OSError) as e:
        raise ValueError(f"activation_profile {path!r}: expected per-neuron firing frequencies as JSON "
                         f"(a list, a list per layer, or {{'frequencies': ...}}) or .npy ({e})") from None
    freq = np.atleast_2d(np.asarray(freq, dtype=float))
    if freq.shape[-1] != width or np.any(freq < 0) or np.any(freq > 1):
        raise ValueError(f"activation_profile {path!r}: needs {width} frequencies in [0, 1] per layer "
                         f"(the model's intermediate size), got shape {freq.shape}")
    srt = -np.sort(-freq, axis=1)
    cum = np.cumsum(srt, axis=1) / np.maximum(srt.sum(axis=1, keepdims=True), 1e-12)
    a = float(freq.mean())

    def coverage(f: float) -> float:
        n = round(f * width)
        return 0.0 if n == 0 else float(cum[:, n - 1].mean())

    return a, coverage


def power_law(a: float, skew: float):
    return lambda f: min(f ** skew, f / a) if a > 0 else f


def touched(q: float, tokens) -> np.ndarray:
    """Fraction of a neuron set that at least one of ``tokens`` tokens fires (each fires w.p. ``q``)."""
    return 1.0 - (1.0 - min(max(q, 0.0), 1.0)) ** np.asarray(tokens, dtype=float)


def _transform(f: float, a: float, cov: float, rank: int):
    def tf(cfg, ops, blocks, tokens):
        spec = cfg.model
        I, h = spec.intermediate, spec.hidden
        ref = next(o for o in ops if o.name in DENSE_FFN)
        dt, wd = ref.dtype, ref.wdtype
        n_up = 2 if spec.mlp_act in ("swiglu", "geglu") else 1
        L = spec.n_layers
        act = "silu_mul" if spec.mlp_act == "swiglu" else "gelu_mul"
        T = float(np.mean(tokens))
        keep = [(o, b) for o, b in zip(ops, blocks) if o.name not in DENSE_FFN]
        new = []
        if rank:
            new += [(_gemm("neuron_predictor_a", tokens, rank, h, L, dt, None), PRED),
                    (_gemm("neuron_predictor_b", tokens, I, rank, L, dt, None), PRED)]
        for name, block, share, q in (("hot", HOT, f, a * cov / f if f else 0.0),
                                      ("cold", COLD, 1 - f, a * (1 - cov) / (1 - f) if f < 1 else 0.0)):
            n = math.ceil(share * I * float(touched(q, T)))
            if n <= 0:
                continue
            new += [(_gemm(f"neuron_{name}_up", tokens, n_up * n, h, L, dt, wd, host_ops=2.0), block),
                    (Op(f"neuron_{name}_act", "elementwise", {"op": act, "tokens": tokens, "width": n}, L, dt,
                        None, "layer", host_ops=2.0), block),
                    (_gemm(f"neuron_{name}_down", tokens, h, n, L, dt, wd), block)]
        new.append((Op("neuron_merge", "elementwise", {"op": "add", "tokens": tokens, "width": h}, L, dt, None,
                       "layer"), MERGE))
        names = [o.name for o, _ in keep]
        at = names.index("mlp_norm") + 1 if "mlp_norm" in names else len(keep)
        keep[at:at] = new
        return [o for o, _ in keep], [b for _, b in keep]

    return tf


@plan("neurons", "hot FFN neurons on the GPU, cold on the CPU (needs sparsity or activation_profile)",
      hot_fraction=(as_fraction, True), sparsity=(as_fraction, False), activation_profile=(as_path, False),
      skew=(as_positive, False), predictor_rank=(as_int, False))
def neurons_plan(case: Case, hot_fraction: float, sparsity: float | None = None,
                 activation_profile: str | None = None, skew: float | None = None,
                 predictor_rank: int | None = None) -> PlanResult:
    spec = case.spec
    if spec.is_moe:
        raise ValueError(f"plan 'neurons' splits dense FFNs; {spec.name} is a MoE model (use 'experts_cpu')")
    if (sparsity is None) == (activation_profile is None):
        raise ValueError("plan 'neurons' needs exactly one of 'sparsity' (fraction of FFN neurons inactive per "
                         "token: ~0.9 for ReLU models, 0 for dense SwiGLU) or 'activation_profile' (a file)")
    if sparsity is not None and sparsity >= 1.0:
        raise ValueError("offload field 'sparsity' must be below 1 (some neurons must fire)")
    f, rank = hot_fraction, DEFAULT_RANK if predictor_rank is None else predictor_rank
    if activation_profile:
        a, cov_fn = load_activation_profile(activation_profile, spec.intermediate)
    else:
        a, cov_fn = 1.0 - sparsity, power_law(1.0 - sparsity, skew or DEFAULT_SKEW)
    cov = cov_fn(f)
    tf = _transform(f, a, cov, rank)
    L = case.L
    phases = []
    for ph in ("prefill", "decode"):
        p = case.parts(ph, tf, key=("neurons", f, a, cov, rank))
        head = p.gpu_seconds({PRE: 1.0, POST: 1.0, ATTN: 1.0, PRED: 1.0}, L)
        hot = p.gpu_seconds({HOT: 1.0, MERGE: 1.0}, L)
        cold = p.cpu_seconds({COLD: 1.0})
        x, nbytes = case.crossing(p, float(L) if f < 1 else 0.0)
        h = case.handoffs(p, {COLD: 1.0}, float(L) if f < 1 else 0.0)
        t = head + np.maximum(hot, cold + x) + h
        gf, cf = {PRE: 1.0, POST: 1.0, ATTN: 1.0, PRED: 1.0, HOT: 1.0, MERGE: 1.0}, {COLD: 1.0}
        phases.append(PhaseSplit(t, head + hot, cold, np.asarray(x, float), np.asarray(nbytes, float),
                                 p.bound(gf, cf, x + h), p.source(f < 1), h))
    w, wb = case.weights, DTYPE_BYTES[_wdtype(case.cfg)]
    ffn = spec.mlp_params(spec.intermediate) * wb * L
    other = float(w.mlp.sum()) - ffn
    pred = L * rank * (spec.hidden + spec.intermediate) * wb
    mem = case.memory(w.ends + w.attn.sum() + other + f * ffn, (1 - f) * ffn, L, gpu_extra=pred,
                      cpu_layers=f < 1)
    params = {"hot_fraction": f, "sparsity": 1.0 - a if activation_profile is None else None,
              "activation_profile": activation_profile, "coverage": cov, "predictor_rank": rank}
    return PlanResult("neurons", {k: v for k, v in params.items() if v is not None}, None, *phases, mem)
