"""Which profile backs a GPU: its shipped measurements, learned efficiencies, or a user directory.

- ``"auto"``: the shipped profile of the GPU when there is one, else ``"none"``.
- ``"none"``: datasheet + efficiencies learned on the measured GPUs (forced, to measure transfer).
- a path: a directory written by ``perfcast calibrate``.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from perfcast.hardware.spec import GPUSpec
from perfcast.ops import analytical as an
from perfcast.profiles import Profile


@functools.cache
def shipped_profile_dir(gpu_id: str):
    root = resources.files("perfcast.profiles") / "data" / gpu_id
    return root if root.is_dir() and (root / "meta.json").is_file() else None


def shipped_profiles() -> list[str]:
    root = resources.files("perfcast.profiles") / "data"
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "meta.json").is_file())


@functools.cache
def _measured(path: str, gpu: GPUSpec) -> Profile:
    from perfcast.profiles.measured import learned_power, load_power, load_tables

    t = load_tables(path, gpu)
    return Profile(gpu=gpu, eff=t.efficiency, hosts=t.hosts, name=t.name, tables=t,
                   power=load_power(path) or learned_power(gpu))


def donor_profiles(gpu: GPUSpec) -> list[str]:
    """The shipped profiles of other GPUs, those of ``gpu``'s architecture first (what ``none`` learns from)."""
    return sorted((g for g in shipped_profiles() if g != gpu.id), key=lambda g: _arch(g) != gpu.architecture)


@functools.cache
def _none(gpu: GPUSpec) -> Profile:
    """Datasheet of ``gpu`` times the efficiency ratios measured on another GPU (same architecture
    first), never ``gpu``'s own measurements."""
    from perfcast.hardware import get_gpu
    from perfcast.profiles.measured import learned_hosts, learned_power, load_tables

    pick = donor_profiles(gpu)[:1]
    hosts = learned_hosts(exclude=gpu.id)
    if not pick:  # nothing measured anywhere: datasheet with prior efficiencies
        return Profile(gpu=gpu, eff=an.PRIOR, hosts=hosts, name="none (prior efficiencies)")
    t = load_tables(shipped_profile_dir(pick[0]), get_gpu(pick[0]))
    return Profile(gpu=gpu, eff=t.efficiency, hosts=hosts, name=f"none (ratios learned on {pick[0]})", tables=t,
                   power=learned_power(gpu))


def _arch(gid: str) -> str:
    from perfcast.hardware import get_gpu

    try:
        return get_gpu(gid).architecture
    except ValueError:
        return ""


def resolve_profile(gpu: GPUSpec, profile: str = "auto") -> Profile:
    if profile in (None, "", "auto"):
        d = shipped_profile_dir(gpu.id)
        if d is not None:
            return _measured(str(d), gpu)
        return _none(gpu)
    if profile == "none":
        return _none(gpu)
    p = Path(profile)
    if not (p / "meta.json").is_file():
        raise ValueError(f"profile {profile!r} is not 'auto', 'none' or a directory written by "
                         "`perfcast calibrate` (it has no meta.json)")
    return _measured(str(p.resolve()), gpu)
