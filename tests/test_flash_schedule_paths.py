"""The fast paths of the flash-attention tile schedule give the very numbers of the plain per-shape schedule:
sliding windows and more queries than keys (tiled in one vectorized pass), and the greedy schedule kept
per tile pattern and extended per sequence count."""

import heapq
import random

import numpy as np

from perfcast.hardware import get_gpu
from perfcast.ops import analytical as an


def _greedy_from_scratch(seqs, tiles, sms):
    free = [0.0] * sms
    for _ in range(seqs):
        for t in tiles:
            heapq.heapreplace(free, free[0] + t)
    return float(max(free))


def test_greedy_schedule_reused_across_sequence_counts():
    rng = random.Random(0)
    cases = []
    for _ in range(400):
        sms = rng.choice([132, 108, 7])
        tiles = tuple(float(rng.randint(2, 140)) if rng.random() < 0.7 else rng.random() * 50
                      for _ in range(rng.randint(1, 12)))
        for s in rng.sample(range(1, 8 * sms // len(tiles) + 2), 3):  # several counts of one pattern, any order
            cases.append((s, tiles, sms))
    rng.shuffle(cases)
    an._GREEDY_RUNS.clear()
    for c in cases:
        assert an._greedy_makespan(*c) == _greedy_from_scratch(*c)


def test_tiled_points_equal_the_per_shape_schedule():
    rng = np.random.default_rng(0)
    for gid in ("h100-sxm", "l40s"):
        g = get_gpu(gid)
        for window in (None, 4096, 300, 64):
            for heads in (1, 8, 16):
                b = rng.integers(1, 64, 60).astype(float)
                q = rng.integers(1, 9000, 60).astype(float)
                kv = np.where(rng.random(60) < 0.5, q, rng.integers(1, 9000, 60)).astype(float)
                got = an.flash_makespan(g, b, heads, q, kv, True, window)
                want = [an._flash_makespan_one(int(x * heads), int(y), int(z), True, window, g.sm_count)
                        if window is not None or z < y else float(an.flash_makespan(g, x, heads, y, z, True))
                        for x, y, z in zip(b, q, kv)]
                np.testing.assert_array_equal(got, want)
