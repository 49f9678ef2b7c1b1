"""Measured tables (written by ``perfcast calibrate``) -> per-kernel predictions.

Every measured time is stored as a ratio over an ideal Hopper-style roofline of the GPU it was
measured on (:data:`IDEAL`: datasheet peaks, wave quantization, fixed launch floors). A prediction
on any GPU is its own ideal roofline times the interpolated ratio. On the measured GPU itself this
returns the measurement at every measured point; on another GPU (``profile: none``) the ratios are
the efficiencies learned on the measured one.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pickle
import functools
import json
from pathlib import Path

import numpy as np

from perfcast.hardware.spec import GPUSpec
from perfcast.ops import analytical as an
from perfcast.ops import roofline as rl
from perfcast.ops.base import ANALYTICAL, COMPUTE, INTERPOLATED, MEASURED, MEMORY, OpCost
from perfcast.profiles import KERNEL_TABLES, W8A16, PowerModel
from perfcast.profiles.interp import Curve, RowGrid, monotone_log_ratio, unique

# the reference roofline: full datasheet peaks, fixed floors (the same for every GPU)
IDEAL = an.Efficiency(gemm_compute=1.0, gemm_memory=1.0, gemm_floor_s=2.0e-6, attn_compute=1.0,
                      attn_memory=1.0, attn_floor_s=2.0e-6, elem_memory=1.0, elem_floor_s=2.0e-6,
                      coll_link=1.0, coll_latency_s=5.0e-6, p2p_latency_s=5.0e-6, source="ideal")


def _read_csv(path: Path) -> list[dict]:
    """The rows of ``csv.DictReader`` (header from the first line, blank lines skipped, short rows padded
    with None, extra cells under the key None), built a few times faster."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        names = next(reader, None)
        if names is None:
            return []
        n = len(names)
        out = []
        for row in reader:
            if len(row) == n and row:
                out.append(dict(zip(names, row)))
            elif row:
                d = dict(zip(names, row))
                if len(row) > n:
                    d[None] = row[n:]
                else:
                    for key in names[len(row):]:
                        d[key] = None
                out.append(d)
        return out


def _num(rows, key, typ=float):
    return np.array([typ(float(r[key])) for r in rows])


