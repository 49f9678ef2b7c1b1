"""Offload plans: the registry, one parsed case, memory per device and the result records.

A plan is a function ``(case, **fields) -> PlanResult`` registered with :func:`plan`, which also
declares the plan's fields and their validators, so a bad field is reported with what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from perfcast.hardware.spec import DTYPE_BYTES
from perfcast.models.spec import ModelSpec
from perfcast.offload.blocks import Parts, build_parts
from perfcast.offload.cpu import CPUModel, resolve_cpu
from perfcast.step import memory as core_mem
from perfcast.step.predict import StepConfig, _act_dtype, _kvd, _wdtype

GIB = core_mem.GIB
COMMON_FIELDS = ("plan", "pinned", "vram_gib")


# ------------------------------------------------------------------------------ memory
@dataclass(frozen=True)
class WeightSplit:
    """Weight bytes by block: per layer (arrays of length L) and the ends (embedding, head, final norm)."""

    ends: float
    attn: np.ndarray
    mlp: np.ndarray  # dense MLP, or router + shared expert of a MoE layer (norms included)
    experts: np.ndarray  # routed experts (0 for dense layers)

    @property
    def layer(self) -> np.ndarray:
        return self.attn + self.mlp + self.experts

    @property
    def total(self) -> float:
        return float(self.ends + self.layer.sum())


def weight_split(spec: ModelSpec, wdtype: str) -> WeightSplit:
    wb = DTYPE_BYTES[wdtype]
    attn, mlp, exp = [], [], []
    half_norms = spec.norm_params() / 2
    for i in range(spec.n_layers):
        a = spec.attn_params() + half_norms
        e = spec.n_experts * spec.mlp_params(spec.moe_intermediate) if spec.is_moe_layer(i) else 0
        attn.append(a)
        exp.append(e)
        mlp.append(spec.layer_params(i) - a - e)
    ends = spec.total_params() - sum(spec.layer_params(i) for i in range(spec.n_layers))
    return WeightSplit(ends * wb, np.array(attn) * wb, np.array(mlp) * wb, np.array(exp) * wb)


@dataclass(frozen=True)
class Memory:
    """Bytes per device. ``gpu_extra``: buffers that are not model weights (streaming, predictors)."""

    gpu_weights: np.ndarray
    gpu_kv: np.ndarray
    gpu_act: np.ndarray
    gpu_reserve: float
    gpu_extra: np.ndarray
    cpu_weights: np.ndarray
    cpu_kv: np.ndarray
    cpu_act: np.ndarray
    gpu_capacity: float
    cpu_capacity: float  # 0: unknown (never the reason a plan does not fit)

    @property
    def gpu_total(self):
        return self.gpu_weights + self.gpu_kv + self.gpu_act + self.gpu_reserve + self.gpu_extra

    @property
    def cpu_total(self):
        return self.cpu_weights + self.cpu_kv + self.cpu_act

    @property
    def fits_gpu(self):
        return self.gpu_total <= self.gpu_capacity

    @property
    def fits_cpu(self):
        return self.cpu_total <= self.cpu_capacity if self.cpu_capacity > 0 else np.ones_like(self.cpu_total, bool)

    @property
    def fits(self):
        return self.fits_gpu & self.fits_cpu


# ------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class PhaseSplit:
    """One phase: step seconds and where they go (GPU, CPU, PCIe, hand-offs; overlap makes the sum
    exceed it)."""

    seconds: np.ndarray
    gpu_s: np.ndarray
    cpu_s: np.ndarray
    pcie_s: np.ndarray
    pcie_bytes: np.ndarray
    bound: str
    source: str
    handoff_s: np.ndarray | float = 0.0  # returns to the GPU after a CPU block (cold dispatch, resume)


@dataclass(frozen=True)
class PlanResult:
    plan: str
    params: dict
    gpu_layers: int | None
    prefill: PhaseSplit
    decode: PhaseSplit
    memory: Memory
    notes: tuple[str, ...] = ()


# ------------------------------------------------------------------------------ one case
@dataclass
class Case:
    """A deployment (``cfg``, one GPU) plus a host CPU, token counts and the VRAM budget."""

    cfg: StepConfig
    cpu: CPUModel
    batch: np.ndarray
    prompt: np.ndarray
    context: np.ndarray
    vram_bytes: float
    pinned: bool | None = None  # None: the plan's default (pageable, except ``stream``)
    impl: str = "hf"  # what runs an eager step: "hf" (transformers) or "plain" (the plain decoder)
    _parts: dict = field(default_factory=dict)

    @property
    def spec(self) -> ModelSpec:
        return self.cfg.model

    @property
    def L(self) -> int:
        return self.cfg.model.n_layers

    def parts(self, phase: str, transform=None, key=None) -> Parts:
        k = (phase, key)
        if transform is None or key is not None:
            if k not in self._parts:
                self._parts[k] = build_parts(self.cfg, self.cpu, phase, self.batch, self.prompt, self.context,
                                             transform, self.impl)
            return self._parts[k]
        return build_parts(self.cfg, self.cpu, phase, self.batch, self.prompt, self.context, transform, self.impl)

    @property
    def weights(self) -> WeightSplit:
        if "weights" not in self._parts:
            self._parts["weights"] = weight_split(self.spec, _wdtype(self.cfg))
        return self._parts["weights"]

    def kv_bytes(self):
        """KV cache of every layer: ``batch x (max(prompt, context) + 1)`` tokens."""
        tokens = np.maximum(self.prompt, self.context) + 1
        return core_mem.kv_cache_bytes(self.spec, self.batch, tokens, 1, 1, self.cfg.kv_dtype or _kvd(self.cfg))

    def act_bytes(self):
        return core_mem.activation_bytes(self.spec, self.batch, self.prompt, 1, _act_dtype(self.cfg))

    def memory(self, gpu_weights, cpu_weights, gpu_kv_layers, gpu_extra=0.0, gpu_used=True,
               cpu_layers=True) -> Memory:
        """Memory per device: KV of ``gpu_kv_layers`` layers on the GPU, the rest on the host."""
        kv = self.kv_bytes()
        frac = gpu_kv_layers / self.L
        act = self.act_bytes()
        z = np.zeros(np.shape(kv))
        return Memory(
            gpu_weights=z + gpu_weights, gpu_kv=kv * frac, gpu_act=act if gpu_used else z,
            gpu_reserve=core_mem.RUNTIME_RESERVE_BYTES if gpu_used else 0.0, gpu_extra=z + gpu_extra,
            cpu_weights=z + cpu_weights, cpu_kv=kv * (1 - frac), cpu_act=act if cpu_layers else z,
            gpu_capacity=self.vram_bytes, cpu_capacity=self.cpu.mem_capacity_bytes)

    def handoffs(self, parts: Parts, cpu_frac: dict, n):
        """Seconds of ``n`` returns to the GPU per phase, each after the CPU streamed its share of the
        weights of the ``cpu_frac`` launches (:meth:`CPUModel.handoff`)."""
        n = np.asarray(n, dtype=float)
        if not np.any(n > 0):
            return np.zeros(np.shape(parts.tokens))
        per = parts.cpu_weight_bytes(cpu_frac) / np.maximum(n, 1.0)
        return n * self.cpu.handoff(per, eager=self.cfg.runtime == "eager")

    def crossing(self, parts: Parts, n=1.0):
        """(seconds, bytes) of ``n`` round trips of the hidden states: GPU -> CPU and back."""
        b = parts.act_bytes()
        pin = bool(self.pinned)
        t = self.cpu.transfer(b, "d2h", pin) + self.cpu.transfer(b, "h2d", pin)
        return n * t, n * 2.0 * b


def make_case(cfg: StepConfig, cpu, cpu_threads=None, batch=1, prompt=512, context=512, pinned=None,
              vram_gib=None, impl: str | None = None) -> Case:
    if cfg.tp != 1 or cfg.pp != 1:
        raise ValueError(f"offload plans model one GPU and its host: use tp=1 and pp=1 (got tp={cfg.tp}, "
                         f"pp={cfg.pp})")
    impl = impl or "hf"
    if impl not in ("hf", "plain"):
        raise ValueError(f"impl must be 'hf' (transformers) or 'plain' (the plain decoder), got {impl!r}")
    model = resolve_cpu(cpu, cpu_threads, cfg.gpu)
    vram = cfg.gpu.mem_capacity_bytes if vram_gib is None else float(vram_gib) * GIB
    arr = [np.asarray(x, dtype=np.int64) for x in (batch, prompt, context)]
    b, p, c = np.broadcast_arrays(*arr)
    return Case(cfg, model, b, p, c, vram, pinned, impl)


# ------------------------------------------------------------------------------ registry
Validator = Callable[[str, object], object]


@dataclass(frozen=True)
class PlanDef:
    name: str
    fn: Callable
    fields: dict  # field -> (validator, required)
    doc: str


PLANS: dict[str, PlanDef] = {}


def plan(name: str, doc: str, **fields: tuple[Validator, bool]):
    def deco(fn):
        PLANS[name] = PlanDef(name, fn, fields, doc)
        return fn

    return deco


def as_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer)) or (
            isinstance(v, float) and (not math.isfinite(v) or v != int(v))) or v < 0:
        raise ValueError(f"offload field {name!r} must be a non-negative integer, got {v!r}")
    return int(v)


def as_fraction(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not (0.0 <= v <= 1.0):
        raise ValueError(f"offload field {name!r} must be a number in [0, 1], got {v!r}")
    return float(v)


def as_positive(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not (
            math.isfinite(v) and v > 0):
        raise ValueError(f"offload field {name!r} must be a positive number, got {v!r}")
    return float(v)


def as_bool(name: str, v) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"offload field {name!r} must be true or false, got {v!r}")
    return v


def as_path(name: str, v) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"offload field {name!r} must be a file path, got {v!r}")
    return v


def parse_offload(off) -> tuple[PlanDef, dict, dict]:
    """(plan definition, the plan's validated fields, the common fields) of an ``offload`` object."""
    if not isinstance(off, dict):
        raise ValueError(
            f"offload must be a JSON object such as {{\"plan\": \"layers\", \"gpu_layers\": 20}}, got {off!r}"[:200])
    name = off.get("plan")
    if name not in PLANS:
        raise ValueError(f"unknown offload plan {name!r}; choose one of {', '.join(PLANS)}")
    pd = PLANS[name]
    unknown = [k for k in off if k not in pd.fields and k not in COMMON_FIELDS]
    if unknown:
        allowed = ", ".join(list(pd.fields) + list(COMMON_FIELDS[1:]))
        raise ValueError(f"unknown offload field {unknown[0]!r} for plan {name!r}; allowed: {allowed}")
    params = {}
    for k, (check, required) in pd.fields.items():
        if k in off and off[k] is not None:
            params[k] = check(k, off[k])
        elif required:
            raise ValueError(f"offload plan {name!r} needs field {k!r} ({pd.doc})")
    common = {"pinned": as_bool("pinned", off["pinned"]) if "pinned" in off else None,
              "vram_gib": as_positive("vram_gib", off["vram_gib"]) if "vram_gib" in off else None}
    return pd, params, common
