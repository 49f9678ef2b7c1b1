"""``experts_cpu``: the routed experts of the last N MoE layers on the CPU (llama.cpp ``--n-cpu-moe N``).

Attention, the KV cache, the router and any shared expert stay on the GPU. In each of those N layers
the hidden states go to the CPU after the router, the CPU runs the experts the tokens picked (the
distinct experts touched by ``T`` tokens, ``E (1 - (1 - k/E)^T)``, stream their weights once per
step), and the expert output comes back: two crossings and a hand-off per CPU layer, run serially.
"""

from __future__ import annotations

from perfcast.offload.base import Case, PlanResult, as_int, plan
from perfcast.offload.blocks import ATTN, EXPERTS, MLP, POST, PRE


@plan("experts_cpu", "routed experts of the last n_cpu_moe MoE layers on the CPU (default: all)",
      n_cpu_moe=(as_int, False))
def experts_cpu_plan(case: Case, n_cpu_moe: int | None = None) -> PlanResult:
    from perfcast.offload.plans import serial_phase

    spec = case.spec
    if not spec.is_moe:
        raise ValueError(f"plan 'experts_cpu' needs a mixture-of-experts model; {spec.name} is dense "
                         "(use 'layers' or 'ffn_cpu')")
    n_moe = spec.n_moe_layers
    n = n_moe if n_cpu_moe is None else n_cpu_moe
    if not 0 <= n <= n_moe:
        raise ValueError(f"n_cpu_moe={n} is outside 0..{n_moe} (the MoE layers of {spec.name})")
    on_cpu = n / n_moe
    gf = {PRE: 1.0, POST: 1.0, ATTN: 1.0, MLP: 1.0, EXPERTS: 1.0 - on_cpu}
    cf = {EXPERTS: on_cpu} if n else {}
    phases = [serial_phase(case, ph, gf, cf, n + 1, float(n)) for ph in ("prefill", "decode")]
    w = case.weights
    moe_layers = [i for i in range(case.L) if w.experts[i] > 0]
    cpu_layers = moe_layers[len(moe_layers) - n:] if n else []
    cpu_bytes = float(sum(w.experts[i] for i in cpu_layers))
    mem = case.memory(w.total - cpu_bytes, cpu_bytes, case.L, cpu_layers=bool(n))
    return PlanResult("experts_cpu", {"n_cpu_moe": n}, None, *phases, mem)
