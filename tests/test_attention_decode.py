"""Attention decode (one query): time set by the K/V stream of (batch x kv_heads, keys), pooled over configs.
Checked on the calibration grid itself (configs and grid points left out), no held-out data."""

import numpy as np
import pytest

from perfcast.hardware import get_gpu
from perfcast.profiles import Profile
from perfcast.profiles import measured as ms
from perfcast.profiles.registry import shipped_profile_dir


def _decode_rows(gid):
    return [r for r in ms._read_csv(shipped_profile_dir(gid) / "attention.csv")
            if r.get("median_ms") and r["q_len"] == "1"]


def _predict(gid, keep, out):
    gpu = get_gpu(gid)
    t, prof = ms.Tables.attention_only(gpu, keep), Profile.analytical(gpu)
    got = np.array([float(t.attention(prof, int(r["batch"]), int(r["heads"]), int(r["kv_heads"]), int(r["head_dim"]),
                                      1, int(r["kv_len"]), False).seconds) for r in out])
    want = np.array([float(r["median_ms"]) * 1e-3 for r in out])
    return np.abs(got / want - 1)


@pytest.mark.parametrize("gid", ["h100-sxm", "h200"])
def test_decode_config_left_out_is_predicted_from_equal_kv_heads_streams(gid):
    """MHA 32/32 left out of the grid: its rows stream the same K/V as the GQA configs' rows of equal
    batch x kv_heads (32/8 at four times the batch), so they come back within a few percent (beyond the
    other configs' largest batch x kv_heads, held at the edge, a point may be off more)."""
    rows = _decode_rows(gid)
    cfg = lambda r: (r["heads"], r["kv_heads"], r["head_dim"])
    out = [r for r in rows if cfg(r) == ("32", "32", "128")]
    keep = [r for r in rows if cfg(r) != ("32", "32", "128")]
    assert len(out) >= 60
    err = _predict(gid, keep, out)
    assert err.mean() < 0.03


@pytest.mark.parametrize("gid", ["h100-sxm", "h200"])
def test_decode_grid_point_left_out_of_every_config(gid):
    """A (batch x kv_heads, keys) point left out of every config at once is interpolated from its
    neighbours (interior points: keys 1024..65536)."""
    rows = _decode_rows(gid)
    key = lambda r: (int(r["batch"]) * int(r["kv_heads"]), int(r["kv_len"]))
    err = []
    for k in sorted({key(r) for r in rows if 1024 <= int(r["kv_len"]) <= 65536 and int(r["batch"]) in (2, 8, 32)}):
        out = [r for r in rows if key(r) == k]
        err += list(_predict(gid, [r for r in rows if key(r) != k], out))
    assert np.mean(err) < 0.05
