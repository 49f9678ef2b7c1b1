"""Hugging Face ``config.json`` -> a frozen :class:`ModelSpec`.

Only the facts that decide cost and memory are kept. Families are registered with a decorator;
an unknown ``model_type`` with a standard decoder layout is read by the generic reader with a
warning. A missing field that cannot be derived raises :class:`ConfigError` naming it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path


class ConfigError(ValueError):
    """A config.json that perfcast cannot read; the message names the field."""


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer as perfcast costs it. Counts, not bytes: dtypes come later."""

    name: str
    model_type: str
    hidden: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int  # dense MLP width
    vocab: int
    max_positions: int
    tied_embeddings: bool = False
    mlp_act: str = "swiglu"  # "swiglu" (gate*up), "geglu" (gelu gate*up), "gelu" (up -> act -> down)
    norm: str = "rmsnorm"  # or "layernorm"
    attn_bias: bool = False  # q/k/v projection bias
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3 / Gemma3: RMSNorm on q and k per head
    post_norms: bool = False  # Gemma2/3: extra norms after attention and MLP (4 norms per layer)
    sliding_window: int | None = None
    sliding_layers: int = 0  # how many layers use the sliding window (0: none, n_layers: all)
    rope_theta: float = 10000.0
    rope_scaling: str | None = None
    attn_softcap: float | None = None  # Gemma2 logit soft-capping
    # mixture of experts (0 experts: dense)
    n_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate: int = 0
    n_shared_experts: int = 0
    shared_intermediate: int = 0  # width of the shared expert(s) MLP, total
    first_dense_layers: int = 0  # DeepSeek: the first k layers are dense MLPs
    moe_layer_freq: int = 1
    # multi-head latent attention (DeepSeek-V2/V3); 0 = ordinary attention
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    approximations: tuple[str, ...] = ()
    source: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    # --- derived -----------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def n_moe_layers(self) -> int:
        if not self.is_moe:
            return 0
        cand = range(self.first_dense_layers, self.n_layers)
        return sum(1 for i in cand if (i + 1) % max(self.moe_layer_freq, 1) == 0 or self.moe_layer_freq <= 1)

    @property
    def n_dense_layers(self) -> int:
        return self.n_layers - self.n_moe_layers

    def kv_elems_per_token_per_layer(self) -> int:
        """Elements stored in the KV cache per token per layer (K and V; MLA: latent + rope key)."""
        if self.is_mla:
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.n_kv_heads * self.head_dim

    def attn_params(self) -> int:
        """Parameters of one attention block (projections, biases, q/k norms)."""
        h = self.hidden
        if self.is_mla:
            qk_hd = self.qk_nope_head_dim + self.qk_rope_head_dim
            if self.q_lora_rank:
                q = h * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * self.n_heads * qk_hd
            else:
                q = h * self.n_heads * qk_hd
            kv_a = h * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank
            kv_b = self.kv_lora_rank * self.n_heads * (self.qk_nope_head_dim + self.v_head_dim)
            o = self.n_heads * self.v_head_dim * h
            return q + kv_a + kv_b + o
        p = h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h
        if self.attn_bias:
            p += self.q_dim + 2 * self.kv_dim
        if self.o_bias:
            p += h
        if self.qk_norm:
            p += 2 * self.head_dim
        return p

    def mlp_params(self, width: int) -> int:
        """Parameters of one MLP of intermediate ``width``."""
        h = self.hidden
        mats = 3 if self.mlp_act in ("swiglu", "geglu") else 2
        p = mats * h * width
        if self.mlp_bias:
            p += (mats - 1) * width + h
        return p

    def norm_params(self) -> int:
        per = self.hidden * (2 if self.norm == "layernorm" else 1)
        return per * (4 if self.post_norms else 2)

    def layer_params(self, layer: int) -> int:
        """Parameters of decoder layer ``layer`` (all experts counted)."""
        p = self.attn_params() + self.norm_params()
        if self.is_moe and self.is_moe_layer(layer):
            p += self.n_experts * self.mlp_params(self.moe_intermediate)
            p += self.hidden * self.n_experts  # router
            if self.n_shared_experts:
                p += self.mlp_params(self.shared_intermediate)
            p += self.extra.get("router_bias", 0) * self.n_experts
            p += self.extra.get("shared_gate", 0) * self.hidden
        else:
            p += self.mlp_params(self.intermediate)
        return p

    def is_moe_layer(self, layer: int) -> bool:
        if not self.is_moe or layer < self.first_dense_layers:
            return False
        f = max(self.moe_layer_freq, 1)
        return (layer + 1) % f == 0

    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    def lm_head_params(self) -> int:
        return 0 if self.tied_embeddings else self.vocab * self.hidden

    def final_norm_params(self) -> int:
        return self.hidden * (2 if self.norm == "layernorm" else 1)

    def total_params(self) -> int:
        """Every parameter, tied embeddings counted once."""
        return (
            self.embedding_params()
            + self.lm_head_params()
            + self.final_norm_params()
            + sum(self.layer_params(i) for i in range(self.n_layers))
        )

    def active_params(self) -> int:
        """Parameters touched per token (MoE: top-k routed plus shared experts)."""
        if not self.is_moe:
            return self.total_params()
        total = self.total_params()
        for i in range(self.n_layers):
            if self.is_moe_layer(i):
                total -= (self.n_experts - self.experts_per_token) * self.mlp_params(self.moe_intermediate)
        return total

    def with_layers(self, n_layers: int) -> ModelSpec:
        return replace(self, n_layers=n_layers)


