"""``stream``: weights live in host memory and stream over PCIe into the GPU every step.

The first ``gpu_layers`` layers stay resident; every other layer is copied host-to-device into one of
two GPU buffers while the GPU computes the layer before it (prefetch depth one, as FlexGen /
accelerate-style offload with pinned memory and a copy stream do). All compute and the whole KV cache
stay on the GPU. With ``c`` the GPU time of a layer and ``x`` its transfer::

    pinned:   step = GPU(all) + (L - N) * max(0, x - c) + max(0, x - N * c)    (>= max(compute, transfer))
    pageable: step = GPU(all) + (L - N) * x                                     (copies block: no overlap)

The last term is the pipeline fill: the first streamed layer can only hide behind the resident ones.
"""

from __future__ import annotations

import numpy as np

from perfcast.offload.base import Case, PhaseSplit, PlanResult, as_int, plan
from perfcast.offload.blocks import ATTN, EXPERTS, MLP, POST, PRE


@plan("stream", "weights in host memory streamed to the GPU each step (gpu_layers stay resident)",
      gpu_layers=(as_int, False))
def stream_plan(case: Case, gpu_layers: int = 0) -> PlanResult:
    L, n = case.L, gpu_layers
    if n > L:
        raise ValueError(f"gpu_layers={n} exceeds the {L} layers of {case.spec.name}; use 0..{L}")
    pinned = True if case.pinned is None else case.pinned
    w = case.weights
    x_bytes = float(w.layer[n:].mean()) if n < L else 0.0
    gf = {PRE: 1.0, POST: 1.0, ATTN: 1.0, MLP: 1.0, EXPERTS: 1.0}
    phases = []
    for ph in ("prefill", "decode"):
        p = case.parts(ph)
        g = p.gpu_seconds(gf)
        c = (g - p.gpu_seconds({PRE: 1.0, POST: 1.0})) / L
        x = case.cpu.transfer(x_bytes, "h2d", pinned) if n < L else np.zeros(np.shape(g))
        if pinned:
            stall = (L - n) * np.maximum(0.0, x - c) + (np.maximum(0.0, x - n * c) if n < L else 0.0)
        else:
            stall = (L - n) * x
        pcie_bytes = np.zeros(np.shape(g)) + (L - n) * x_bytes
        bound = "network" if np.mean((L - n) * x) > np.mean(g) else p.bound(gf, {}, 0.0)
        phases.append(PhaseSplit(g + stall, g, np.zeros(np.shape(g)), (L - n) * x, pcie_bytes, bound,
                                 p.source(False)))
    buffers = 2.0 * float(w.layer.max()) if n < L else 0.0
    mem = case.memory(w.ends + w.layer[:n].sum(), w.layer[n:].sum(), L, gpu_extra=buffers, cpu_layers=False)
    notes = () if pinned else ("pageable host memory: copies block, no overlap",)
    return PlanResult("stream", {"gpu_layers": n, "pinned": pinned}, n, *phases, mem, notes)
