"""A measured bf16 weight's time between grid M is a local fit of its neighbours (not the line through
the two nearest noisy points), a grid M keeps its measured time, and times never fall as m grows."""

import numpy as np
from benchmod import load_bench

from perfcast.hardware import get_gpu

GL = load_bench("gemm_loo")  # the former predictor lives with the benchmark that compares it


def test_between_grid_points_is_a_local_fit_not_the_two_point_line():
    gpu = get_gpu("h100-sxm")
    n, k = 8192, 8192
    m = np.array([256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280], dtype=float)
    t = GL.smooth_gemm(gpu, m, n, k, "bf16") * 1.3
    t[6] *= 0.85  # one fast grid point (a kernel that fits M = 768)
    md, lt = GL.gemm_own_curve(gpu, "bf16", n, k, m, t)
    q = np.sqrt(640 * 768.0)
    got = np.exp(np.interp(np.log(q), np.log(md), lt))
    line = np.exp(np.interp(np.log(q), np.log(m), np.log(t)))
    smooth = 1.3 * GL.smooth_gemm(gpu, q, n, k, "bf16")
    assert abs(got / smooth - 1) < abs(line / smooth - 1)
    on = np.exp(np.interp(np.log(m), np.log(md), lt))
    assert np.allclose(on[6], t[6]) and np.all(np.diff(lt) >= -1e-12)