# --------------------------------------------------------------------------------------
# readers: a registry of model_type -> function(config dict) -> dict of ModelSpec overrides

_READERS: dict[str, Callable[[dict], dict]] = {}


def reader(*model_types: str):
    """Register a family reader that returns ModelSpec fields beyond the generic ones."""

    def deco(fn: Callable[[dict], dict]):
        for t in model_types:
            _READERS[t] = fn
        return fn

    return deco


def _need(cfg: dict, *names: str):
    for n in names:
        if n in cfg and cfg[n] is not None:
            return cfg[n]
    raise ConfigError(f"config.json has no {names[0]!r} field" + (
        f" (also tried {', '.join(repr(n) for n in names[1:])})" if len(names) > 1 else ""
    ))


def _text_config(cfg: dict) -> dict:
    # multimodal wrappers (Gemma 3, Llama 4, Mistral 3) keep the decoder under text_config
    if "text_config" in cfg and isinstance(cfg["text_config"], dict) and "hidden_size" not in cfg:
        inner = dict(cfg["text_config"])
        inner.setdefault("model_type", cfg.get("model_type", ""))
        inner.setdefault("_outer_model_type", cfg.get("model_type", ""))
        return inner
    return cfg


def _generic(cfg: dict) -> dict:
    hidden = int(_need(cfg, "hidden_size", "n_embd", "d_model"))
    heads = int(_need(cfg, "num_attention_heads", "n_head", "num_heads"))
    kv = cfg.get("num_key_value_heads")
    kv = heads if kv is None else int(kv)
    head_dim = cfg.get("head_dim")
    if head_dim is None:
        if hidden % heads:
            raise ConfigError(
                f"config.json has no 'head_dim' and hidden_size {hidden} is not divisible by "
                f"num_attention_heads {heads}"
            )
        head_dim = hidden // heads
    act = str(cfg.get("hidden_act", cfg.get("hidden_activation", "silu"))).lower()
    mlp_act = "swiglu" if act in ("silu", "swish", "swiglu") else "geglu"
    window = cfg.get("sliding_window")
    use_window = cfg.get("use_sliding_window", True)
    n_layers = int(_need(cfg, "num_hidden_layers", "n_layer", "num_layers"))
    rs = cfg.get("rope_scaling") or {}
    return dict(
        model_type=str(cfg.get("model_type", "unknown")),
        hidden=hidden,
        n_layers=n_layers,
        n_heads=heads,
        n_kv_heads=kv,
        head_dim=int(head_dim),
        intermediate=int(_need(cfg, "intermediate_size", "n_inner", "ffn_dim")),
        vocab=int(_need(cfg, "vocab_size")),
        max_positions=int(_need(cfg, "max_position_embeddings", "n_positions", "max_seq_len")),
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        mlp_act=mlp_act,
        attn_bias=bool(cfg.get("attention_bias", False)),
        o_bias=bool(cfg.get("attention_bias", False)),
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        sliding_window=int(window) if (window and use_window) else None,
        sliding_layers=n_layers if (window and use_window) else 0,
        rope_theta=float(cfg.get("rope_theta", 10000.0) or 10000.0),
        rope_scaling=(rs.get("rope_type") or rs.get("type")) if isinstance(rs, dict) else None,
    )


