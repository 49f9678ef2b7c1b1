"""The kernel-choice floor analysis (benchmarks/gemm_pick.py) on hand-made tables, and the harness's case list."""

import math

import numpy as np
import pytest
from benchmod import load_bench

from perfcast.measure import gemm_pick


def test_cases_cover_every_weight_and_m_in_a_seeded_order():
    c = gemm_pick.cases()
    assert len(c) == len(gemm_pick.WEIGHTS) * len(gemm_pick.M_VALUES) == 7 * 241
    assert len(set(c)) == len(c)
    assert c == gemm_pick.cases()  # seeded
    assert c != sorted(c)  # random order, not sorted
    assert {m for _, m, _, _ in gemm_pick.cases(quick=True)} == set(gemm_pick.M_VALUES[::8])


def test_interpolation_is_exact_on_a_power_law_and_misses_a_kernel_switch():
    mod = load_bench("gemm_pick")
    m = np.arange(128, 513, 8)
    t = 1e-3 * m.astype(float) ** 0.8  # a power law: log-log interpolation is exact
    err, n = mod.interp_error(m, t, 64)
    assert err == pytest.approx(0.0, abs=1e-9) and n == int((m % 64 != 0).sum())
    # a slower kernel (x1.2) at M in (256, 320): interpolation from 256 and 320 misses those by 1/1.2
    labels = ["b" if 256 < x < 320 else "a" for x in m]
    t2 = np.where([lab == "b" for lab in labels], 1.2 * t, t)
    err2, n2 = mod.interp_error(m, t2, 64)
    bad = sum(1 for x in m if 256 < x < 320)
    assert err2 == pytest.approx(100.0 * bad * (1 - 1 / 1.2) / n2, rel=1e-9)
    # knowing the kernel: kernel "b" has no grid point on either side, so those points are left out,
    # and every "a" point is exact again
    err3, n3 = mod.interp_error(m, t2, 64, labels)
    assert err3 == pytest.approx(0.0, abs=1e-9) and n3 == n2 - bad
    s = mod.summarize(m, t2, labels)
    assert s["kernel_sets"] == 2 and s["change_share"] == pytest.approx(2 / (m.size - 1))
    assert s["step_change_pct"] == pytest.approx(100 * math.log(1.2), rel=0.05)
