"""Aligned bf16/fp16 GEMMs over their fitted reference: a fixed overhead plus a scale times the soft
maximum of the datasheet compute and memory times (no tile padding); a measured weight's time between grid
M is that reference times its local-fit ratio clipped to the neighbouring grid M's times, a grid M keeps the
padding envelope of its measured times,
and a weight nobody measured blends the measured weights' local fits (benchmarks/gemm_loo.py)."""

from pathlib import Path

import numpy as np
import pytest

from perfcast.hardware import get_gpu
from perfcast.ops import roofline as rl
from perfcast.profiles import measured as ms
from benchmod import load_bench

ROOT = Path(__file__).resolve().parents[1]
GPU = get_gpu("h100-sxm")


def test_gemm_work_bf16_is_the_soft_max_without_padding_at_exponent_0():
    n, k = 4096, 4096
    tc = 2 * 129 * n * k / GPU.flops("bf16")
    tm = rl.gemm_bytes(129, n, k, "bf16") / GPU.mem_bw_bytes_per_s
    assert ms._gemm_work(GPU, "bf16", 129, n, k, 0.0) == pytest.approx((tc ** 4 + tm ** 4) ** 0.25, rel=1e-12)
    # exponent 1: M rounded up to whole _REF_TILE_M["bf16"]-row tiles
    tile = ms._REF_TILE_M["bf16"]
    full = tc * (np.ceil(129 / tile) * tile) / 129
    assert ms._gemm_work(GPU, "bf16", 129, n, k, 1.0) == pytest.approx((full ** 4 + tm ** 4) ** 0.25, rel=1e-12)
    assert ms._gemm_reference(GPU, "fp16", 129, n, k, (0.0, 7e-6, 1.2)) == pytest.approx(
        7e-6 + 1.2 * ms._gemm_work(GPU, "bf16", 129, n, k, 0.0), rel=1e-12)
    # FP8 goes through the same functions, with its own 128-row tiles (129 rows compute as 256)
    tc8 = 2.0 * 129 * n * k / GPU.flops("fp8")
    tm8 = rl.gemm_bytes(129, n, k, "fp8") / GPU.mem_bw_bytes_per_s
    assert ms._gemm_work(GPU, "fp8", 129, n, k, 1.0) == pytest.approx(((tc8 * 256 / 129) ** 4 + tm8 ** 4) ** 0.25,
                                                                        rel=1e-12)


def test_fit_reference_bf16_group_recovers_overhead_and_scale():
    m = np.array([1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096], dtype=float)
    weights = {(dt, n, k): (m, np.log(7e-6 + 1.25 * ms._gemm_work(GPU, dt, m, n, k, 0.0)))
               for dt, n, k in (("bf16", 4096, 4096), ("bf16", 14336, 4096), ("fp16", 1024, 8192))}
    pad, floor, scale = ms._fit_reference(GPU, "bf16", weights)
    assert pad == 0.0 and floor == pytest.approx(7e-6, rel=1e-6) and scale == pytest.approx(1.25, rel=1e-6)


def test_shipped_bf16_tables_use_the_reference():
    t = ms.Tables(ms.Path(ms.__file__).resolve().parent / "data" / "h100-sxm", GPU)
    pad, floor, scale = t._refs["bf16"]
    assert pad == 0.0 and 2e-6 < floor < 15e-6 and scale >= 1.0
    curve = t.gemm_time[("bf16", 4096, 4096)]
    assert isinstance(curve, ms._ReferenceTimes)
    # a measured M: the padding envelope of the measured times (never falls as m grows)
    assert np.all(np.diff(curve.y) >= 0)
    # between grid M: the reference times the interpolated local fit, clipped to the neighbours' times
    q = np.sqrt(640 * 768.0)
    want = np.log(ms._gemm_reference(GPU, "bf16", q, 4096, 4096, t._refs["bf16"])) + np.interp(
        np.log(q), curve.x, curve._fit)
    lo, hi = curve(640.0), curve(768.0)
    assert curve(q) == pytest.approx(np.clip(want, lo, hi), rel=1e-12)
    dense = curve(np.linspace(1, 16384, 5000))
    assert np.all(np.diff(dense) >= -1e-12)  # never falls as m grows
    # fp16 shares bf16's reference; a weight nobody measured blends over it
    s, inside = t._gemm_unmeasured(GPU, "fp16", np.array([40.0, 700.0, 5000.0]), 5056, 9088, None)
    assert ("smooth", "fp16", 5056, 9088) in t._blend_cache and inside.all() and (np.diff(s) > 0).all()


def test_reference_times_bounded_clips_between_neighbours():
    n, k, params = 4096, 4096, (0.0, 7e-6, 1.2)
    m = np.array([256.0, 512.0, 1024.0])
    ref = np.log(ms._gemm_reference(GPU, "bf16", m, n, k, params))
    fit = np.array([0.3, 0.0, 0.3])
    lt = ref + np.array([0.3, 0.05, 0.25])
    c = ms._reference_times(GPU, "bf16", n, k, params, m, lt, fit)
    np.testing.assert_allclose(c(m), lt)  # already non-decreasing: the measured times
    q = 300.0  # reference * exp(fit) below the time at 256: clipped up to it
    assert c(q) == pytest.approx(lt[0], rel=1e-12)
    # an M timed slower than the next grid M keeps the next one's time (padding envelope)
    lt2 = lt.copy()
    lt2[0] = lt[1] + 0.1
    np.testing.assert_allclose(ms._reference_times(GPU, "bf16", n, k, params, m, lt2, fit)(m[:2]), lt[1])
    # FP8: not bounded, its measured times as they are
    f8 = ms._reference_times(GPU, "fp8", n, k, params, m, lt2, fit)
    assert f8(m[0]) == pytest.approx(lt2[0]) and not f8._bounded


def _gemm_loo():
    return load_bench("gemm_loo")


def test_leave_one_m_out_no_worse_than_the_former_smooth_own_curve():
    """4.88 -> 4.86% on H100 (benchmarks/gemm_loo.py --m vs --m --smooth)."""
    mod = _gemm_loo()
    new = np.mean(np.abs([e for _, e in mod.loo_m("h100-sxm")]))
    old = np.mean(np.abs([e for _, e in mod.loo_m("h100-sxm", "smooth")]))
    assert new < 4.9 and new <= old
