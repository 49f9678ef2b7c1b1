"""Datasheet facts of GPUs and CPUs, as frozen dataclasses in SI units.

Every number comes from a data file under ``hardware/data`` that names its source.
Measured efficiencies live elsewhere (``perfcast.profiles``): this module holds facts only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4", "fp4")

# bytes per element of each dtype as stored
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "tf32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
    "fp4": 0.5,
}
# weight dtypes of quantized checkpoints: activations, norms and attention stay bf16, and so do the embedding
# and the LM head
QUANTIZED_DTYPES = ("fp8", "int8", "int4", "fp4")


@dataclass(frozen=True, eq=False)
class GPUSpec:
    """One accelerator model. Peak FLOP/s are dense (no structured sparsity)."""

    id: str
    name: str
    vendor: str
    architecture: str
    aliases: tuple[str, ...]
    peak_flops: dict[str, float]  # dtype -> dense FLOP/s (tensor cores where they exist)
    mem_capacity_bytes: float
    mem_bw_bytes_per_s: float
    l2_bytes: float
    sm_count: int
    boost_clock_hz: float
    nvlink_bw_bytes_per_s: float  # aggregate, both directions, per GPU; 0 if none
    pcie_bw_bytes_per_s: float  # one direction, host link
    tdp_w: float
    price_per_hour_usd: float = 0.0  # user-editable default for searches
    sources: dict[str, str] = field(default_factory=dict)
    notes: str = ""

    def flops(self, dtype: str) -> float:
        """Dense peak FLOP/s for ``dtype``; weight-only int4/int8 fall back to the activation dtype."""
        if dtype in self.peak_flops and self.peak_flops[dtype] > 0:
            return self.peak_flops[dtype]
        if dtype in ("int4", "fp4") and self.peak_flops.get("fp8", 0) <= 0:
            return self.peak_flops["bf16"]
        if dtype == "tf32":
            return self.peak_flops.get("fp32", 0.0)
        raise KeyError(f"{self.id} has no {dtype} peak in its datasheet")

    @property
    def nvlink_uni_bytes_per_s(self) -> float:
        """NVLink bandwidth in one direction per GPU (half the aggregate figure)."""
        return self.nvlink_bw_bytes_per_s / 2.0


@dataclass(frozen=True, eq=False)
class CPUSpec:
    """A host CPU (one socket unless ``sockets`` says otherwise)."""

    id: str
    name: str
    vendor: str
    aliases: tuple[str, ...]
    cores: int
    sockets: int
    base_clock_hz: float
    boost_clock_hz: float
    simd: str  # e.g. "avx512", "avx2", "neon"
    fp32_flops_per_cycle_per_core: float
    bf16_flops_per_cycle_per_core: float  # AMX / AVX512-BF16; 0 if none
    mem_channels: int
    mem_bw_bytes_per_s: float  # theoretical, all channels of all sockets
    mem_capacity_bytes: float
    pcie_bw_bytes_per_s: float  # one direction to one x16 GPU
    l3_bytes: float
    tdp_w: float
    sources: dict[str, str] = field(default_factory=dict)
    notes: str = ""

    def peak_flops(self, dtype: str, threads: int | None = None) -> float:
        """Peak FLOP/s on ``threads`` cores at the all-core boost clock."""
        n = min(threads or self.cores * self.sockets, self.cores * self.sockets)
        per = self.bf16_flops_per_cycle_per_core if dtype in ("bf16", "fp16") else 0.0
        if per <= 0:
            per = self.fp32_flops_per_cycle_per_core
        return n * per * self.boost_clock_hz
