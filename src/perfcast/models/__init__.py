"""Model catalog: shipped Hugging Face config.json files and user paths -> ModelSpec."""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path

from perfcast.models.spec import ConfigError, ModelSpec, load_config_file, spec_from_config

__all__ = ["ConfigError", "ModelSpec", "get_model", "list_models", "spec_from_config"]


def _norm(s: str) -> str:
    return "".join(ch for ch in s.lower() if ch.isalnum())


@functools.cache
def _shipped() -> dict[str, str]:
    """HF id -> file name. Files are named ``org__name.json``."""
    out = {}
    root = resources.files("perfcast.models") / "configs"
    for entry in root.iterdir():
        if entry.name.endswith(".json"):
            hf_id = entry.name[: -len(".json")].replace("__", "/")
            out[hf_id] = entry.name
    return dict(sorted(out.items()))


@functools.cache
def _aliases() -> dict[str, str]:
    table = {}
    for hf_id in _shipped():
        table[_norm(hf_id)] = hf_id
        table.setdefault(_norm(hf_id.split("/")[-1]), hf_id)
    return table


def list_models() -> list[str]:
    """Hugging Face ids of the configs that ship with perfcast."""
    return list(_shipped())


@functools.cache
def _load_shipped(hf_id: str) -> ModelSpec:
    text = (resources.files("perfcast.models") / "configs" / _shipped()[hf_id]).read_text()
    return spec_from_config(json.loads(text), name=hf_id, source=f"shipped:{hf_id}")


def get_model(model: str | ModelSpec | Path) -> ModelSpec:
    """A shipped id (``meta-llama/Llama-3.1-8B`` or ``Llama-3.1-8B``), or a path to a config.json/dir."""
    if isinstance(model, ModelSpec):
        return model
    s = str(model)
    hf_id = _aliases().get(_norm(s))
    if hf_id is not None and not Path(s).exists():
        return _load_shipped(hf_id)
    p = Path(s)
    if p.exists():
        return load_config_file(p)
    raise ConfigError(
        f"unknown model {s!r}: not a shipped config and no such file; "
        "`perfcast models` lists the shipped ones, or pass a path to a config.json"
    )
