"""One phase of a step, split into blocks and costed on both devices, so that plans can place blocks.

Blocks: ``pre`` (embedding), ``attn`` (norm, QKV, RoPE, KV write, attention, O, residual), ``mlp``
(norm, dense MLP or the router and shared expert of a MoE layer, residual), ``experts`` (routed
experts) and ``post`` (final norm, LM head). Every op gets its GPU cost from the core step model
(``perfcast.step``: the GPU's profile) and its CPU cost from a :class:`~perfcast.offload.cpu.CPUModel`.

A plan says which fraction of each block's launches runs on each device (``frac``: block ->
multiplier on ``op.count``); GPU time goes through the deployment's runtime (``cuda-graph`` or
``eager``) so that ``gpu_layers = L`` is exactly the core prediction; CPU time is a plain sum (eager
PyTorch on the CPU is synchronous).

The core op builder has no MoE layers yet: for a MoE model its dense MLP GEMMs are replaced here by a
router, the routed experts (``E (1 - (1 - k/E)^T)`` distinct experts touched by ``T`` tokens, each a
GEMM over its share of tokens) and the shared expert.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from perfcast.models.builder import MEGATRON_LAYOUT, StepShape, build_ops
from perfcast.offload.cpu import CPUModel
from perfcast.ops.base import ANALYTICAL, BOUNDS, INTERPOLATED, SOURCES, Op, OpCost
from perfcast.step.costs import step_costs
from perfcast.step.predict import StepConfig, _act_dtype, host_key, step_ops
from perfcast.step.runtime import get_runtime

PRE, ATTN, MLP, EXPERTS, POST = "pre", "attn", "mlp", "experts", "post"
LAYER_BLOCKS = (ATTN, MLP, EXPERTS)
MLP_NAMES = {"mlp_norm", "gate_up_proj", "gate_proj", "up_proj", "act", "down_proj", "mlp_allreduce",
             "post_mlp_norm", "mlp_residual"}
DENSE_FFN = {"gate_up_proj", "gate_proj", "up_proj", "act", "down_proj"}

Transform = Callable[[StepConfig, list, list, np.ndarray], tuple[list, list]]


def block_of(op: Op) -> str:
    if op.group in ("pre", "post"):
        return op.group
    name = op.name
    if name.startswith("expert"):
        return EXPERTS
    if name in MLP_NAMES or any(s in name for s in ("mlp", "router", "shared", "ffn", "neuron")):
        return MLP
    return ATTN


def _gemm(name, m, n, k, count, dtype, wdtype, repeat=1.0, host_ops=1.0) -> Op:
    return Op(name, "gemm", {"m": m, "n": int(n), "k": int(k)}, count, dtype, wdtype, "layer",
              host_ops=host_ops, meta={"repeat": repeat})


def moe_transform(cfg: StepConfig, ops: list, blocks: list, tokens) -> tuple[list, list]:
    """Swap the dense MLP GEMMs of MoE layers for router + routed experts + shared expert."""
    spec = cfg.model
    if not spec.is_moe or any(o.name.startswith("expert") for o in ops):
        return ops, blocks
    ref = next(o for o in ops if o.name in ("gate_up_proj", "up_proj", "gate_proj"))
    dt, wd = ref.dtype, ref.wdtype
    n_moe, n_dense = spec.n_moe_layers, spec.n_dense_layers
    out_o, out_b = [], []
    for o, b in zip(ops, blocks):
        if o.name in DENSE_FFN:
            if n_dense:
                out_o.append(replace(o, count=n_dense))
                out_b.append(b)
            continue
        out_o.append(o)
        out_b.append(b)
    E, k, mi, h = spec.n_experts, spec.experts_per_token, spec.moe_intermediate, spec.hidden
    T = np.asarray(tokens, dtype=float)
    active = E * (1.0 - (1.0 - k / E) ** T)  # distinct experts touched by T tokens (uniform routing)
    m_e = T * k / active
    up = (2 if spec.mlp_act in ("swiglu", "geglu") else 1) * mi
    launches = float(np.mean(active))
    act = "silu_mul" if spec.mlp_act == "swiglu" else "gelu_mul"
    new = [(_gemm("router", T, E, h, n_moe, dt, None), MLP),
           (_gemm("experts_up", m_e, up, h, n_moe, dt, wd, active, 3.0 * launches), EXPERTS),
           (Op("experts_act", "elementwise", {"op": act, "tokens": T * k, "width": mi}, n_moe, dt, None, "layer",
               host_ops=2.0 * launches), EXPERTS),
           (_gemm("experts_down", m_e, h, mi, n_moe, dt, wd, active, 3.0 * launches), EXPERTS)]
    if spec.shared_intermediate:
        si = spec.shared_intermediate
        new += [(_gemm("shared_up", T, (2 if up > mi else 1) * si, h, n_moe, dt, wd), MLP),
                (_gemm("shared_down", T, h, si, n_moe, dt, wd), MLP)]
    names = [o.name for o in out_o]
    at = names.index("mlp_norm") + 1 if "mlp_norm" in names else len(out_o)
    out_o[at:at] = [o for o, _ in new]
    out_b[at:at] = [b for _, b in new]
    return out_o, out_b


def _scaled(c: OpCost, rep) -> OpCost:
    rep = np.asarray(rep, dtype=float)
    if rep.ndim == 0 and float(rep) == 1.0:
        return c
    return OpCost.of(c.seconds * rep, c.bound, c.source, c.flops * rep, c.bytes * rep)


@dataclass
class Parts:
    """Every op of one phase with its block, its GPU cost and its CPU cost per launch."""

    cfg: StepConfig
    cpu: CPUModel
    phase: str
    ops: list
    blocks: list
    gpu: list  # OpCost per launch (repeat folded in)
    cpu_s: list  # seconds per launch on the CPU, dispatch included
    cpu_bound: list
    prof: object
    tokens: np.ndarray  # tokens whose hidden states cross PCIe at a device change
    host_key: str  # which host model drives the GPU segments

    def act_bytes(self):
        """Bytes of one activation crossing: ``tokens x hidden`` in the activation dtype."""
        from perfcast.hardware.spec import DTYPE_BYTES

        return self.tokens * self.cfg.model.hidden * DTYPE_BYTES[_act_dtype(self.cfg)]

    def _select(self, frac: dict, div: float = 1.0, ends: bool = True):
        ops, costs = [], []
        for o, b, c in zip(self.ops, self.blocks, self.gpu):
            f = frac.get(b, 0.0)
            if b in (PRE, POST):
                if not ends:
                    continue
            else:
                f = f / div
            if np.any(np.asarray(f) > 0):
                ops.append(replace(o, count=o.count * f))
                costs.append(c)
        return ops, costs

    def layer_host_share(self, frac: dict) -> float:
        """Share of a layer's eager dispatch (``host_ops``) that the selected layer launches carry, taken
        per selected layer: 1 for whole layers, about 26/33 for the plain decoder's attention block. Scales
        the host model's per-layer time, which is fitted on whole layers."""
        sel = tot = 0.0
        top = max((float(np.max(frac.get(b, 0.0))) for b in (ATTN, MLP, EXPERTS) if b in frac), default=0.0)
        for o, b in zip(self.ops, self.blocks):
            if b in (PRE, POST):
                continue
            h = o.host_ops * float(np.mean(o.count))
            tot += h * top
            sel += h * float(np.max(frac.get(b, 0.0)))
        return sel / tot if tot > 0 else 1.0

    def gpu_seconds(self, frac: dict, segments: int = 1):
        """GPU time of the selected launches, run as ``segments`` separate pieces (each ends in a
        hand-off to the CPU); pre/post ops belong to the first/last piece. The host model's per-layer
        time counts for the selected share of a layer's dispatch (:meth:`layer_host_share`)."""
        host = self.prof.host(self.host_key)
        share = self.layer_host_share(frac)
        if share < 1.0:
            host = replace(host, per_layer_s=host.per_layer_s * share)
        rt = get_runtime(self.cfg.runtime)
        ops, costs = self._select(frac, segments)
        if not ops:
            return np.zeros(np.shape(self.tokens))
        t = rt(ops, costs, host, self.prof.eff).seconds
        if segments > 1:
            mid_ops, mid_costs = self._select(frac, segments, ends=False)
            if mid_ops:
                t = t + (segments - 1) * rt(mid_ops, mid_costs, replace(host, per_step_s=0.0),
                                            self.prof.eff).seconds
        return np.asarray(t, dtype=float)

    def cpu_seconds(self, frac: dict):
        t = np.zeros(np.shape(self.tokens))
        for o, b, s in zip(self.ops, self.blocks, self.cpu_s):
            f = frac.get(b, 0.0)
            if np.any(np.asarray(f) > 0):
                t = t + o.count * np.asarray(f) * s
        return t

    def cpu_weight_bytes(self, frac: dict):
        """Weight bytes the CPU streams in one phase for the selected launches (GEMM ``n x k`` operands,
        repeats and groups included): what evicts the caches before a hand-off back to the GPU."""
        from perfcast.hardware.spec import DTYPE_BYTES

        total = np.zeros(np.shape(self.tokens))
        for o, b in zip(self.ops, self.blocks):
            f = frac.get(b, 0.0)
            if o.kind != "gemm" or not np.any(np.asarray(f) > 0):
                continue
            d = o.dims
            w = float(d["n"]) * float(d["k"]) * DTYPE_BYTES[o.wdtype or o.dtype]
            w = w * np.asarray(o.meta.get("repeat", 1.0), dtype=float)
            if d.get("groups") is not None:
                w = w * np.asarray(d["groups"], dtype=float)
            total = total + o.count * np.asarray(f) * w
        return total

    def bound(self, gpu_frac: dict, cpu_frac: dict, pcie_s) -> str:
        """The bound holding the most time (GPU op bounds, CPU op bounds, PCIe = network)."""
        acc = np.zeros(len(BOUNDS))
        for o, b, c, s, cb in zip(self.ops, self.blocks, self.gpu, self.cpu_s, self.cpu_bound):
            g, k = float(np.mean(gpu_frac.get(b, 0.0))), float(np.mean(cpu_frac.get(b, 0.0)))
            if g > 0:
                acc[int(np.ravel(c.bound)[0])] += g * o.count * float(np.mean(c.seconds))
            if k > 0:
                acc[int(np.ravel(cb)[0])] += k * o.count * float(np.mean(s))
        acc[BOUNDS.index("network")] += float(np.mean(pcie_s))
        return BOUNDS[int(np.argmax(acc))]

    def source(self, uses_cpu: bool) -> str:
        worst = max((int(np.max(c.source)) for c in self.gpu), default=ANALYTICAL)
        if uses_cpu:
            worst = max(worst, INTERPOLATED if self.cpu.measured else ANALYTICAL)
        return SOURCES[worst]


