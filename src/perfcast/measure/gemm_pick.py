"""Which kernel cuBLAS picks at each token count M, and what it costs: the floor of GEMM interpolation.

perfcast predicts a GEMM at an M between its grid points from the measured neighbours. The held-out
sets miss their 4% (bf16) and 5% (FP8) targets by about a point, with the error in mid M (129-4096) and
with no pattern in M's divisibility or its last tile's fill. This harness measures why: a few weights
of the shipped grids at every 8th M from 128 to 2048 (241 values; FP8 through ``torch._scaled_mm``,
bf16 through ``F.linear``), in one random order, each timed as the calibration times it (CUDA events,
L2 flushed, median of reps for about 25 ms of kernel time) and then run once under ``torch.profiler``
to record the name of every kernel it launched. ``benchmarks/gemm_pick.py`` reads the table: how often
the kernel changes between M 8 rows apart, how much time moves with it, and how far interpolation
from neighbours at the grids' own spacing can be from the truth when every point is measured.

    PYTHONPATH=src python3 -m perfcast.measure.gemm_pick --out DIR [--quick]

Writes ``DIR/gemm_pick.csv`` (dtype, m, n, k, median_ms, min_ms, p90_ms, reps, kernels: the launched
kernels' names joined by ``|``, in launch order) and ``DIR/meta.json`` (environment, command).
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import time

# (dtype, n, k): weights of the shipped grids (bf16 gemm.csv, FP8 gemm_fp8_dense.csv) at LLM projections
WEIGHTS = (("bf16", 4096, 4096), ("bf16", 14336, 4096), ("bf16", 1024, 4096), ("bf16", 5120, 5120),
           ("fp8", 10240, 8192), ("fp8", 14336, 4096), ("fp8", 2560, 5120))
M_VALUES = tuple(range(128, 2049, 8))


def cases(quick: bool = False, seed: int = 0) -> list[tuple[str, int, int, int]]:
    """(dtype, m, n, k) of every weight at every M, in one seeded random order (``quick``: every 64th M)."""
    ms = M_VALUES[::8] if quick else M_VALUES
    out = [(dt, m, n, k) for dt, n, k in WEIGHTS for m in ms]
    random.Random(seed).shuffle(out)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perfcast.measure.gemm_pick", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="every 64th M only (a smoke test)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        raise SystemExit("perfcast: gemm_pick needs torch") from None
    if not torch.cuda.is_available():
        raise SystemExit("perfcast: gemm_pick needs a CUDA GPU")
    from perfcast.measure.env import start_out_dir
    from perfcast.measure.extras import _bf16_builder, _fp8_builder
    from perfcast.measure.timing import CudaTimer, kernel_names

    out = start_out_dir(torch, a.out)
    timer = CudaTimer(torch)
    builders = {"bf16": _bf16_builder(torch), "fp8": _fp8_builder(torch)}  # the extras' FP8 and bf16 GEMMs
    todo = cases(a.quick, a.seed)
    t0 = time.time()
    n_ok = 0
    with open(out / "gemm_pick.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["dtype", "m", "n", "k", "median_ms", "min_ms", "p90_ms", "reps", "kernels"])
        for i, (dt, m, n, k) in enumerate(todo):
            try:
                fn = builders[dt](m, n, k)
                st = timer.bench(fn)
                names = kernel_names(torch, fn)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
                print(f"gemm_pick skip {dt} {m}x{n}x{k}: {str(e).splitlines()[0][:120]}", file=sys.stderr)
                continue
            wr.writerow([dt, m, n, k, f"{st.median_ms:.6g}", f"{st.min_ms:.6g}", f"{st.p90_ms:.6g}", st.reps,
                         "|".join(names)])
            n_ok += 1
            if (i + 1) % 200 == 0:
                print(f"gemm_pick: {i + 1}/{len(todo)} after {time.time() - t0:.0f} s", flush=True)
    print(f"gemm_pick: {n_ok} of {len(todo)} shapes in {time.time() - t0:.0f} s -> {out / 'gemm_pick.csv'}")
    return 0 if n_ok else 1


if __name__ == "__main__":
    sys.exit(main())
