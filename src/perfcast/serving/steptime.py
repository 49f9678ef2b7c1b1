"""Iteration time of a serving engine, fast enough to call once per simulated iteration.

One engine iteration holds prefill chunks and decode tokens (chunked prefill). Its time is built
from the step model's own ops (``perfcast.step``), split by what each op's cost depends on:

- token-linear ops (GEMMs, norms, RoPE, KV writes, residual adds, TP all-reduces, PP sends) depend
  on the iteration's total tokens ``T`` only: tabulated once per config at every ``T`` up to
  ``DENSE_TOKENS`` (~0.1 s; a 64-point log grid is cheaper, but GEMM wave quantization makes
  linear interpolation on it up to 17% off), log-interpolated above;
- the LM head (and the TP logits gather) depends on ``S``, the sequences in the batch;
- decode attention: a table over (decoding sequences, kv length), read at the mean context;
- prefill attention: one varlen launch over every chunk, costed as a uniform launch of ``n``
  chunks with the chunks' mean ``q`` and the kv length that keeps the causal FLOPs exact; its
  seconds per query-key pair interpolated between cached shapes (8 per octave) and multiplied by
  the exact pairs;
- the runtime's overhead: the CUDA-graph launch (constant), or for eager the host time not hidden
  behind the GPU, tabulated over (tokens, attention seconds) from the runtime's own model; the eager
  host times can be scaled (``host_scale``) to a host measured in the same session;
- optionally (``kv_read``, the ``hf-cb`` scheduler) a gather of the cached K/V the iteration reads
  into one contiguous buffer per layer (``index_select`` of K and of V, as transformers' paged cache
  does before a varlen attention kernel): an elementwise copy of ``kv_read`` tokens, counted with
  the attention (the eager host model sees it where the attention runs).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import replace

import numpy as np

from perfcast.models.builder import kv_heads_per_gpu
from perfcast.ops.base import Op
from perfcast.step.costs import step_costs
from perfcast.step.predict import StepConfig, _act_dtype, host_key, step_ops
from perfcast.step.runtime import get_runtime

DENSE_TOKENS = 16384  # exact table up to here; log grid above
_LOG_POINTS = 96  # grid points per table above DENSE_TOKENS and along kv length


def _bracket(x: float, bits: int = 3) -> tuple[int, int, float]:
    """Neighbours ``lo <= x <= hi`` of a positive length on a grid of ``bits`` significant bits
    (8 points per octave), and ``x``'s weight towards ``hi``."""
    xi = max(1, int(x))
    shift = xi.bit_length() - bits
    if shift <= 0:
        return xi, xi + 1, x - xi
    lo = (xi >> shift) << shift
    return lo, lo + (1 << shift), (x - lo) / (1 << shift)


def _grid_points(top: int, bits: int = 3) -> list[int]:
    """Every point of the :func:`_bracket` grid up to (and just past) ``top``."""
    pts = set(range(1, (1 << bits) + 1))
    shift = 1
    while (1 << (bits - 1 + shift)) <= top:
        pts.update(m << shift for m in range(1 << (bits - 1), 1 << bits))
        shift += 1
    pts.add(1 << (bits - 1 + shift))
    return sorted(pts)


def _pairs(q: float, kv: float) -> float:
    """Causal query-key pairs of a chunk of ``q`` queries ending at position ``kv``."""
    return q * kv - q * (q - 1) / 2.0