@reader("llama", "mistral", "granite")
def _llama(cfg: dict) -> dict:
    return {}


@reader("qwen2")
def _qwen2(cfg: dict) -> dict:
    # Qwen2/2.5: bias on q/k/v, none on o. Sliding window is declared but off (use_sliding_window false)
    window = cfg.get("sliding_window") if cfg.get("use_sliding_window", False) else None
    n_swa = 0
    if window:
        n_swa = max(0, int(cfg["num_hidden_layers"]) - int(cfg.get("max_window_layers", 0)))
    return dict(attn_bias=True, o_bias=False, sliding_window=window, sliding_layers=n_swa)


@reader("qwen3")
def _qwen3(cfg: dict) -> dict:
    window = cfg.get("sliding_window") if cfg.get("use_sliding_window", False) else None
    return dict(qk_norm=True, sliding_window=window, sliding_layers=cfg["num_hidden_layers"] if window else 0)


@reader("phi3")
def _phi3(cfg: dict) -> dict:
    # Phi-3 fuses qkv and gate_up in its checkpoint; the cost is the same as separate projections.
    window = cfg.get("sliding_window")
    n = int(cfg["num_hidden_layers"])
    return dict(
        sliding_window=int(window) if window else None,
        sliding_layers=n if window else 0,
        approximations=("phi3 LongRoPE scaling costed as plain RoPE",) if cfg.get("rope_scaling") else (),
    )


@reader("gemma2")
def _gemma2(cfg: dict) -> dict:
    n = int(cfg["num_hidden_layers"])
    return dict(
        mlp_act="geglu",
        tied_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        post_norms=True,
        sliding_window=int(cfg.get("sliding_window") or 4096),
        sliding_layers=n // 2,  # alternating local/global
        attn_softcap=cfg.get("attn_logit_softcapping"),
        approximations=("attention logit soft-capping costed as flash attention",),
    )


@reader("gemma3", "gemma3_text")
def _gemma3(cfg: dict) -> dict:
    n = int(cfg["num_hidden_layers"])
    pattern = int(cfg.get("sliding_window_pattern", 6) or 6)
    layer_types = cfg.get("layer_types")
    if isinstance(layer_types, list) and layer_types:
        n_swa = sum(1 for t in layer_types if t == "sliding_attention")
    else:
        n_swa = n - n // pattern  # 5 local layers per global one
    return dict(
        mlp_act="geglu",
        tied_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        post_norms=True,
        qk_norm=True,
        sliding_window=int(cfg.get("sliding_window") or 1024),
        sliding_layers=n_swa,
    )


@reader("mixtral")
def _mixtral(cfg: dict) -> dict:
    return dict(
        n_experts=int(_need(cfg, "num_local_experts")),
        experts_per_token=int(_need(cfg, "num_experts_per_tok")),
        moe_intermediate=int(cfg["intermediate_size"]),
    )


