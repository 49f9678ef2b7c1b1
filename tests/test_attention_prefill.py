"""Attention prefill: the flash-attention tile schedule (hand-computed cases) and interpolation between grid
points checked on the calibration grid itself (a column of the grid left out), no held-out data."""

import numpy as np
import pytest

from perfcast.hardware import get_gpu
from perfcast.ops import analytical as an
from perfcast.profiles import Profile
from perfcast.profiles import measured as ms
from perfcast.profiles.registry import resolve_profile, shipped_profile_dir


def test_flash_makespan_hand_computed():
    g = get_gpu("h100-sxm")  # 132 SMs; blocks of 128 queries x 64 keys, 2 blocks of CTA overhead
    # one sequence, two query tiles run side by side: the last one reads all 4 key blocks (+2)
    assert an.flash_makespan(g, 1, 1, 256, 256, True) == pytest.approx(6.0)
    # 157 queries: still two tiles, the last reads ceil(157/64) = 3 blocks
    assert an.flash_makespan(g, 1, 1, 157, 157, True) == pytest.approx(5.0)
    # non-causal, 264 equal CTAs of (2 + 2) blocks: exactly two waves
    assert an.flash_makespan(g, 1, 264, 128, 128, False) == pytest.approx(8.0)
    # 133 equal CTAs: one SM runs two of them
    assert an.flash_makespan(g, 1, 133, 128, 128, False) == pytest.approx(8.0)
    # causal with a cached prefix (kv > q): every tile reads the prefix's blocks too
    assert an.flash_makespan(g, 1, 1, 128, 1024, True) == pytest.approx(16 + 2)
    # vectorized closed form == the per-shape schedule, over a spread of shapes
    b = np.array([1, 3, 8, 40, 256])
    for q, kv in ((100, 100), (700, 900), (3000, 3000), (8192, 8192)):
        for causal in (True, False):
            got = an.flash_makespan(g, b, 16, q, kv, causal)
            want = [an._flash_makespan_one(int(x) * 16, q, kv, causal, None, 132) for x in b]
            np.testing.assert_allclose(got, want, rtol=1e-12)


def test_prefill_query_tiles_cost_as_padded():
    """A prefill of 157 queries runs the same two 128-query tiles as one of 256: its time is close to it,
    not (157/256)^2 of it."""
    p = resolve_profile(get_gpu("h100-sxm"), "auto")
    t157 = float(p.attention(7, 64, 8, 64, 157, 157, True, None, "bf16").seconds)
    t256 = float(p.attention(7, 64, 8, 64, 256, 256, True, None, "bf16").seconds)
    assert 0.75 < t157 / t256 <= 1.0


@pytest.mark.parametrize("gid", ["h100-sxm", "h200"])
def test_prefill_interpolates_a_left_out_grid_column(gid):
    """Leave the 1024-token column of one measured config out of the grid and predict it back."""
    gpu = get_gpu(gid)
    rows = ms._read_csv(shipped_profile_dir(gid) / "attention.csv")
    cfg = [r for r in rows if (r["heads"], r["kv_heads"], r["head_dim"]) == ("32", "8", "128") and r["q_len"] != "1"]
    keep = [r for r in cfg if r["kv_len"] != "1024"]
    out = [r for r in cfg if r["kv_len"] == "1024"]
    assert len(out) >= 5
    t, prof = ms.Tables.attention_only(gpu, keep), Profile.analytical(gpu)
    err = [abs(float(t.attention(prof, int(r["batch"]), 32, 8, 128, 1024, 1024, True).seconds) * 1e3
               / float(r["median_ms"]) - 1) for r in out]
    assert np.mean(err) < 0.06, err
