"""A plain PyTorch decoder built from a :class:`ModelSpec` with random weights.

This is the reference implementation for the ``cuda-graph`` runtime (captured whole in a CUDA graph)
and, with ``tp > 1``, for ``eager`` (Megatron-style tensor parallel under ``torch.distributed``).

One layer: RMSNorm -> fused QKV ``F.linear`` (+bias when ``attn_bias``) -> optional per-head q/k
RMSNorm (``qk_norm``) -> RoPE (cos/sin tables precomputed) -> KV-cache write with ``index_copy_`` into a
static cache ``[batch, kv_heads, max_len, head_dim]`` -> ``scaled_dot_product_attention`` (causal over
the prompt in prefill; one query over ``cache[:, :, :context + 1]`` in decode; ``enable_gqa``) -> O
linear -> residual add -> RMSNorm -> fused gate/up linear -> ``silu(g) * u`` (``gelu_tanh`` for geglu;
``up -> gelu -> down`` for plain gelu) -> down linear -> residual add. Then the final norm over all
positions and the LM head on the last position only.

Tensor parallel (``tp_size > 1``): attention heads sharded; KV heads sharded too, or one KV head per
rank replicated when ``tp_size > n_kv_heads``; column-parallel QKV and gate/up, row-parallel O and
down, one ``all_reduce`` after O and one after down. The LM head is vocab-parallel and its logits are
gathered with one ``all_gather_into_tensor`` (rank-major ``[tp * batch, vocab / tp]``; the final
transpose into ``[batch, vocab]`` is left out, it is a few KB). The embedding is replicated (a row
lookup costs nothing; Megatron's vocab-parallel embedding would add one small all-reduce).

Pipeline parallel (``stage=range(a, b)``): this rank holds decoder layers ``a..b-1`` only, the
embedding when ``a == 0`` and the final norm and LM head when ``b`` is the last layer (a tied head is a
copy of its own on a last stage that is not also the first, as Megatron keeps it).
:meth:`Decoder.forward_stage` takes token ids (first stage) or the previous stage's hidden states
``[batch, q_len, hidden]`` and returns hidden states (or, on the last stage, logits); ``rows`` picks the
batch rows of the KV cache a micro-batch owns.

FP8 (``fp8=True``): the four linear weights of each layer are e4m3 (``float8_e4m3fn``) and each of those
linears runs ``torch._scaled_mm`` (per-tensor scales, bf16 out, bias fused) on its input cast to e4m3 by
one kernel (``x.to(float8_e4m3fn)``: the static-scale activation quantization of an FP8 checkpoint, the
scale folded into ``scale_a``); norms, attention, the KV cache, the embedding and the LM head stay in the
activation dtype, as FP8 checkpoints leave the LM head unquantized.

Approximations (do not change the cost of the ops modelled): weights are random; RoPE scaling
(llama3, yarn, ...) only changes the frequency table and is ignored; sliding windows, logit
soft-capping and Gemma's embedding scale are not applied; MoE and MLA models are not supported.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from perfcast.models.spec import ModelSpec

EPS = 1e-6


def _rand(shape, device, dtype, std: float = 0.02) -> torch.Tensor:
    """Random normal weights allocated directly on ``device`` (never zeros: zeros time faster)."""
    return torch.empty(shape, device=device, dtype=dtype).normal_(0.0, std)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class _Layer:
    """The weights of one decoder layer (plain tensors, no nn.Module bookkeeping)."""

    __slots__ = (
        "bdown",
        "bgu",
        "bo",
        "bqkv",
        "kn",
        "ln1",
        "ln1_b",
        "ln2",
        "ln2_b",
        "pn1",
        "pn2",
        "qn",
        "wdown",
        "wgu",
        "wo",
        "wqkv",
    )


class Decoder:
    """Random-weight decoder for one tensor-parallel rank.

    ``forward(ids, pos, kv_len)``: ``ids [batch, q_len]``, ``pos [q_len]`` the absolute positions
    (where K/V are written), ``kv_len`` ``None`` for prefill (causal attention over the fresh K/V)
    or the number of cached tokens to attend over (decode). Returns the last position's logits.
    """

    def __init__(self, spec: ModelSpec, *, device="cuda", dtype=torch.bfloat16, tp_rank: int = 0,
                 tp_size: int = 1, group=None, seed: int = 0, stage: range | None = None, fp8: bool = False):
        if spec.is_moe or spec.is_mla:
            raise NotImplementedError(f"{spec.name}: the plain decoder has no MoE / MLA layers")
        if spec.n_heads % tp_size:
            raise ValueError(f"tp {tp_size} does not divide the {spec.n_heads} attention heads")
        if spec.n_kv_heads >= tp_size and spec.n_kv_heads % tp_size:
            raise ValueError(f"tp {tp_size} does not divide the {spec.n_kv_heads} KV heads")
        if spec.n_kv_heads < tp_size and tp_size % spec.n_kv_heads:
            raise ValueError(f"{spec.n_kv_heads} KV heads cannot be replicated over tp {tp_size}")
        self.stage = range(spec.n_layers) if stage is None else stage
        if len(self.stage) < 1 or self.stage.start < 0 or self.stage.stop > spec.n_layers:
            raise ValueError(f"stage {self.stage} is not a non-empty range of the {spec.n_layers} layers")
        self.first, self.last = self.stage.start == 0, self.stage.stop == spec.n_layers
        self.spec, self.device, self.dtype = spec, torch.device(device), dtype
        self.fp8 = bool(fp8)
        if self.fp8 and dtype not in (torch.bfloat16, torch.float16):
            raise ValueError("fp8 weights need bf16 or fp16 activations")
        self._one = torch.ones((), device=self.device, dtype=torch.float32) if self.fp8 else None
        self.tp_rank, self.tp_size, self.group = tp_rank, tp_size, group
        self.hd = spec.head_dim
        self.hq = spec.n_heads // tp_size
        self.hkv = max(spec.n_kv_heads // tp_size, 1)
        self.inter = math.ceil(spec.intermediate / tp_size)
        self.vocab_local = math.ceil(spec.vocab / tp_size)
        self.gated = spec.mlp_act in ("swiglu", "geglu")
        torch.manual_seed(seed + 7919 * tp_rank + 104729 * self.stage.start)
        self._build()
        self.k_cache = self.v_cache = None
        self.max_len = 0

    # ------------------------------------------------------------------ weights
    def _norm_w(self, n=None):
        n = n or self.spec.hidden
        return torch.ones(n, device=self.device, dtype=self.dtype)

    def _build(self):
        s, dev, dt, h = self.spec, self.device, self.dtype, self.spec.hidden
        ln = s.norm == "layernorm"
        qkv_out = (self.hq + 2 * self.hkv) * self.hd
        self.embed = _rand((s.vocab, h), dev, dt) if self.first else None
        self.layers = []
        for _ in self.stage:
            L = _Layer()
            L.ln1, L.ln2 = self._norm_w(), self._norm_w()
            L.ln1_b = _rand(h, dev, dt) if ln else None
            L.ln2_b = _rand(h, dev, dt) if ln else None
            L.wqkv = self._lin_w((qkv_out, h))
            L.bqkv = _rand(qkv_out, dev, dt) if s.attn_bias else None
            L.qn = self._norm_w(self.hd) if s.qk_norm else None
            L.kn = self._norm_w(self.hd) if s.qk_norm else None
            L.wo = self._lin_w((h, self.hq * self.hd))
            L.bo = _rand(h, dev, dt) if s.o_bias else None
            L.pn1 = self._norm_w() if s.post_norms else None
            L.pn2 = self._norm_w() if s.post_norms else None
            up = (2 if self.gated else 1) * self.inter
            L.wgu = self._lin_w((up, h))
            L.bgu = _rand(up, dev, dt) if s.mlp_bias else None
            L.wdown = self._lin_w((h, self.inter))
            L.bdown = _rand(h, dev, dt) if s.mlp_bias else None
            self.layers.append(L)
        self.final_norm = self.final_norm_b = self.lm_head = None
        if self.last:
            self._build_head(ln)
        half = torch.arange(0, self.hd, 2, device=dev, dtype=torch.float32) / self.hd
        self.inv_freq = 1.0 / (s.rope_theta ** half)

    def _lin_w(self, shape):
        """A linear weight ``[out, in]``: the activation dtype, or e4m3 under ``fp8``."""
        w = _rand(shape, self.device, self.dtype)
        return w.to(torch.float8_e4m3fn) if self.fp8 else w

    def _lin(self, x, w, b=None):
        """``F.linear(x, w, b)``; under ``fp8``: cast x to e4m3 (one kernel), then ``torch._scaled_mm``."""
        if not self.fp8:
            return F.linear(x, w, b)
        shape = x.shape
        xq = x.reshape(-1, shape[-1]).to(torch.float8_e4m3fn)
        y = torch._scaled_mm(xq, w.t(), scale_a=self._one, scale_b=self._one, bias=b, out_dtype=self.dtype)
        return y.view(*shape[:-1], w.shape[0])

    def _build_head(self, ln: bool):
        s, dev, dt, h = self.spec, self.device, self.dtype, self.spec.hidden
        self.final_norm = self._norm_w()
        self.final_norm_b = _rand(h, dev, dt) if ln else None
        if s.tied_embeddings and self.embed is not None:
            lo = self.tp_rank * self.vocab_local
            lm = self.embed[lo: lo + self.vocab_local]
            if lm.shape[0] < self.vocab_local:  # last shard of a vocab tp does not divide: pad
                lm = torch.cat([lm, _rand((self.vocab_local - lm.shape[0], h), dev, dt)])
            self.lm_head = lm
        else:
            self.lm_head = _rand((self.vocab_local, h), dev, dt)

    def weight_bytes(self) -> int:
        """Bytes of this rank's weights (the tied LM head counted once)."""
        seen, total = set(), 0
        tensors = [self.embed, self.lm_head, self.final_norm, self.final_norm_b]
        for L in self.layers:
            tensors += [getattr(L, n) for n in _Layer.__slots__]
        for t in tensors:
            if t is not None and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
        return total

    # ------------------------------------------------------------------ cache
    def cache_bytes(self, batch: int, max_len: int) -> int:
        esz = torch.finfo(self.dtype).bits // 8
        return 2 * len(self.layers) * batch * self.hkv * max_len * self.hd * esz

    def activation_bytes(self, tokens: int) -> int:
        """A generous bound on the transient activations of one forward over ``tokens`` tokens."""
        esz = torch.finfo(self.dtype).bits // 8
        per_tok = 6 * self.spec.hidden + 3 * (self.hq + 2 * self.hkv) * self.hd + 4 * self.inter
        return tokens * per_tok * esz

    def alloc_cache(self, batch: int, max_len: int) -> None:
        """A static KV cache for ``max_len`` tokens, filled with random values, plus RoPE tables."""
        self.free_cache()
        shape = (len(self.layers), batch, self.hkv, max_len, self.hd)
        self.k_cache = _rand(shape, self.device, self.dtype, 1.0)
        self.v_cache = _rand(shape, self.device, self.dtype, 1.0)
        t = torch.arange(max_len, device=self.device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos, self.sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)
        self.max_len = max_len

    def free_cache(self) -> None:
        self.k_cache = self.v_cache = self.cos = self.sin = None
        self.max_len = 0

    # ------------------------------------------------------------------ forward
    def _norm(self, x, w, b=None):
        if self.spec.norm == "layernorm":
            return F.layer_norm(x, (x.shape[-1],), w, b, EPS)
        return F.rms_norm(x, (x.shape[-1],), w, EPS)

    def _reduce(self, x):
        if self.tp_size > 1:
            torch.distributed.all_reduce(x, group=self.group)
        return x

    def _residual(self, x, y, w, bias, post_norm):
        """``x`` plus the row-parallel output projection of ``y`` (all-reduced under TP), its bias and
        post-norm where the model has them (attention's O projection, the MLP's down projection)."""
        y = self._reduce(self._lin(y, w))
        if bias is not None:
            y = y + bias
        if post_norm is not None:
            y = self._norm(y, post_norm)
        return x + y

    def forward(self, ids: torch.Tensor, pos: torch.Tensor, kv_len: int | None = None) -> torch.Tensor:
        return self.forward_stage(ids, pos, kv_len)

    def forward_stage(self, inp: torch.Tensor, pos: torch.Tensor, kv_len: int | None = None,
                      rows: slice | None = None) -> torch.Tensor:
        """This rank's layers over ``inp``: token ids ``[batch, q_len]`` on the first stage, else the
        previous stage's hidden states ``[batch, q_len, hidden]``. Returns the next stage's input, or the
        last position's logits on the last stage. ``rows``: the KV-cache batch rows of this micro-batch."""
        x = F.embedding(inp, self.embed) if self.first else inp
        x = self._layers(x, pos, kv_len, rows)
        return self._head(x) if self.last else x

    def _layers(self, x: torch.Tensor, pos: torch.Tensor, kv_len: int | None, rows: slice | None):
        b, q_len = x.shape[0], x.shape[1]
        hq, hkv, hd = self.hq, self.hkv, self.hd
        gqa = hq != hkv
        cos = self.cos.index_select(0, pos)
        sin = self.sin.index_select(0, pos)
        for i, L in enumerate(self.layers):
            h = self._norm(x, L.ln1, L.ln1_b)
            qkv = self._lin(h, L.wqkv, L.bqkv)
            q, k, v = qkv.split([hq * hd, hkv * hd, hkv * hd], dim=-1)
            q = q.view(b, q_len, hq, hd)
            k = k.view(b, q_len, hkv, hd)
            if L.qn is not None:
                q = F.rms_norm(q, (hd,), L.qn, EPS)
                k = F.rms_norm(k, (hd,), L.kn, EPS)
            q = q.transpose(1, 2)
            k = k.transpose(1, 2)
            v = v.view(b, q_len, hkv, hd).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            kc, vc = self.k_cache[i], self.v_cache[i]
            if rows is not None:
                kc, vc = kc[rows], vc[rows]
            kc.index_copy_(2, pos, k)
            vc.index_copy_(2, pos, v)
            if kv_len is None:
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
            else:
                o = F.scaled_dot_product_attention(q, kc[:, :, :kv_len], vc[:, :, :kv_len], enable_gqa=gqa)
            x = self._residual(x, o.transpose(1, 2).reshape(b, q_len, hq * hd), L.wo, L.bo, L.pn1)
            h = self._norm(x, L.ln2, L.ln2_b)
            gu = self._lin(h, L.wgu, L.bgu)
            if self.gated:
                g, u = gu.chunk(2, dim=-1)
                a = F.silu(g) if self.spec.mlp_act == "swiglu" else F.gelu(g, approximate="tanh")
                m = a * u
            else:
                m = F.gelu(gu, approximate="tanh")
            x = self._residual(x, m, L.wdown, L.bdown, L.pn2)
        return x

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        x = self._norm(x, self.final_norm, self.final_norm_b)
        logits = F.linear(x[:, -1], self.lm_head)
        if self.tp_size > 1:
            full = torch.empty((self.tp_size * b, self.vocab_local), device=logits.device, dtype=logits.dtype)
            torch.distributed.all_gather_into_tensor(full, logits, group=self.group)
            logits = full
        return logits

    # ------------------------------------------------------------------ convenience
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Causal forward over ``ids [batch, prompt]`` at positions 0..prompt-1."""
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.forward(ids, pos, None)

    def decode(self, ids: torch.Tensor, context: int) -> torch.Tensor:
        """One token per sequence at position ``context``, attending over ``context + 1`` cached tokens."""
        assert ids.shape[1] == 1, "decode takes one token per sequence"
        pos = torch.tensor([context], device=ids.device)
        return self.forward(ids, pos, context + 1)