@reader("qwen2_moe", "qwen3_moe")
def _qwen_moe(cfg: dict) -> dict:
    shared = int(cfg.get("shared_expert_intermediate_size", 0) or 0)
    n = int(cfg["num_hidden_layers"])
    sparse_step = int(cfg.get("decoder_sparse_step", 1) or 1)
    mlp_only = cfg.get("mlp_only_layers") or []
    out = dict(
        n_experts=int(_need(cfg, "num_experts")),
        experts_per_token=int(_need(cfg, "num_experts_per_tok")),
        moe_intermediate=int(_need(cfg, "moe_intermediate_size")),
        n_shared_experts=1 if shared else 0,
        shared_intermediate=shared,
        moe_layer_freq=sparse_step,
        qk_norm=cfg.get("model_type") == "qwen3_moe",
        attn_bias=cfg.get("model_type") == "qwen2_moe",
        o_bias=False,
        extra={"shared_gate": 1 if shared else 0},
    )
    if mlp_only:
        out["approximations"] = (f"mlp_only_layers {mlp_only} treated as MoE layers",)
    del n
    return out


@reader("deepseek_v2", "deepseek_v3")
def _deepseek(cfg: dict) -> dict:
    n_shared = int(cfg.get("n_shared_experts", 0) or 0)
    moe_inter = int(_need(cfg, "moe_intermediate_size"))
    return dict(
        n_experts=int(_need(cfg, "n_routed_experts")),
        experts_per_token=int(_need(cfg, "num_experts_per_tok")),
        moe_intermediate=moe_inter,
        n_shared_experts=n_shared,
        shared_intermediate=n_shared * moe_inter,
        first_dense_layers=int(cfg.get("first_k_dense_replace", 0) or 0),
        moe_layer_freq=int(cfg.get("moe_layer_freq", 1) or 1),
        kv_lora_rank=int(_need(cfg, "kv_lora_rank")),
        q_lora_rank=int(cfg.get("q_lora_rank") or 0),
        qk_nope_head_dim=int(_need(cfg, "qk_nope_head_dim")),
        qk_rope_head_dim=int(_need(cfg, "qk_rope_head_dim")),
        v_head_dim=int(_need(cfg, "v_head_dim")),
        head_dim=int(cfg["qk_nope_head_dim"]) + int(cfg["qk_rope_head_dim"]),
        n_kv_heads=int(cfg["num_attention_heads"]),
        extra={"router_bias": 1 if cfg.get("model_type") == "deepseek_v3" else 0},
        approximations=("multi-token-prediction layers not costed",)
        if cfg.get("num_nextn_predict_layers")
        else (),
    )


def spec_from_config(cfg: dict, name: str = "", source: str = "") -> ModelSpec:
    """Build a :class:`ModelSpec` from a parsed config.json dict."""
    if not isinstance(cfg, dict):
        raise ConfigError("config.json must hold a JSON object")
    cfg = _text_config(cfg)
    fields = _generic(cfg)
    mt = str(cfg.get("model_type", "")).lower()
    fn = _READERS.get(mt)
    if fn is None:
        warnings.warn(
            f"model_type {mt!r} is not a known family; read as a standard decoder "
            "(RMSNorm, RoPE, SwiGLU unless hidden_act says otherwise)",
            stacklevel=2,
        )
        fields["approximations"] = (f"unknown model_type {mt!r} read as a standard decoder",)
    else:
        fields.update(fn(cfg))
    if fields["n_heads"] % max(fields["n_kv_heads"], 1):
        raise ConfigError(
            f"num_attention_heads {fields['n_heads']} is not a multiple of num_key_value_heads "
            f"{fields['n_kv_heads']}"
        )
    for k in ("hidden", "n_layers", "n_heads", "n_kv_heads", "head_dim", "intermediate", "vocab"):
        if fields[k] <= 0:
            raise ConfigError(f"config.json field for {k} must be positive, got {fields[k]}")
    label = name or cfg.get("_name_or_path") or (cfg.get("architectures") or [mt])[0]
    return ModelSpec(name=str(label), source=source, **fields)


def load_config_file(path: str | Path) -> ModelSpec:
    """Read a config.json (or a directory holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise ConfigError(f"no config.json at {path}")
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p} is not valid JSON: {e}") from None
    return spec_from_config(cfg, name=p.parent.name if p.name == "config.json" else p.stem, source=str(p))
