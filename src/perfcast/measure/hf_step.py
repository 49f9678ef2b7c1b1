"""The ``eager`` reference at ``tp == 1``: a Hugging Face ``transformers`` causal LM, random weights.

The model is built from the shipped ``config.json`` (nothing is downloaded) with
``AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=bfloat16)`` under
``with torch.device("cuda")``, so the weights are initialised on the GPU by the model's own init.

- prefill: ``model(input_ids [batch, prompt], use_cache=True, logits_to_keep=1)``, as ``generate``
  calls it (a fresh ``DynamicCache`` is filled; logits for the last position only).
- decode: ``model(input_ids [batch, 1], past_key_values=cache, use_cache=True, logits_to_keep=1)``
  over a ``DynamicCache`` (the default cache of ``generate``) that already holds ``context`` tokens.
  The cache is built cheaply: each layer's keys/values are set to random tensors of the right shape
  (no prefill is run), and a fresh cache object over the same tensors is made before every timed
  step, outside the timed region. As in real HF decoding, each step's ``torch.cat`` copies the whole
  cache of every layer: that copy is part of the measured time.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

from perfcast.models import get_model

_DROP = ("quantization_config", "auto_map")


def config_dict(model: str, layers: int | None = None) -> dict:
    """The raw config.json dict behind ``model`` (a shipped id or a path), layers overridden."""
    spec = get_model(model)
    if spec.source.startswith("shipped:"):
        name = spec.source[len("shipped:"):].replace("/", "__") + ".json"
        text = (resources.files("perfcast.models") / "configs" / name).read_text()
    else:
        p = Path(spec.source)
        text = (p / "config.json" if p.is_dir() else p).read_text()
    cfg = json.loads(text)
    for k in _DROP:
        cfg.pop(k, None)
    if layers:
        inner = cfg["text_config"] if "hidden_size" not in cfg and "text_config" in cfg else cfg
        inner["num_hidden_layers"] = int(layers)
        if isinstance(inner.get("layer_types"), list):
            inner["layer_types"] = inner["layer_types"][: int(layers)]
    return cfg


def build(model: str, layers: int | None = None, device="cuda", dtype=torch.bfloat16):
    """An HF causal LM with random weights, built directly on ``device``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**config_dict(model, layers))
    with torch.device(device):
        try:
            m = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=dtype)
        except TypeError:  # transformers < 4.56 spells it torch_dtype
            m = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", torch_dtype=dtype)
    return m.eval()


def weight_bytes(m) -> int:
    return sum(p.numel() * p.element_size() for p in m.parameters())


def _kv_shape(m, batch: int, length: int):
    c = m.config.get_text_config(decoder=True) if hasattr(m.config, "get_text_config") else m.config
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    hd = getattr(c, "head_dim", None) or c.hidden_size // heads
    return c.num_hidden_layers, (batch, kv, length, hd)


def cache_bytes(m, batch: int, length: int) -> int:
    n, shape = _kv_shape(m, batch, length)
    return 2 * n * shape[0] * shape[1] * shape[2] * shape[3] * m.dtype.itemsize


def prefill_step(m, batch: int, prompt: int):
    """``(prep, fn)``: ``fn()`` runs one prefill forward; ``prep`` is None."""
    ids = torch.randint(0, m.config.get_text_config().vocab_size, (batch, prompt), device=m.device)

    def fn():
        return m(ids, use_cache=True, logits_to_keep=1).logits

    return None, fn


def decode_step(m, batch: int, context: int):
    """``(prep, fn)``: ``prep()`` makes a fresh DynamicCache over random K/V of ``context`` tokens."""
    from transformers import DynamicCache

    n, shape = _kv_shape(m, batch, context)
    kv = [
        (torch.empty(shape, device=m.device, dtype=m.dtype).normal_(),
         torch.empty(shape, device=m.device, dtype=m.dtype).normal_())
        for _ in range(n)
    ]
    ids = torch.randint(0, m.config.get_text_config().vocab_size, (batch, 1), device=m.device)
    state = {}

    def prep():
        state.pop("cache", None)
        cache = DynamicCache(config=m.config)
        if len(cache.layers) != n:  # no per-layer info in the config: lazily grown layers
            cache = DynamicCache()
            from transformers.cache_utils import DynamicLayer

            cache.layers = [DynamicLayer() for _ in range(n)]
        for layer, (k, v) in zip(cache.layers, kv, strict=True):
            layer.lazy_initialization(k, v)
            layer.keys, layer.values = k, v
        state["cache"] = cache

    def fn():
        return m(ids, past_key_values=state["cache"], use_cache=True, logits_to_keep=1).logits

    return prep, fn
