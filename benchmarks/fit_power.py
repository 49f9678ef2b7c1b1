"""Fit a profile's power model (power.json) from two timings of the same GEMMs on one GPU
(the method: src/perfcast/profiles/power_fit.py).

    python benchmarks/fit_power.py --alone benchmarks/data/h100-run8/calib_shuf/gemm.csv \\
        --sustained benchmarks/data/h100-run8/gemm_sustain/gemm.csv --gpu h100-sxm \\
        --out src/perfcast/profiles/data/h100-sxm/power.json
    python benchmarks/fit_power.py --dtype fp8 --gpu h100-sxm \
        --alone benchmarks/data/h100-run23/extras_fp8same_settle/gemm_fp8_dense_same.csv \
        --sustained benchmarks/data/h100-run23/extras_fp8sus/gemm_fp8_sustain.csv \
        --out src/perfcast/profiles/data/h100-sxm/power.json   # the fp8 section, the rest kept
"""

from __future__ import annotations

import argparse
import json
import sys

from perfcast.hardware import get_gpu
from perfcast.profiles import power_fit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alone", required=True, help="gemm.csv of kernels timed alone (calibrate --shuffle)")
    ap.add_argument("--sustained", required=True, help="gemm.csv of the same shapes, calibrate --sustain-ms")
    ap.add_argument("--gpu", required=True)
    ap.add_argument("--min-ms", type=float, default=0.02)
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp8"),
                    help="bf16: the main cap (bf16/fp16 rows); fp8: power.json's fp8 section (FP8 rows)")
    ap.add_argument("--out", default=None, help="power.json to write (default: print only)")
    a = ap.parse_args(argv)
    try:
        out = power_fit.fit_files(a.alone, a.sustained, get_gpu(a.gpu), a.min_ms, a.dtype)
        print(json.dumps(out, indent=1))
        if a.out:
            power_fit.write(out, a.out, a.dtype)
    except ValueError as e:
        print(f"fit_power: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