def build_parts(cfg: StepConfig, cpu: CPUModel, phase: str, batch, prompt, context,
                transform: Transform | None = None, impl: str = "hf") -> Parts:
    """Cost one phase of ``cfg`` on the GPU (core model) and on ``cpu``; ``transform`` may edit the ops.

    ``impl`` says what runs an ``eager`` step: ``hf`` (transformers, the contract's reference) or
    ``plain`` (the plain decoder run eagerly, as ``perfcast.measure.offload_step`` does: fused QKV and
    gate/up, one fused RMSNorm, and its fitted host model)."""
    from perfcast.profiles.registry import resolve_profile

    prof = resolve_profile(cfg.gpu, cfg.profile)
    b, p = np.asarray(batch), np.asarray(prompt)
    tokens = np.asarray(b * p if phase == "prefill" else b, dtype=float)
    key = host_key(cfg)
    if cfg.runtime == "eager" and impl == "plain":
        shape = StepShape(phase, b, p, np.asarray(context))
        wd = cfg.wdtype or (cfg.dtype if cfg.dtype in ("int8", "int4") else None)
        ops = build_ops(cfg.model, shape, cfg.tp, _act_dtype(cfg), MEGATRON_LAYOUT, cfg.kv_dtype, wd, cfg.pp)
        key = "eager-tp"
    else:
        ops = step_ops(cfg, phase, batch, prompt, context)
    blocks = [block_of(o) for o in ops]
    ops, blocks = moe_transform(cfg, ops, blocks, tokens)
    if transform is not None:
        ops, blocks = transform(cfg, ops, blocks, tokens)
    gpu, cpu_s, cpu_b = [], [], []
    # each op as it runs on the GPU, at the power state of the whole step on the GPU (an approximation for
    # the ops a plan moves to the CPU: the GPU's share of the step is then lighter)
    for o, c in zip(ops, step_costs(ops, cfg.gpu, prof)):
        gpu.append(_scaled(c, o.meta.get("repeat", 1.0)))
        s, bd = cpu.op_seconds(o)
        cpu_s.append(np.asarray(s, dtype=float))
        cpu_b.append(np.asarray(bd))
    return Parts(cfg, cpu, phase, ops, blocks, gpu, cpu_s, cpu_b, prof, tokens, key)