class Tables:
    """One profile directory: meta, ratio interpolators per family, fitted scalar efficiencies."""

    def __init__(self, root, gpu: GPUSpec):
        root = Path(str(root))
        self.root = root
        self.meta = json.loads((root / "meta.json").read_text())
        self.gpu = gpu
        self.name = f"measured:{self.meta.get('gpu_id', gpu.id)}"
        # gemm.csv (perfcast calibrate) plus extra tables of the same columns: gemm_fp8*.csv, gemm_moe.csv,
        # gemm_int4.csv (dtype "w4a16": bf16 activations times int4 weights) and gemm_int8.csv (dtype
        # "w8a16c": bf16 activations times int8 weights, torch.compile'd) from perfcast.measure.extras
        self._gemm_rows = [r for f in sorted(root.glob("gemm*.csv")) if "heldout" not in f.name
                           for r in _read_csv(f) if r.get("median_ms")]
        self._attn_rows = [r for r in _read_csv(root / "attention.csv") if r.get("median_ms")]
        self._elem_rows = [r for r in _read_csv(root / "elementwise.csv") if r.get("median_ms")]
        self._coll_rows = [r for r in _read_csv(root / "collectives.csv") if r.get("median_ms")]
        self._build_gemm()
        self._build_attention()
        self._build_elementwise()
        self._build_collectives()
        self.hosts = _load_hosts(root)
        self.efficiency = self._fit_efficiency()
        # the raw CSV rows are not needed once built: dropping them halves the disk cache (and its load)
        del self._gemm_rows, self._attn_rows, self._elem_rows, self._coll_rows

    # ------------------------------------------------------------------ GEMM
    def _build_gemm(self):
        """Per measured (dtype, n, k): log time vs log m (own GPU) and log ratio vs log m (transfer)."""
        self.gemm_curves: dict[tuple[str, int, int], Curve] = {}
        self.gemm_time: dict[tuple[str, int, int], Curve] = {}
        by: dict[tuple, list] = {}
        for r in self._gemm_rows:
            by.setdefault((r["dtype"], int(r["n"]), int(r["k"])), []).append(r)
        # weights over a fitted reference (FP8, aligned bf16/fp16): (unique m, mean log seconds) by
        # reference group, and each group's reference fitted on all of its weights
        groups: dict[str, dict] = {}
        for (dt, n, k), rows in by.items():
            if _padded_class(dt, n, k):
                groups.setdefault(_ref_group(dt), {})[(dt, n, k)] = _unique_log(_num(rows, "m"),
                                                                                _num(rows, "median_ms") * 1e-3)
        self._refs = {g: _fit_reference(self.gpu, g, w) for g, w in groups.items()}
        ref_fit = {}  # (dt, n, k) -> local-fit log ratio over that reference at each unique m
        for (dt, n, k), rows in by.items():
            m = _num(rows, "m")
            t = _num(rows, "median_ms") * 1e-3
            base = _ideal_gemm(self.gpu, m, n, k, dt).seconds
            lr = monotone_log_ratio(m, np.log(t / base), base)
            self.gemm_curves[(dt, n, k)] = Curve(m, lr)
            if _padded_class(dt, n, k):
                params = self._refs[_ref_group(dt)]
                um, lt = groups[_ref_group(dt)][(dt, n, k)]
                ref = _gemm_reference(self.gpu, dt, um, n, k, params)
                ref_fit[(dt, n, k)] = _local_line(np.log(um), lt - np.log(ref), _OWN_HALF)
                if dt != "fp8":  # bf16/fp16 at an M timed twice: the faster time (the former predictor's envelope)
                    _, inv = unique(m, return_inverse=True)
                    lt = np.full(um.size, np.inf)
                    np.minimum.at(lt, inv, np.log(t))
                self.gemm_time[(dt, n, k)] = _reference_times(self.gpu, dt, n, k, params, um, lt, ref_fit[(dt, n, k)])
            else:
                self.gemm_time[(dt, n, k)] = Curve(m, lr + np.log(base))
        self._gemm_keys = {}
        for dt, n, k in self.gemm_curves:
            self._gemm_keys.setdefault((dt, _aligned(n, k)), []).append((n, k))
        # every measured point of a class as (log m, log n, log k) -> log ratio, for shapes not measured
        self._gemm_pts: dict[tuple, list] = {}
        for (dt, n, k), rows in by.items():
            m = _num(rows, "m")
            if _padded_class(dt, n, k):  # each weight's local fit over its reference (_gemm_blend_smooth)
                m, lr = groups[_ref_group(dt)][(dt, n, k)][0], ref_fit[(dt, n, k)]
            else:
                lr = self.gemm_curves[(dt, n, k)](m)
            f = np.stack([np.log(m), np.full(m.shape, np.log(n)), np.full(m.shape, np.log(k))], axis=1)
            self._gemm_pts.setdefault((dt, _aligned(n, k)), []).append((n, k, f, lr))
        self._blend_cache: dict[tuple, Curve] = {}

    def gemm(self, prof, m, n, k, dtype="bf16", wdtype=None) -> OpCost:
        forced = None
        if dtype in KERNEL_TABLES:  # a measured kernel asked for by name (bf16 activations)
            forced, wdtype, dtype = dtype, KERNEL_TABLES[dtype], "bf16"
        base = an.gemm_cost(prof.gpu, m, n, k, dtype, wdtype, IDEAL)
        n, k = int(n), int(k)
        m_arr = np.asarray(m, dtype=float)
        if (forced or wdtype in WEIGHT_ONLY) and dtype in ("bf16", "fp16"):
            # weight-only int4 (tinygemm) and, by name, int8 (compiled dequant + GEMM) have their own
            # measured tables; times interpolate over that table's reference roofline, FLOPs and bytes
            # stay the op's own
            table = forced or WEIGHT_ONLY[wdtype]
            if (table, _aligned(n, k)) not in self._gemm_keys:
                return an.gemm_cost(prof.gpu, m, n, k, "bf16", wdtype, prof.eff)
            ideal = _ideal_gemm(prof.gpu, m, n, k, table)
            base = OpCost.of(ideal.seconds, ideal.bound, ANALYTICAL, base.flops, base.bytes)
            dtype, wdtype = table, None
        # fp16 runs on the same tensor cores as bf16: use bf16 tables where fp16 has none
        dts = [d for d in (dtype, "bf16" if dtype == "fp16" else None) if d and (d, _aligned(n, k)) in self._gemm_keys]
        if not dts or wdtype:
            return an.gemm_cost(prof.gpu, m, n, k, dtype, wdtype, prof.eff)
        own = prof.gpu is self.gpu
        for dt in dts:
            if (dt, n, k) in self.gemm_time:
                curve = self.gemm_time[(dt, n, k)]
                lm = np.log(m_arr)  # every curve below is interpolated in log m
                inside = curve.contains(m_arr)
                src = np.where(curve.on_grid_log(lm), MEASURED, np.where(inside, INTERPOLATED, ANALYTICAL))
                if own:
                    # log-log interpolation of the measured times inside the range; physics ratio outside
                    # (each side computed only where some point needs it: decode inside, prefill mostly out)
                    n_in = np.count_nonzero(inside)
                    t_in = np.exp(curve.at_log(lm)) if n_in else None
                    t_out = base.seconds * np.exp(self.gemm_curves[(dt, n, k)].at_log(lm)) if n_in < inside.size else None
                    t = t_in if t_out is None else t_out if t_in is None else np.where(inside, t_in, t_out)
                else:
                    t = base.seconds * np.exp(self.gemm_curves[(dt, n, k)].at_log(lm))
                return OpCost.of(t, base.bound, self._src(prof, src), base.flops, base.bytes)
        t, inside = self._gemm_unmeasured(prof.gpu, dts[0], m_arr, n, k, base.seconds)
        src = np.where(inside, INTERPOLATED, ANALYTICAL)
        return OpCost.of(t, base.bound, self._src(prof, src), base.flops, base.bytes)

    def _gemm_unmeasured(self, gpu, dt, m, n, k, base_s):
        """(seconds, inside the blended m range) of a weight shape nobody measured, on ``gpu``
        (``base_s``: its IDEAL roofline time at ``m``)."""
        if _padded_class(dt, n, k):
            lr, inside = self._gemm_blend_smooth(dt, m, n, k)
            return _gemm_reference(gpu, dt, m, n, k, self._refs[_ref_group(dt)]) * np.exp(lr), inside
        lr, inside = self._gemm_blend(dt, m, n, k)
        return base_s * np.exp(lr), inside

    def _gemm_blend_smooth(self, dt, m, n, k):
        """An aligned bf16/fp16 or FP8 weight shape nobody measured: log ratio over the dtype's fitted
        reference (:func:`_gemm_reference`) vs log m, each point a local linear fit in (log n, log k) of
        the nearest measured weights' curves at that m, each measured weight's curve its local fit
        (:func:`_local_line`) of its ratio over that reference rather than its raw grid times.

        Why not the IDEAL reference: its best-tile wave quantization jumps with n at a given m where
        cuBLAS (which picks among many more kernels) does not, so ratios over it are rough across weight
        shapes; ratios over a reference without quantization, with a fitted fixed overhead, vary smoothly
        (leave-one-weight-out on the shipped grids, benchmarks/gemm_loo.py and benchmarks/fp8_loo.py:
        bf16/fp16 4.96 -> 4.58% on H100, 5.27 -> 4.73% on H200 against the former smooth roofline with
        a 2 us floor and each weight's padding envelope). A local plane follows the trend in n and k that
        an inverse-distance mean flattens; it is ridge-damped and clamped to the neighbours' range so
        that it never extrapolates. fp16 pools the bf16 weights (the same tensor-core kernels)."""
        key = ("smooth", dt, int(n), int(k))
        curve = self._blend_cache.get(key)
        if curve is None:
            shapes = [s for d in dict.fromkeys((dt, "bf16" if dt == "fp16" else dt))
                      for s in self._gemm_pts.get((d, True), ())]
            curve = self._blend_cache[key] = _local_linear_curve(shapes, n, k)
        return curve(m), curve.contains(m)

    def _gemm_blend(self, dt, m, n, k):
        """A weight shape nobody measured: a curve over the measured token counts, each point an
        inverse-distance blend of the 8 nearest measured points of the same alignment class in
        (log m, log n, log k); built once per shape, then interpolated like a measured curve."""
        key = (dt, int(n), int(k))
        curve = self._blend_cache.get(key)
        if curve is None:
            shapes = self._gemm_pts[(dt, _aligned(n, k))]
            # the 3-D neighbours lie among the weights nearest in (log n, log k): keep those only
            near = sorted(shapes, key=lambda s: (np.log(s[0] / n)) ** 2 + (np.log(s[1] / k)) ** 2)[:24]
            pts = np.vstack([s[2] for s in near])
            lr = np.concatenate([s[3] for s in near])
            grid = unique(np.exp(pts[:, 0]))
            q = np.stack([np.log(grid), np.full(grid.size, np.log(n)), np.full(grid.size, np.log(k))], axis=1)
            d2 = ((q[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
            kk = min(8, len(lr))
            idx = np.argpartition(d2, kk - 1, axis=1)[:, :kk]
            w = 1.0 / (np.take_along_axis(d2, idx, axis=1) + 1e-12)
            curve = self._blend_cache[key] = Curve(grid, (w * lr[idx]).sum(1) / w.sum(1))
        return curve(m), curve.contains(m)

    # ------------------------------------------------------------------ attention
    @classmethod
    def attention_only(cls, gpu: GPUSpec, rows: list[dict]) -> Tables:
        """Tables holding only attention ``rows`` (attention.csv dicts) measured on ``gpu``: for checks that
        leave grid points out and predict them back."""
        t = cls.__new__(cls)
        t.gpu, t._attn_rows = gpu, rows
        t._build_attention()
        return t

    def _build_attention(self):
        """Per measured config (dtype, phase, heads, kv_heads, head_dim): a log-ratio grid over
        (batch x heads, keys) that carries to other configs and GPUs (a longer sequence of the same config is
        never faster: padding). Decode is predicted from the grid pooled over configs (:meth:`_build_decode`).

        Prefill ratios are taken over the flash-attention tile schedule (:func:`_floor_scale_reference`: a fixed
        floor plus the busiest SM's key blocks, per-tile causal work and wave quantization included), its
        floor and block efficiency fitted per config; between grid points the schedule carries the shape
        (small kernels are a few partial waves of CTAs) and the interpolated ratio only the residual."""
        self.attn: dict[tuple, RowGrid] = {}
        self.attn_ref: dict[tuple, tuple[float, float]] = {}
        by: dict[tuple, list] = {}
        for r in self._attn_rows:
            phase = "decode" if int(r["q_len"]) == 1 else "prefill"
            key = (r["dtype"], phase, int(r["heads"]), int(r["kv_heads"]), int(r["head_dim"]))
            by.setdefault(key, []).append(r)
        for key, rows in by.items():
            dt, phase, h, kvh, hd = key
            b, q, kv = _num(rows, "batch"), _num(rows, "q_len"), _num(rows, "kv_len")
            t = _num(rows, "median_ms") * 1e-3
            causal = np.array([str(r.get("causal", "1")).lower() in ("1", "true") for r in rows])
            if phase == "prefill":
                work = np.empty(t.shape)
                for c in (True, False):
                    if (causal == c).any():
                        work[causal == c] = an.flash_makespan(self.gpu, b[causal == c], h, q[causal == c],
                                                              kv[causal == c], c)
                work = work * an.flash_block_seconds(self.gpu, hd, dt)
                self.attn_ref[key] = _fit_floor_and_scale(work, t)
                base = _floor_scale_reference(self.attn_ref[key], work)
            else:
                base = an.attention_cost(self.gpu, b, h, kvh, hd, q, kv, False, None, dt, None, None,
                                         IDEAL).seconds
            lr = np.log(t / base)
            for bb in unique(b):  # within a row, a longer sequence is never faster (padding)
                sel = b == bb
                lr[sel] = monotone_log_ratio(kv[sel], lr[sel], base[sel])
            self.attn[key] = RowGrid(b * h, kv, lr)
        self._build_decode(by)

    def _build_decode(self, by):
        """Decode (one query) pooled over every measured config of a dtype.

        A decode kernel streams the K and V of each (sequence, KV head) once, whatever the number of query
        heads sharing it (GQA), so its time is set by (batch x kv_heads, keys): measured configs of equal
        batch x kv_heads agree within a few percent. All configs are pooled into one grid over those two
        axes, as log ratios over a reference of a fixed floor (launch, split-KV reduction) plus the K/V
        bytes at a fitted bandwidth (floor and scale fitted on the pooled rows)."""
        self.dec: dict[str, RowGrid] = {}
        self.dec_ref: dict[str, tuple[float, float]] = {}
        pooled: dict[str, list] = {}
        for (dt, phase, h, kvh, hd), rows in by.items():
            if phase == "decode":
                pooled.setdefault(dt, []).append((h, kvh, hd, rows))
        for dt, cfgs in pooled.items():
            bk, kv, t, work, cfg_id = [], [], [], [], []
            for i, (h, kvh, hd, rows) in enumerate(cfgs):
                b, k = _num(rows, "batch"), _num(rows, "kv_len")
                cfg_id.append(np.full(b.shape, float(i)))
                bk.append(b * kvh)
                kv.append(k)
                t.append(_num(rows, "median_ms") * 1e-3)
                work.append(_decode_work(self.gpu, b, h, kvh, hd, k, dt if dt in rl.DTYPE_BYTES else "bf16"))
            bk, kv, t, work = (np.concatenate(a) for a in (bk, kv, t, work))
            self.dec_ref[dt] = _fit_floor_and_scale(work, t)
            ref = _floor_scale_reference(self.dec_ref[dt], work)
            lr = np.log(t / ref)
            row = bk * 1e12 + np.concatenate(cfg_id)  # one batch row of one config
            for g in unique(row):  # within a row of a config, more keys are never faster
                sel = row == g
                lr[sel] = monotone_log_ratio(kv[sel], lr[sel], ref[sel])
            self.dec[dt] = RowGrid(bk, kv, lr)

    def _attn_key(self, dt, phase, heads, kv_heads, hd):
        """The measured config itself, else the nearest one (GQA ratio, head_dim, heads)."""
        exact = (dt, phase, heads, kv_heads, hd)
        if exact in self.attn:
            return exact, True
        memo = self.__dict__.setdefault("_attn_key_memo", {})  # (built lazily: not part of the disk cache)
        if exact not in memo:
            memo[exact] = self._nearest_attn_key(dt, phase, heads, kv_heads, hd)
        return memo[exact]

    def _nearest_attn_key(self, dt, phase, heads, kv_heads, hd):
        cands = [k for k in self.attn if k[1] == phase and k[0] in (dt, "bf16")]
        if not cands:
            return None, False
        g = heads / max(kv_heads, 1)

        def dist(k):
            return (abs(np.log((k[2] / k[3]) / g)) + 3 * abs(np.log(k[4] / hd)) + 0.5 * abs(np.log(k[2] / heads)),
                    k[0] != dt)

        return min(cands, key=dist), False

    def attention(self, prof, batch, heads, kv_heads, head_dim, q_len, kv_len, causal, window=None,
                  dtype="bf16", kv_dtype=None, v_head_dim=None, kv_shared=False) -> OpCost:
        """Attention from the measured grids. Widths the grids do not hold (MLA: q/k 192 and v 128 in prefill;
        576-wide keys over a shared latent whose first 512 channels are the values in decode) are carried by
        the same references: prefill by the tile schedule with the op's own per-block FLOPs (q/k and v
        widths), decode by the op's own bytes (the latent once) at the fitted decode floor and bandwidth,
        with the pooled ratio at (sequences x KV streams, keys). A decode with many query heads per KV stream
        (MLA: 16-128, the grids at most 8) can be tensor-core bound, which no measured decode was: its
        physics compute time (the profile's fitted attention efficiency) is a lower bound."""
        base = an.attention_cost(prof.gpu, batch, heads, kv_heads, head_dim, q_len, kv_len, causal, window,
                                 dtype, kv_dtype, v_head_dim, IDEAL, kv_shared)
        shape = base.seconds.shape
        q = np.broadcast_to(np.asarray(q_len), shape)
        b = np.broadcast_to(np.asarray(batch, dtype=float), shape)
        kv = np.broadcast_to(np.asarray(kv_len, dtype=float), shape)
        # a sliding window caps the keys each query sees: look the tables up at the keys read
        kv_eff = kv if window is None else np.minimum(kv, q + window)
        lr = np.zeros(shape)
        ref = base.seconds
        src = np.full(shape, ANALYTICAL, dtype=np.int8)
        fallback = np.zeros(shape, dtype=bool)
        floor_t = None  # decode of an unmeasured width: the compute lower bound
        for phase, sel in (("decode", q == 1), ("prefill", q != 1)):
            if not sel.any():
                continue
            key, _ = self._attn_key(dtype, phase, heads, kv_heads, head_dim)
            if key is None or (kv_shared and phase == "prefill"):
                fallback |= sel
                continue
            if phase == "prefill":
                # the tile schedule on this GPU, at the floor and block efficiency of the measured config
                work = np.zeros(shape)
                work[sel] = an.flash_makespan(prof.gpu, b[sel], heads, q[sel], kv[sel], bool(causal), window)
                work = work * an.flash_block_seconds(prof.gpu, head_dim, dtype if dtype in ("bf16", "fp16", "fp8")
                                                     else "bf16", v_head_dim)
                ref = np.where(sel, _floor_scale_reference(self.attn_ref[key], work), ref)
                val, inside = self.attn[key].lookup(b * heads, kv_eff)
            else:
                # the K/V stream on this GPU at the floor and bandwidth fitted on every measured decode config;
                # the ratio pooled over configs by (batch x kv_heads, keys)
                dk = key[0]
                work = _decode_work(prof.gpu, b, heads, kv_heads, head_dim, kv_eff, dtype, kv_dtype, v_head_dim,
                                    kv_shared)
                ref = np.where(sel, _floor_scale_reference(self.dec_ref[dk], work), ref)
                val, inside = self.dec[dk].lookup(b * kv_heads, kv_eff)
                if v_head_dim is not None or kv_shared:
                    tc = an.attention_compute_seconds(prof.gpu, base.flops, b, heads, q, kv_eff, dtype, prof.eff,
                                                      kv_shared)
                    floor_t = np.where(sel, tc, 0.0)
            lr = np.where(sel, val, lr)
            src = np.where(sel, np.where(inside, INTERPOLATED, ANALYTICAL), src)
        t = ref * np.exp(lr)
        if floor_t is not None:
            src = np.where(floor_t > t, ANALYTICAL, src)
            t = np.maximum(t, floor_t)
        if fallback.any():
            phys = an.attention_cost(prof.gpu, batch, heads, kv_heads, head_dim, q_len, kv_len, causal, window,
                                     dtype, kv_dtype, v_head_dim, prof.eff, kv_shared)
            t = np.where(fallback, np.broadcast_to(phys.seconds, shape), t)
        return OpCost.of(t, base.bound, self._src(prof, src), base.flops, base.bytes)

    # ------------------------------------------------------------------ elementwise
    def _build_elementwise(self):
        self.elem: dict[tuple[str, str], Curve] = {}
        by: dict[tuple, list] = {}
        for r in self._elem_rows:
            by.setdefault((r["op"], r["dtype"]), []).append(r)
        for (op, dt), rows in by.items():
            tok, wid = _num(rows, "tokens"), _num(rows, "width")
            t = _num(rows, "median_ms") * 1e-3
            base = np.broadcast_to(an.elementwise_cost(self.gpu, op, tok, wid, dt, IDEAL).seconds,
                                   tok.shape)
            el = tok * wid
            order = np.argsort(el, kind="stable")  # one point per size (its first) for the envelope
            first = np.ones(el.size, dtype=bool)
            first[1:] = el[order][1:] != el[order][:-1]
            ok = order[first]  # (np.unique(el, return_index=True)[1], without importing numpy.ma)
            self.elem[(op, dt)] = Curve(el[ok], monotone_log_ratio(el[ok], np.log(t / base)[ok], base[ok]))

    def elementwise(self, prof, op, tokens, width, dtype="bf16") -> OpCost:
        base = an.elementwise_cost(prof.gpu, op, tokens, width, dtype, IDEAL)
        # an op without a table of its own takes its proxy's ratios over its own bytes (ELEM_PROXY)
        curve = (self.elem.get((op, dtype)) or self.elem.get((op, "bf16"))
                 or self.elem.get((ELEM_PROXY.get(op, op), "bf16")))
        if curve is None:
            return an.elementwise_cost(prof.gpu, op, tokens, width, dtype, prof.eff)
        el = np.asarray(tokens, dtype=float) * width
        lr = curve(el)
        src = np.where(curve.contains(el), INTERPOLATED, ANALYTICAL)
        return OpCost.of(base.seconds * np.exp(lr), base.bound, self._src(prof, src), base.flops, base.bytes)

    # ------------------------------------------------------------------ collectives
    def _build_collectives(self):
        self.coll: dict[tuple[str, int], Curve] = {}
        by: dict[tuple, list] = {}
        for r in self._coll_rows:
            by.setdefault((r["op"], int(r["gpus"])), []).append(r)
        for (op, g), rows in by.items():
            nb = _num(rows, "bytes")
            t = _num(rows, "median_ms") * 1e-3
            base = an.collective_cost(self.gpu, op, nb, g, IDEAL).seconds
            self.coll[(op, g)] = Curve(nb, np.log(t / base))

    def collective(self, prof, coll, nbytes, gpus) -> OpCost:
        base = an.collective_cost(prof.gpu, coll, nbytes, gpus, IDEAL)
        curve = self.coll.get((coll, gpus))
        if curve is None and gpus > 1:
            own = [g for (c, g) in self.coll if c == coll]
            donor = (self.coll[(coll, min(own, key=lambda g: abs(g - gpus)))] if own
                     else _collective_donor(self.gpu.id, coll, gpus))
            if donor is not None:  # another GPU's measured ratios on this GPU's link datasheet
                b = np.asarray(nbytes, dtype=float)
                return OpCost.of(base.seconds * np.exp(donor(b)), base.bound, ANALYTICAL, base.flops, base.bytes)
        if curve is None or gpus <= 1:
            return an.collective_cost(prof.gpu, coll, nbytes, gpus, prof.eff)
        b = np.asarray(nbytes, dtype=float)
        lr = curve(b)
        src = np.where(curve.contains(b), INTERPOLATED, ANALYTICAL)
        return OpCost.of(base.seconds * np.exp(lr), base.bound, self._src(prof, src), base.flops, base.bytes)

    def _src(self, prof, src):
        # on another GPU the figure is its datasheet times ratios learned here: analytical
        return src if prof.gpu is self.gpu else np.full(np.shape(src), ANALYTICAL)

    # ------------------------------------------------------------------ scalar efficiencies
    def _fit_efficiency(self) -> an.Efficiency:
        """Scalar efficiencies for the physics fallback, fitted on this profile's largest/smallest kernels."""
        g = self.gpu
        e = dataclasses.asdict(an.PRIOR)
        if self._gemm_rows:
            m, n, k = (_num(self._gemm_rows, c) for c in ("m", "n", "k"))
            t = _num(self._gemm_rows, "median_ms") * 1e-3
            bf = np.array([r["dtype"] == "bf16" for r in self._gemm_rows])
            m, n, k, t = m[bf], n[bf], k[bf], t[bf]
            bf = bf[bf]
            big = bf & (m >= 4096) & (n >= 4096) & (k >= 4096)
            if big.any():
                e["gemm_compute"] = float(np.median(2 * m[big] * n[big] * k[big] / t[big] / g.flops("bf16")))
            small = bf & (m <= 16) & (n * k >= 1 << 24)
            if small.any():
                by = (m[small] * k[small] + n[small] * k[small] + m[small] * n[small]) * 2
                e["gemm_memory"] = float(np.median(by / t[small] / g.mem_bw_bytes_per_s))
            e["gemm_floor_s"] = float(np.min(t))
        if self._elem_rows:
            el = _num(self._elem_rows, "bytes")
            t = _num(self._elem_rows, "median_ms") * 1e-3
            big = el >= 64 << 20
            if big.any():
                e["elem_memory"] = float(np.median(el[big] / t[big] / g.mem_bw_bytes_per_s))
            e["elem_floor_s"] = float(np.percentile(t, 2))
        if self._attn_rows:
            q = _num(self._attn_rows, "q_len")
            t = _num(self._attn_rows, "median_ms") * 1e-3
            rows = self._attn_rows
            b, h, kvh, hd, kv = (_num(rows, c) for c in ("batch", "heads", "kv_heads", "head_dim", "kv_len"))
            pre = (q >= 4096)
            if pre.any():
                fl = rl.attention_flops(b, h, hd, q, kv, True)
                e["attn_compute"] = float(np.median(fl[pre] / t[pre] / g.flops("bf16")))
            dec = q == 1
            if dec.any():
                by = rl.attention_bytes(b, h, kvh, hd, np.ones_like(kv), kv)
                big = dec & (by >= 256 << 20)
                if big.any():
                    e["attn_memory"] = float(np.median(by[big] / t[big] / g.mem_bw_bytes_per_s))
            e["attn_floor_s"] = float(np.min(t))
        for key in ("gemm_compute", "gemm_memory", "elem_memory", "attn_compute", "attn_memory"):
            e[key] = float(min(max(e[key], 0.05), 1.0))
        e["source"] = self.meta.get("gpu_id", g.id)
        return an.Efficiency(**e)


def _fit_floor_and_scale(work, t):
    """(floor seconds, scale) of t ~ floor + scale * work, least squares in relative error (floor >= 0,
    scale >= 1: no kernel beats the datasheet peak)."""
    a = np.stack([np.ones_like(work), work], axis=1) / t[:, None]
    floor, scale = np.linalg.lstsq(a, np.ones_like(t), rcond=None)[0]
    if floor < 0:
        floor = 0.0
        scale = float(np.sum(work / t) / np.sum((work / t) ** 2))
    if scale < 1:
        scale = 1.0
        floor = max(float(np.sum((1 - work / t) / t) / np.sum(1 / t ** 2)), 0.0)
    return float(floor), float(scale)


def _decode_work(gpu, batch, heads, kv_heads, head_dim, kv, dtype="bf16", kv_dtype=None, v_head_dim=None,
                 kv_shared=False):
    """Seconds to stream a decode's bytes (K and V of every key tile read, Q and O) at the datasheet bandwidth
    (``kv_shared``: V a view of K, the latent read once)."""
    return rl.attention_bytes(batch, heads, kv_heads, head_dim, 1, kv, dtype, kv_dtype, None, v_head_dim,
                              kv_shared) / gpu.mem_bw_bytes_per_s


def _floor_scale_reference(params, work):
    """Attention reference time: a fixed floor plus ``work`` (prefill: the tile schedule's busiest-SM time;
    decode: the K/V stream at the datasheet bandwidth) times the fitted scale."""
    floor, scale = params
    return floor + scale * work


W4A16 = "w4a16"  # dtype column of weight-only int4 GEMM rows (bf16 activations)
# weight dtype -> the measured table its weight-only GEMM uses by default. Weight-only int8 is not routed
# to a table: the kernels PyTorch runs for it on CUDA (torch.compile, eager dequantize-then-GEMM,
# _weight_int8pack_mm) all measured slower than bf16, while serving engines run fused W8A16 kernels
# (Marlin-class) that read one byte a weight; perfcast keeps that analytical model for "int8" and
# answers the measured torch.compile path when asked for dtype "w8a16c".
WEIGHT_ONLY = {"int4": W4A16}


def _ideal_gemm(gpu, m, n, k, dt):
    """The reference roofline of a table's dtype. w4a16: bf16 math on int4 weight bytes (tinygemm reads
    the packed weights in the GEMM). w8a16c: what the measured kernels do, an int8 -> bf16 conversion
    of the weights (1 byte read, 2 written per weight) streamed at HBM bandwidth, then a bf16 GEMM:
    their ratio carries across GPUs whose bandwidth and FLOPs differ by different factors."""
    if dt == W4A16:
        return an.gemm_cost(gpu, m, n, k, "bf16", "int4", IDEAL)
    if dt == W8A16:
        g = an.gemm_cost(gpu, m, n, k, "bf16", None, IDEAL)
        conv = 3.0 * float(n) * k / gpu.mem_bw_bytes_per_s + IDEAL.elem_floor_s
        return OpCost.of(g.seconds + conv, np.where(g.bound == COMPUTE, COMPUTE, MEMORY), ANALYTICAL,
                         g.flops, g.bytes)
    return an.gemm_cost(gpu, m, n, k, dt, None, IDEAL)


_OWN_HALF = 3  # grid points each side of a measured M in the local fit of an aligned bf16/fp16 weight's curve


def _local_line(lm, lr, half):
    """At each of the sorted points ``lm`` (log m), the intercept of a line fitted to ``lr`` over the
    ``half`` points each side (tricube weights in log m, least squares); a point with fewer than 3 in its
    window keeps its own value."""
    lm, lr = np.asarray(lm, dtype=float), np.asarray(lr, dtype=float)
    # every grid M at once: its window of up to 2 * half + 1 neighbours (rows), padding masked out
    idx = np.arange(lm.size)[:, None] + np.arange(-half, half + 1)[None, :]
    ok = (idx >= 0) & (idx < lm.size)
    idx = np.clip(idx, 0, lm.size - 1)
    x = np.where(ok, lm[idx] - lm[:, None], 0.0)
    y = np.where(ok, lr[idx], 0.0)
    ax = np.abs(x)
    span = ax.max(axis=1, keepdims=True) * 1.0001
    w = np.where(ok, (1.0 - (ax / np.where(span > 0, span, 1.0)) ** 3) ** 3, 0.0)
    sw, sx, sxx = w.sum(axis=1), (w * x).sum(axis=1), (w * x * x).sum(axis=1)
    sy, sxy = (w * y).sum(axis=1), (w * x * y).sum(axis=1)
    den = sw * sxx - sx * sx
    use = (ok.sum(axis=1) >= 3) & (den != 0)
    # the intercept at x = 0 of the weighted line
    return np.where(use, (sxx * sy - sx * sxy) / np.where(use, den, 1.0), lr)


def _unique_log(m, t):
    """(sorted distinct m, mean log t at each): tables measured twice at an m (two runs) count once."""
    um, inv = unique(np.asarray(m, dtype=float), return_inverse=True)
    return um, np.bincount(inv, weights=np.log(np.asarray(t, dtype=float))) / np.bincount(inv)


def _padded_class(dt, n, k) -> bool:
    """Measured weights of this class are predicted over a fitted reference (:func:`_gemm_reference`):
    FP8 and aligned bf16/fp16."""
    return dt in _REF_TILE_M and _aligned(n, k)


def _ref_group(dt) -> str:
    """The reference a dtype's weights share: fp16 runs on bf16's tensor cores and pools bf16's weights."""
    return "bf16" if dt == "fp16" else dt


# rows of M per output tile of the reference's padded compute time, by dtype: the FP8 GEMM kernels cuBLAS
# runs on sm90 (torch._scaled_mm) compute whole 128-row tiles. bf16/fp16 (many more kernels, tiles of 64
# to 256 rows) are not padded (exponent 0, the tile unused): padding 64-row tiles changed leave-one-M-out
# and leave-one-weight-out by 0.01 point, 128-row tiles worsened H200's (4.8 -> 5.0%; benchmarks/gemm_loo.py)
_REF_TILE_M = {"fp8": 128, "bf16": 64, "fp16": 64}
_FP8_PADS = np.linspace(0.0, 1.0, 21)  # tile padding exponents tried by _fit_reference
_REF_PADS = {"fp8": _FP8_PADS, "bf16": np.array([0.0])}


def _gemm_work(gpu, dt, m, n, k, pad):
    """GEMM seconds before the fixed overhead: the 4-norm (a soft maximum) of the datasheet compute
    time and the memory time, the compute time of M rounded up to whole ``_REF_TILE_M[dt]``-row tiles to
    the power ``pad`` (1: every padded row computed; 0: none)."""
    m = np.asarray(m, dtype=float)
    tile = _REF_TILE_M[dt]
    tiles = np.ceil(m / tile - 1e-9) * tile  # (an m from exp(log m) may be a hair above)
    tc = 2.0 * m * n * k / gpu.flops(dt) * (tiles / m) ** pad
    tm = rl.gemm_bytes(m, n, k, dt) / gpu.mem_bw_bytes_per_s
    return (tc ** 4 + tm ** 4) ** 0.25


def _gemm_reference(gpu, dt, m, n, k, params):
    """GEMM reference seconds: a fixed overhead plus :func:`_gemm_work` times a scale (``params`` = (pad,
    floor, scale), fitted on a profile's tables of the dtype's group by :func:`_fit_reference`)."""
    pad, floor, scale = params
    return floor + scale * _gemm_work(gpu, dt, m, n, k, pad)


def _fit_reference(gpu, group, weights) -> tuple[float, float, float]:
    """(pad, floor seconds, scale) of :func:`_gemm_reference` on ``weights``: {(dt, n, k) or (n, k): (sorted
    m, log seconds)} of measured weights of one reference group ("fp8" or "bf16"; an (n, k) key is of the
    group's dtype).

    Why: a kernel computes whole tiles of rows of M, so an M just above a multiple of the tile runs slower
    than the smooth trend (FP8: by 4-6% below M = 1024 on H100 and H200); and every GEMM pays a fixed few
    us (launch, epilogue; FP8: its scales) on top of the bytes and FLOPs, so a ratio over a floor-less
    roofline varies several-fold across weight shapes at small M. ``pad`` is the exponent among
    ``_REF_PADS[group]`` whose reference leaves the weights' log ratios smoothest (least residual around
    the :func:`_local_line` fit of each weight), floor and scale at each exponent the least-squares fit
    in relative error of t ~ floor + scale * work (as for attention, :func:`_fit_floor_and_scale`).
    Chosen by leave-one-M-out and leave-one-weight-out on the shipped grids (benchmarks/fp8_loo.py,
    benchmarks/gemm_loo.py)."""
    fitted = [(key[0] if len(key) == 3 else group, key[-2], key[-1], um, lt) for key, (um, lt) in weights.items()]
    t = np.exp(np.concatenate([lt for *_, lt in fitted]))
    pads = _REF_PADS[group]
    best = None
    for pad in pads:
        works = [_gemm_work(gpu, dt, um, n, k, pad) for dt, n, k, um, _ in fitted]
        floor, scale = _fit_floor_and_scale(np.concatenate(works), t)
        rough = 0.0
        if len(pads) > 1:
            for (*_, um, lt), work in zip(fitted, works):
                y = lt - np.log(floor + scale * work)
                r = y - _local_line(np.log(um), y, _OWN_HALF)
                rough += float(r @ r)
        if best is None or rough < best[0]:
            best = (rough, float(pad), floor, scale)
    return best[1:]


def _reference_times(gpu, dt, n, k, params, m, log_t, log_fit) -> _ReferenceTimes:
    """A measured weight's :class:`_ReferenceTimes` (``m`` sorted, distinct). bf16/fp16: at a measured M the
    padding envelope of the measured times (a time never falls as m grows, as the former predictor's), and
    between grid M the reference-times-fit value clipped to the neighbouring grid M's times (so that the
    curve never falls either: a step's time grows with its tokens)."""
    if dt == "fp8":
        return _ReferenceTimes(gpu, n, k, params, m, log_t, log_fit, dt)
    env = np.minimum.accumulate(np.asarray(log_t, dtype=float)[::-1])[::-1]
    return _ReferenceTimes(gpu, n, k, params, m, env, log_fit, dt, bounded=True)


class _ReferenceTimes(Curve):
    """Log time vs log m of a measured FP8 or aligned bf16/fp16 weight (``dt``) on its own GPU: at a
    measured M its measured time (``log_t``; cuBLAS picks its kernel per exact M); between measured M the
    dtype's reference (:func:`_gemm_reference`; FP8: tile padding included) times the ratio of the local
    fit (:func:`_local_line`) at the neighbouring grid M, interpolated linearly in log m.

    Why not the line through the two neighbouring grid times (the former predictor): the grid's times
    jitter by kernel choice and timing noise, and M between grid points mostly pays a partial 128-row
    tile that round grid M do not; the padding envelope (time never falls as m grows) took the faster
    of noisy neighbours and biased predictions low (leave-one-M-out, benchmarks/fp8_loo.py). bf16/fp16:
    the same, over a reference with a fitted fixed overhead and no padding (leave-one-M-out,
    benchmarks/gemm_loo.py --m); their ``log_t`` at a measured M is the padding envelope of the measured
    times, as the former predictor's was there."""

    def __init__(self, gpu, n, k, params, m, log_t, log_fit, dt="fp8", bounded=False):
        super().__init__(m, log_t)  # m: sorted, distinct
        self._fit = np.asarray(log_fit, dtype=float)
        self._ref = (gpu, dt, int(n), int(k), params)
        self._bounded = bounded  # between grid M: clipped to the neighbouring grid M's (non-decreasing) times

    def __call__(self, q):
        return self.at_log(np.log(np.asarray(q, dtype=float)))

    def at_log(self, lq):
        lq = np.asarray(lq, dtype=float)
        gpu, dt, n, k, params = self._ref
        between = np.interp(lq, self.x, self._fit) + np.log(_gemm_reference(gpu, dt, np.exp(lq), n, k, params))
        if self._bounded:
            j = np.searchsorted(self.x, lq)
            lo = np.where(j > 0, self.y[np.maximum(j - 1, 0)], -np.inf)
            hi = np.where(j < self.y.size, self.y[np.minimum(j, self.y.size - 1)], np.inf)
            between = np.clip(between, lo, hi)
        return np.where(self.on_grid_log(lq), np.interp(lq, self.x, self.y), between)


_BLEND_SHAPES = 24  # weights considered (nearest in log n, log k)
_BLEND_FIT = 12  # of those, measured at a given m, the nearest fitted
_BLEND_RIDGE = 0.05  # damping of the plane's slopes (on weights normalized to sum 1)


def _local_linear_curve(shapes, n, k) -> Curve:
    """Curve over the union of the nearest weights' token counts: at each, a weighted (1 / squared
    distance) least-squares plane in (log n, log k) through the nearest weights measured around that m
    (their own curves, inside their measured range), evaluated at (n, k) and clamped to those weights'
    values; fewer than 4 such weights: their weighted mean."""
    ln, lk = np.log(n), np.log(k)
    d2s = np.array([np.log(s[0] / n) ** 2 + np.log(s[1] / k) ** 2 for s in shapes])
    near = [shapes[i] for i in np.argsort(d2s, kind="stable")[:_BLEND_SHAPES]]
    d2 = np.sort(d2s, kind="stable")[:_BLEND_SHAPES]
    lg = np.log(unique(np.exp(np.concatenate([s[2][:, 0] for s in near]))))
    vals = np.empty((len(near), lg.size))
    ok = np.empty((len(near), lg.size), dtype=bool)
    for i, s in enumerate(near):
        o = np.argsort(s[2][:, 0])
        x, y = s[2][o, 0], s[3][o]
        vals[i] = np.interp(lg, x, y)
        ok[i] = (lg >= x[0] - 1e-9) & (lg <= x[-1] + 1e-9)
    ok &= np.cumsum(ok, axis=0) <= _BLEND_FIT  # the nearest (rows are sorted by distance) at each m
    w = np.where(ok, 1.0 / (d2[:, None] + 1e-12), 0.0)
    w = w / w.sum(0)
    a = np.stack([np.ones(len(near)), np.array([np.log(s[0]) - ln for s in near]),
                  np.array([np.log(s[1]) - lk for s in near])], axis=1)  # (shapes, 3)
    v = np.where(ok, vals, 0.0)
    mat = np.einsum("sg,si,sj->gij", w, a, a) + (_BLEND_RIDGE + 1e-9) * np.diag([0.0, 1.0, 1.0])
    rhs = np.einsum("sg,si,sg->gi", w, a, v)
    plane = np.linalg.solve(mat, rhs[..., None])[:, 0, 0]
    mean = (w * v).sum(0)
    lo = np.where(ok, vals, np.inf).min(0)
    hi = np.where(ok, vals, -np.inf).max(0)
    out = np.where(ok.sum(0) >= 4, np.clip(plane, lo, hi), mean)
    return Curve(np.exp(lg), out)


def _aligned(n: int, k: int) -> bool:
    """cuBLAS's fast (TMA) kernels need 16-byte aligned rows: n and k multiples of 8 elements."""
    return n % 8 == 0 and k % 8 == 0


@functools.cache
def _collective_donor(gpu_id: str, coll: str, gpus: int):
    """The ratio curve of ``coll`` among ``gpus`` GPUs measured on another shipped profile, or the
    nearest GPU count measured there (ring bandwidth terms scale by physics, the ratio carries)."""
    from perfcast.profiles.registry import shipped_profile_dir, shipped_profiles

    for gid in shipped_profiles():
        if gid == gpu_id:
            continue
        t = load_tables(shipped_profile_dir(gid), _gpu(gid))
        cands = [g for (c, g) in t.coll if c == coll]
        if cands:
            return t.coll[(coll, min(cands, key=lambda g: abs(g - gpus)))]
    return None


def _gpu(gid: str):
    from perfcast.hardware import get_gpu

    return get_gpu(gid)



def _load_hosts(root: Path) -> dict:
    from perfcast.profiles import HostModel

    p = root / "host.json"
    if not p.is_file():
        return {}
    d = json.loads(p.read_text())
    out = {}
    for name, v in d.get("runtimes", {}).items():
        kw = {k: float(v[k]) for k in ("per_op_s", "per_layer_s", "per_step_s", "graph_launch_s",
                                       "graph_kernel_discount_s", "graph_kernel_min_s", "strided_elem_factor",
                                       "graph_gap_s")
              if k in v}
        out[name] = HostModel(**kw, source=d.get("source", "measured"))
    return out


# memory-bound kernels not in the calibration, costed with a measured kernel's ratios over their own bytes:
# the FP8 input cast (bf16 in, e4m3 out) is a copy that writes half the bytes
ELEM_PROXY = {"quant_fp8": "copy"}


def load_power(root) -> PowerModel | None:
    """The power model of a profile directory (power.json, written by benchmarks/fit_power.py), if any."""
    p = Path(str(root)) / "power.json"
    if not p.is_file():
        return None
    d = json.loads(p.read_text())
    f8 = d.get("fp8") or {}
    return PowerModel(cap_frac=float(d["cap_frac"]), knee=float(d["knee"]), source=d.get("source", "measured"),
                      fp8_cap_frac=float(f8.get("cap_frac", 0.0)), fp8_knee=float(f8.get("knee", 8.0)),
                      clock_gamma=float((d.get("clock") or {}).get("gamma", 1.0)))


def learned_power(gpu: GPUSpec) -> PowerModel:
    """A shipped profile's power model for a GPU without its own (same architecture first): the cap is a
    fraction of the datasheet bf16 peak, so it scales with the GPU."""
    from perfcast.profiles.registry import donor_profiles, shipped_profile_dir

    for gid in donor_profiles(gpu):
        pm = load_power(shipped_profile_dir(gid))
        if pm is not None:
            return dataclasses.replace(pm, source=f"learned on {gid}")
    return PowerModel()


@functools.cache
def _tables_cached(path: str, gpu_id: str) -> Tables:
    from perfcast.hardware import get_gpu

    gpu = get_gpu(gpu_id)
    cache = _disk_cache_path(path, gpu_id)
    t = None
    if cache is not None and cache.is_file():
        try:
            with open(cache, "rb") as f:
                t = pickle.load(f)
            t.gpu = gpu  # the catalog's own object: predictions compare GPUs by identity
        except Exception:  # a stale or broken cache is rebuilt, never fatal
            t = None
    if t is None:
        t = Tables(path, gpu)
        if cache is not None:
            _write_atomic(cache, t)
    if cache is not None:  # GEMM shapes blended by earlier runs, kept next to the tables
        blends = cache.with_name(cache.stem + "-blends.pkl")
        try:
            with open(blends, "rb") as f:
                t._blend_cache.update(pickle.load(f))
        except Exception:  # none yet, or unreadable: blended again
            pass
        _WITH_BLENDS.append((t, blends, len(t._blend_cache)))
    return t


# tables loaded with a disk cache: (tables, its blends file, how many blends that file held)
_WITH_BLENDS: list = []


def save_blends():
    """Write the GEMM blends built since the tables were loaded next to their disk cache (merged with what
    another process may have written there meanwhile), so that later runs load them instead."""
    for j, (t, path, saved) in enumerate(_WITH_BLENDS):
        if len(t._blend_cache) == saved:
            continue
        try:
            with open(path, "rb") as f:
                merged = pickle.load(f)
        except Exception:
            merged = {}
        merged.update(t._blend_cache)
        _write_atomic(path, merged)
        _WITH_BLENDS[j] = (t, path, len(t._blend_cache))


def _write_atomic(path: Path, obj):
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except OSError:
        pass


def _disk_cache_path(path: str, gpu_id: str) -> Path | None:
    """Built tables are cached on disk (PERFCAST_CACHE_DIR, default ~/.cache/perfcast; set it to an empty
    string to turn caching off), keyed by perfcast's version and every source file's size and mtime."""
    import hashlib

    from perfcast import __version__

    root = os.environ.get("PERFCAST_CACHE_DIR", str(Path.home() / ".cache" / "perfcast"))
    if not root:
        return None
    h = hashlib.sha256(f"{__version__}|{gpu_id}|{Path(path).resolve()}".encode())
    for f in sorted(Path(path).glob("*")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    # a change to the code that shapes the tables invalidates the cache: this module, the interpolants and
    # the reference roofline the ratios are taken over
    from perfcast.ops import analytical, roofline
    from perfcast.profiles import interp

    for mod_file in (__file__, interp.__file__, analytical.__file__, roofline.__file__):
        h.update(Path(mod_file).read_bytes())
    return Path(root) / f"tables-{gpu_id}-{h.hexdigest()[:20]}.pkl"


def load_tables(path, gpu: GPUSpec) -> Tables:
    """Tables of a profile directory; ratios are taken against the GPU the profile was measured on."""
    from perfcast.hardware import get_gpu

    meta = json.loads((Path(str(path)) / "meta.json").read_text())
    measured_on = meta.get("gpu_id") or gpu.id
    try:
        get_gpu(measured_on)
    except ValueError:
        measured_on = gpu.id
    return _tables_cached(str(path), measured_on)


def learned_hosts(exclude: str = "") -> dict:
    """Host models measured on other GPUs' hosts (the host CPU, not the GPU, sets these)."""
    from perfcast.profiles.registry import shipped_profile_dir, shipped_profiles

    for gid in shipped_profiles():
        if gid == exclude:
            continue
        hosts = _load_hosts(Path(str(shipped_profile_dir(gid))))
        if hosts:
            return hosts
    return {}