class IterationModel:
    """Seconds of one engine iteration; build once per deployment, call per iteration.

    ``max_tokens``: the most tokens one iteration may hold; ``max_seqs``: the most sequences;
    ``host_scale``: a factor on the eager runtime's host dispatch times (per op, layer and step).
    """

    def __init__(self, cfg: StepConfig, max_tokens: int, max_seqs: int, host_scale: float = 1.0):
        from perfcast.profiles.registry import resolve_profile

        self.cfg = cfg
        self.max_tokens = int(max_tokens)
        self.max_seqs = int(max_seqs)
        self.host_scale = float(host_scale)
        self.prof = resolve_profile(cfg.gpu, cfg.profile)
        self._rt = get_runtime(cfg.runtime)
        host = self.prof.host(host_key(cfg))
        if self.host_scale != 1.0:
            host = replace(host, per_op_s=host.per_op_s * self.host_scale,
                           per_layer_s=host.per_layer_s * self.host_scale,
                           per_step_s=host.per_step_s * self.host_scale)
        self._host = host
        self._gather: tuple[list[float], list[float]] | None = None  # kv tokens -> seconds (lazy)
        self._attn_ops = [o for o in step_ops(cfg, "prefill", 1, 1, 1) if o.kind == "attention"]
        self._build_linear()
        self._build_decode_attention()
        self._prefill_tabs: dict[int, list[list[float]]] = {}  # chunks -> [q point][kv point]
        self._q_points = _grid_points(max(self.max_tokens, 2))
        self._kv_points = _grid_points(self.cfg.model.max_positions + 1)
        self._q_at = {v: i for i, v in enumerate(self._q_points)}
        self._kv_at = {v: i for i, v in enumerate(self._kv_points)}

    # ------------------------------------------------------------------ tables
    def _run(self, ops, costs):
        """The runtime's step; with pp > 1 its time is one micro-batch through the stages, as the step
        model has it (every stage its own graph launch or host process)."""
        rt = self._rt(ops, costs, self._host, self.prof.eff)
        if self.cfg.pp > 1:
            from perfcast.step.pipeline import latency_from_ops

            rt = replace(rt, seconds=latency_from_ops(self.cfg, ops, costs, self._host, self.prof.eff))
        return rt

    def _charged(self, ops):
        """The runtime's step time, and each op's seconds (all launches) as the runtime charges it."""
        costs = step_costs(ops, self.cfg.gpu, self.prof)
        rt = self._run(ops, costs)
        return rt, [np.asarray(s, dtype=float) * o.count for o, s in zip(ops, rt.op_seconds)]

    def _build_linear(self):
        top = max(self.max_tokens, self.max_seqs, 1)
        dense = np.arange(1, min(top, DENSE_TOKENS) + 1)
        extra = np.unique(np.round(np.logspace(np.log10(DENSE_TOKENS), np.log10(top), _LOG_POINTS)))
        grid = np.concatenate([dense, extra[extra > dense[-1]]]).astype(np.int64)
        ops = step_ops(self.cfg, "decode", grid, 1, 1)  # batch T of one token each: T tokens
        rt, per = self._charged(ops)
        lin = np.zeros(grid.shape)
        head = np.zeros(grid.shape)
        for o, s in zip(ops, per):
            if o.kind == "attention":
                continue
            if o.group == "post" and o.kind in ("gemm", "collective"):
                head = head + s  # LM head and logits gather: one row per sequence
            else:
                lin = lin + s
        self._grid = grid.tolist()
        self._lin = lin.tolist()
        self._head = head.tolist()
        self._ndense = len(dense)
        ovh = np.broadcast_to(np.asarray(rt.seconds - rt.gpu_seconds, dtype=float), grid.shape)
        self._ovh_const = float(ovh[0]) if np.ptp(ovh) < 1e-12 else None
        if self._ovh_const is None:
            self._build_overhead(top)

    def _build_overhead(self, top: int):
        """Eager: host time the GPU does not hide depends on how much GPU work each layer holds, so
        tabulate it over (tokens, attention seconds) by running the runtime's own model."""
        t_grid = np.unique(np.round(np.logspace(0, np.log10(top), 192))).astype(np.int64)
        a_grid = np.logspace(-6, 1, 64)
        ops = step_ops(self.cfg, "decode", t_grid[:, None], 1, 1)
        costs = step_costs(ops, self.cfg.gpu, self.prof)
        n_attn = sum(o.count for o in ops if o.kind == "attention")
        costs = [replace(c, seconds=a_grid[None, :] / n_attn + 0 * t_grid[:, None]) if o.kind == "attention"
                 else c for o, c in zip(ops, costs)]
        rt = self._run(ops, costs)
        ovh = np.broadcast_to(np.asarray(rt.seconds - rt.gpu_seconds, dtype=float),
                              (len(t_grid), len(a_grid)))
        self._ovh_t = np.log(t_grid).tolist()
        self._ovh_a = np.log(a_grid).tolist()
        self._ovh = ovh.tolist()

    def _build_decode_attention(self):
        n = np.arange(1, self.max_seqs + 1)
        top = self.cfg.model.max_positions + 1
        kv = np.unique(np.round(np.logspace(0, np.log10(top), _LOG_POINTS * 2))).astype(np.int64)
        nn, kk = np.meshgrid(n, kv, indexing="ij")
        ops = [replace(o, dims={**o.dims, "batch": nn, "q_len": np.ones_like(kk), "kv_len": kk,
                                "causal": False}) for o in self._attn_ops]
        _, per = self._charged(ops)
        tab = sum(per)
        self._kv_grid = kv.astype(float).tolist()
        self._dec = [[0.0] * len(kv)] + tab.tolist()  # row n: n decoding sequences
        if self._ovh_const is not None:  # everything but attention of an n-decode iteration
            self._dec_fixed = [0.0] + [self._table(self._lin, k) + self._table(self._head, k) + self._ovh_const
                                       for k in range(1, self.max_seqs + 1)]

    # ------------------------------------------------------------------ lookups
    def _table(self, values: list[float], t: int) -> float:
        if t <= self._ndense:
            return values[t - 1]
        g = self._grid
        j = min(bisect.bisect_left(g, t), len(g) - 1)
        x0, x1 = g[j - 1], g[j]
        if t >= x1:
            return values[j] * t / x1  # past the grid: linear in tokens
        w = (t - x0) / (x1 - x0)
        return values[j - 1] + w * (values[j] - values[j - 1])

    def decode_attention(self, n: int, mean_kv: float) -> float:
        """Seconds of decode attention for ``n`` sequences attending over ``mean_kv`` keys each."""
        if n <= 0:
            return 0.0
        row = self._dec[n] if n <= self.max_seqs else [v * n / self.max_seqs for v in self._dec[-1]]
        g = self._kv_grid
        j = bisect.bisect_left(g, mean_kv)
        if j <= 0:
            return row[0]
        if j >= len(g):
            return row[-1] * mean_kv / g[-1]
        w = (mean_kv - g[j - 1]) / (g[j] - g[j - 1])
        return row[j - 1] + w * (row[j] - row[j - 1])

    def prefill_attention(self, n: int, q_sum: int, pairs_sum: float) -> float:
        """Seconds of one varlen prefill-attention launch over ``n`` chunks (causal).

        Costed as a uniform launch of ``n`` chunks of the mean length, at the kv length that keeps
        the causal pairs exact: its seconds per query-key pair are interpolated between shapes on a
        grid of 8 per octave in both lengths, then multiplied by the exact pairs."""
        if n <= 0:
            return 0.0
        q = q_sum / n
        kv = pairs_sum / n / q + (q - 1) / 2.0
        q0, q1, wq = _bracket(min(q, self._q_points[-1] - 1))
        k0, k1, wk = _bracket(min(kv, self._kv_points[-1] - 1))
        tab = self._prefill_tabs.get(n) or self._prefill_table(n)
        r0, r1 = tab[self._q_at[q0]], tab[self._q_at[q1]]
        i, j = self._kv_at[k0], self._kv_at[k1]
        rate = (1 - wq) * ((1 - wk) * r0[i] + wk * r0[j]) + wq * ((1 - wk) * r1[i] + wk * r1[j])
        return rate * pairs_sum / n

    def _prefill_table(self, n: int) -> list[list[float]]:
        """Seconds per query-key pair of ``n``-chunk launches at every (q, kv) grid point (kv >= q),
        in one vectorized call the first time ``n`` chunks meet in an iteration."""
        q = np.array(self._q_points, dtype=float)[:, None]
        kv = np.maximum(np.array(self._kv_points, dtype=float)[None, :], q)
        q = np.broadcast_to(q, kv.shape)
        ops = [replace(o, dims={**o.dims, "batch": n, "q_len": q, "kv_len": kv, "causal": True})
               for o in self._attn_ops]
        _, per = self._charged(ops)
        tab = self._prefill_tabs[n] = (sum(per) / _pairs(q, kv)).tolist()
        return tab

    def kv_gather(self, tokens: float) -> float:
        """Seconds to gather ``tokens`` cached tokens' K and V into contiguous buffers, every layer."""
        if tokens <= 0:
            return 0.0
        if self._gather is None:
            spec = self.cfg.model
            grid = np.unique(np.round(np.logspace(0, np.log10(4 * (spec.max_positions + self.max_tokens)),
                                                  _LOG_POINTS))).astype(np.int64)
            width = 2 * kv_heads_per_gpu(spec, self.cfg.tp) * spec.head_dim
            op = Op("kv_gather", "elementwise", {"op": "copy", "tokens": grid, "width": width},
                    spec.n_layers, _act_dtype(self.cfg), None, "layer", host_ops=2.0,
                    meta={"kernels": 2})
            _, per = self._charged([op])
            self._gather = (grid.astype(float).tolist(), np.broadcast_to(per[0], grid.shape).tolist())
        g, v = self._gather
        j = bisect.bisect_left(g, tokens)
        if j <= 0:
            return v[0] * tokens / g[0]
        if j >= len(g):
            return v[-1] * tokens / g[-1]
        w = (tokens - g[j - 1]) / (g[j] - g[j - 1])
        return v[j - 1] + w * (v[j] - v[j - 1])

    def overhead(self, tokens: int, attn_s: float) -> float:
        """Runtime seconds beyond the kernels: the graph launch, or eager's unhidden host time."""
        if self._ovh_const is not None:
            return self._ovh_const
        i, wi = _locate(self._ovh_t, math.log(tokens))
        j, wj = _locate(self._ovh_a, math.log(max(attn_s, 1e-6)))
        r0, r1 = self._ovh[i], self._ovh[i + 1]
        return ((1 - wi) * ((1 - wj) * r0[j] + wj * r0[j + 1])
                + wi * ((1 - wj) * r1[j] + wj * r1[j + 1]))

    def decode(self, n: int, sum_kv: float) -> float:
        """Fast path: an iteration of ``n`` decode tokens only, over ``sum_kv`` keys in all."""
        if self._ovh_const is None or n > self.max_seqs:
            return self.seconds(n, n, n, sum_kv)
        return self._dec_fixed[n] + self.decode_attention(n, sum_kv / n)

    def decode_steps(self, n: int, sum_kv: float, start: float, horizon: float,
                     max_steps: int) -> tuple[list[float], float]:
        """Back-to-back decode-only iterations of ``n`` sequences, whose mean kv length grows by one
        per iteration, from ``start``: the seconds of each, up to ``max_steps`` of them and only
        those that end before ``horizon``; and the time the last one ends."""
        out: list[float] = []
        t = start
        if self._ovh_const is None or n > self.max_seqs:  # the general path
            for k in range(max_steps):
                d = self.decode(n, sum_kv + k * n)
                if t + d >= horizon:
                    break
                out.append(d)
                t += d
            return out, t
        fixed, row, g = self._dec_fixed[n], self._dec[n], self._kv_grid
        last = len(g) - 1
        mean = sum_kv / n
        j = bisect.bisect_left(g, mean)
        for _ in range(max_steps):
            while j <= last and g[j] < mean:
                j += 1
            if j == 0:
                a = row[0]
            elif j > last:
                a = row[-1] * mean / g[-1]
            else:
                a = row[j - 1] + (mean - g[j - 1]) / (g[j] - g[j - 1]) * (row[j] - row[j - 1])
            d = fixed + a
            if t + d >= horizon:
                break
            out.append(d)
            t += d
            mean += 1.0
        return out, t

    def seconds(self, tokens: int, seqs: int, n_decode: int = 0, sum_kv: float = 0.0,
                n_chunks: int = 0, q_sum: int = 0, pairs_sum: float = 0.0, kv_read: float = 0.0) -> float:
        """One iteration: ``tokens`` in all, ``seqs`` sequences, ``n_decode`` of them decoding over
        ``sum_kv`` keys in all, ``n_chunks`` prefill chunks of ``q_sum`` tokens and ``pairs_sum``
        causal query-key pairs (see :func:`chunk_pairs`); ``kv_read``: cached tokens gathered
        before attention (see :meth:`kv_gather`; 0 for engines that attend in place)."""
        if tokens <= 0:
            return 0.0
        a = 0.0
        if n_decode:
            a = self.decode_attention(n_decode, sum_kv / n_decode)
        if n_chunks:
            a += self.prefill_attention(n_chunks, q_sum, pairs_sum)
        if kv_read:
            a += self.kv_gather(kv_read)
        g = self._table(self._lin, tokens) + self._table(self._head, max(seqs, 1)) + a
        return g + self.overhead(tokens, a)

    def iteration(self, decode_kv: list[int] = (), chunks: list[tuple[int, int]] = ()) -> float:
        """Convenience form: ``decode_kv`` kv length per decoding sequence, ``chunks`` (q, kv) pairs."""
        n_dec = len(decode_kv)
        q_sum = sum(q for q, _ in chunks)
        pairs = sum(_pairs(q, kv) for q, kv in chunks)
        return self.seconds(n_dec + q_sum, n_dec + len(chunks), n_dec, float(sum(decode_kv)),
                            len(chunks), q_sum, pairs)


