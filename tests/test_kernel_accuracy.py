"""Kernel accuracy against shipped held-out measurements (benchmarks/data), with the issue's tolerances.

The settled held-out sets (h100-run21, h200-run13: timed like the shipped GEMM tables, each kernel after
a 20 ms idle) are scored against the shipped profile: aligned bf16/fp16 GEMM MAPE <= 4% and p90 <= 10%
on each GPU, and the transfer (profile "none": the other GPU's tables and this GPU's datasheet) <= 12%.
FP8 (issue 6: <= 5% MAPE): the settled FP8 held-out sets 11, 12 and 13 (h100-run22/23, h200-run14/15, each
kernel after a 20 ms idle like the shipped FP8 tables, which are those runs' two settled grids).
"""

from pathlib import Path

import numpy as np
import pytest
from benchmod import load_bench

from perfcast.hardware import get_gpu
from perfcast.profiles.registry import resolve_profile

ROOT = Path(__file__).resolve().parents[1]
BK = load_bench("bench_kernels")

SETS = [("h100-sxm", "h100-run21/heldout13_settle"), ("h100-sxm", "h100-run21/heldout9_settle"),
        ("h200", "h200-run13/heldout13_settle"), ("h200", "h200-run13/heldout9_settle")]


def _errors(gpu_id: str, rel: str, mode: str) -> np.ndarray:
    gpu = get_gpu(gpu_id)
    rs = BK.rows(ROOT / "benchmarks" / "data" / rel / "gemm.csv")
    assert len(rs) >= 290, rel  # the set is shipped whole
    preds = BK.predict_rows(gpu, resolve_profile(gpu, mode), "gemm", rs)
    return np.array([abs(p / m - 1.0) * 100 for fam, p, m, _ in preds if fam == "gemm"])


@pytest.mark.parametrize("gpu_id,rel", SETS)
def test_settled_gemm_heldout_meets_the_target(gpu_id, rel):
    e = _errors(gpu_id, rel, "auto")
    assert e.size >= 190
    assert e.mean() <= 4.0, f"{rel}: MAPE {e.mean():.2f}%"  # measured 2.8-3.4%
    assert np.percentile(e, 90) <= 10.0  # measured 6.2-8.1%


@pytest.mark.parametrize("gpu_id,rel", SETS[::2])
def test_settled_gemm_heldout_transfer_meets_the_target(gpu_id, rel):
    e = _errors(gpu_id, rel, "none")
    assert e.mean() <= 12.0  # measured 8.0-8.1%


FP8_SETS = [(g, f"{r}/{sub}/gemm_fp8_heldout{s}.csv") for g, runs in (("h100-sxm", ("h100-run22", "h100-run23")),
                                                                     ("h200", ("h200-run14", "h200-run15")))
            for r in runs for sub, s in (("extras_fp8same_settle", "11_same"),
                                         ("extras_fp8held_settle" if r in ("h100-run22", "h200-run14")
                                          else "extras_fp8held13_settle", "12" if r in ("h100-run22", "h200-run14")
                                          else "13"))]


@pytest.mark.parametrize("gpu_id,rel", FP8_SETS)
def test_settled_fp8_heldout_meets_the_target(gpu_id, rel):
    gpu = get_gpu(gpu_id)
    rs = BK.rows(ROOT / "benchmarks" / "data" / rel)
    assert len(rs) == 150 and all(r["dtype"] == "fp8" for r in rs), rel
    preds = BK.predict_rows(gpu, resolve_profile(gpu, "auto"), "gemm", rs)
    e = np.array([abs(p / m - 1.0) * 100 for _, p, m, _ in preds])
    assert e.mean() <= 5.0, f"{rel}: MAPE {e.mean():.2f}%"  # measured 3.5-5.0%
    assert np.percentile(e, 90) <= 13.0  # measured 8.9-12.7%
