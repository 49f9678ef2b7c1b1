"""Hardware catalog: GPUs and CPUs from sourced TOML data files, looked up by id or alias."""

from __future__ import annotations

import functools
import tomllib
from importlib import resources

from perfcast.hardware.spec import DTYPE_BYTES, CPUSpec, GPUSpec

__all__ = ["DTYPE_BYTES", "CPUSpec", "GPUSpec", "get_cpu", "get_gpu", "list_cpus", "list_gpus"]


def _norm(s: str) -> str:
    return "".join(ch for ch in s.lower() if ch.isalnum())


def _gpu_from_toml(d: dict) -> GPUSpec:
    mem, chip, links = d["memory"], d["chip"], d.get("links", {})
    return GPUSpec(
        id=d["id"],
        name=d["name"],
        vendor=d["vendor"],
        architecture=d["architecture"],
        aliases=tuple(d.get("aliases", ())),
        peak_flops={k: float(v) for k, v in d["peak_flops"].items()},
        mem_capacity_bytes=float(mem["capacity_bytes"]),
        mem_bw_bytes_per_s=float(mem["bandwidth_bytes_per_s"]),
        l2_bytes=float(mem.get("l2_bytes", 0)),
        sm_count=int(chip["sm_count"]),
        boost_clock_hz=float(chip["boost_clock_hz"]),
        nvlink_bw_bytes_per_s=float(links.get("nvlink_bytes_per_s", 0.0)),
        pcie_bw_bytes_per_s=float(links.get("pcie_bytes_per_s", 32e9)),
        tdp_w=float(d.get("power", {}).get("tdp_w", 0.0)),
        price_per_hour_usd=float(d.get("price_per_hour_usd", 0.0)),
        sources=dict(d.get("sources", {})),
        notes=d.get("notes", ""),
    )


def _cpu_from_toml(d: dict) -> CPUSpec:
    return CPUSpec(
        id=d["id"],
        name=d["name"],
        vendor=d["vendor"],
        aliases=tuple(d.get("aliases", ())),
        cores=int(d["cores"]),
        sockets=int(d.get("sockets", 1)),
        base_clock_hz=float(d["base_clock_hz"]),
        boost_clock_hz=float(d["boost_clock_hz"]),
        simd=d["simd"],
        fp32_flops_per_cycle_per_core=float(d["fp32_flops_per_cycle_per_core"]),
        bf16_flops_per_cycle_per_core=float(d.get("bf16_flops_per_cycle_per_core", 0.0)),
        mem_channels=int(d["mem_channels"]),
        mem_bw_bytes_per_s=float(d["mem_bw_bytes_per_s"]),
        mem_capacity_bytes=float(d.get("mem_capacity_bytes", 0.0)),
        pcie_bw_bytes_per_s=float(d.get("pcie_bytes_per_s", 32e9)),
        l3_bytes=float(d.get("l3_bytes", 0.0)),
        tdp_w=float(d.get("tdp_w", 0.0)),
        sources=dict(d.get("sources", {})),
        notes=d.get("notes", ""),
    )


def _load(kind: str, build) -> dict[str, object]:
    out: dict[str, object] = {}
    root = resources.files("perfcast.hardware") / "data" / kind
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            spec = build(tomllib.loads(entry.read_text()))
            out[spec.id] = spec
    return out


@functools.cache
def _gpus() -> dict[str, GPUSpec]:
    return _load("gpus", _gpu_from_toml)  # type: ignore[return-value]


@functools.cache
def _cpus() -> dict[str, CPUSpec]:
    return _load("cpus", _cpu_from_toml)  # type: ignore[return-value]


@functools.cache
def _alias_table(kind: str) -> dict[str, str]:
    table: dict[str, str] = {}
    specs = _gpus() if kind == "gpus" else _cpus()
    for spec in specs.values():
        for name in (spec.id, spec.name, *spec.aliases):
            table[_norm(name)] = spec.id
    return table


def _lookup(kind: str, name: str):
    specs = _gpus() if kind == "gpus" else _cpus()
    key = _alias_table(kind).get(_norm(str(name)))
    if key is None:
        noun = "GPU" if kind == "gpus" else "CPU"
        raise ValueError(
            f"unknown {noun} {name!r}; known: {', '.join(sorted(specs))} "
            f"(`perfcast {kind}` lists them with aliases)"
        )
    return specs[key]


def get_gpu(name: str | GPUSpec) -> GPUSpec:
    """Resolve a GPU id or alias (case and punctuation insensitive) to its spec."""
    if isinstance(name, GPUSpec):
        return name
    return _lookup("gpus", name)


def get_cpu(name: str | CPUSpec) -> CPUSpec:
    """Resolve a CPU id or alias to its spec."""
    if isinstance(name, CPUSpec):
        return name
    return _lookup("cpus", name)


def list_gpus() -> list[GPUSpec]:
    return list(_gpus().values())


def list_cpus() -> list[CPUSpec]:
    return list(_cpus().values())