def _locate(grid: list[float], x: float) -> tuple[int, float]:
    """Index ``i`` and weight ``w`` so that ``x`` lies at ``(1 - w) * grid[i] + w * grid[i + 1]`` (clamped)."""
    j = min(max(bisect.bisect_left(grid, x), 1), len(grid) - 1)
    w = (x - grid[j - 1]) / (grid[j] - grid[j - 1])
    return j - 1, min(max(w, 0.0), 1.0)


def chunk_pairs(q: int, kv: int) -> float:
    """Causal query-key pairs of a prefill chunk (the weight :meth:`IterationModel.seconds` takes)."""
    return _pairs(q, kv)


def iteration_model(cfg: StepConfig, max_tokens: int, max_seqs: int, host_scale: float = 1.0) -> IterationModel:
    """A cached :class:`IterationModel` (tables are reused by every simulation of the same config)."""
    key = (cfg, int(max_tokens), int(max_seqs), float(host_scale))
    m = _CACHE.get(key)
    if m is None:
        for (c, t, s, h), old in _CACHE.items():  # a bigger table of the same config serves too
            if c == cfg and t >= max_tokens and s >= max_seqs and h == float(host_scale):
                return old
        m = _CACHE[key] = IterationModel(cfg, max_tokens, max_seqs, host_scale)
    return m


_CACHE: dict[tuple, IterationModel] = {}
