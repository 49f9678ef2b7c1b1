"""The step profiler's kernel families and the profile-vs-prediction comparison (no GPU needed)."""

import importlib.util
import json
from pathlib import Path

import pytest

from perfcast.measure.step_profile import kernel_family

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name,fam", [
    ("nvjet_tst_128x64_64x8_1x2_h_bz_coopB_NTN", "gemm"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "gemm"),
    ("void cublasLt::splitKreduce_kernel<32, 16, int, float>", "gemm"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128", "attention"),
    ("void cudnn::fusion::lean_reduction_kernel<false, false, false>", "attention"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>>", "elementwise"),
    ("void at::native::index_copy_kernel_impl", "elementwise"),
])
def test_kernel_family(name, fam):
    assert kernel_family(name) == fam


def test_compare_sums_families_and_keeps_the_rest_as_other():
    from perfcast.measure import step_profile as bench
    rec = {"model": "meta-llama/Llama-3.1-8B", "gpu_id": "h100-sxm", "batch": 1, "prompt": 2048, "context": 2048,
           "measure": "decode", "graph_ms": 7.0, "family_ms": {"gemm": 5.0, "attention": 0.5, "elementwise": 1.0}}
    c = bench.compare(rec)
    assert c["measured_other_ms"] == pytest.approx(0.5)
    pf = c["predicted_family_ms"]
    assert set(pf) == {"gemm", "attention", "elementwise"}
    assert all(v > 0 for v in pf.values())
    # the kinds plus the rest make up the predicted step
    assert sum(pf.values()) + c["predicted_other_ms"] == pytest.approx(c["predicted_ms"])
    # an 8B decode step at batch 1 is GEMM (weight reads) first
    assert pf["gemm"] > pf["elementwise"] > 0 and pf["gemm"] > 0.6 * c["predicted_ms"]
    json.dumps(c)  # plain numbers only
    lines = bench.compare_lines(rec)
    assert lines[0].startswith("meta-llama/Llama-3.1-8B decode b1 p2048 c2048 on h100-sxm")
    step = next(x for x in lines if x.strip().startswith("step"))
    assert "7.000" in step and f"{c['predicted_ms']:.3f}" in step


def test_bench_lists_every_shipped_profile():
    spec = importlib.util.spec_from_file_location("bench_step_profile", ROOT / "benchmarks" / "bench_step_profile.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    runs = {run for run, _ in mod.records()}
    assert {"h200-run8", "h100-run11", "h100-run12"} <= runs


def test_profile_step_cli_help_and_bad_input():
    from click.testing import CliRunner

    from perfcast.cli import main

    r = CliRunner().invoke(main, ["profile-step", "--help"])
    assert r.exit_code == 0 and "--measure" in r.output and "--model" in r.output
    r = CliRunner().invoke(main, ["profile-step", "--model", "meta-llama/Llama-3.2-1B", "--batch", "0"])
    assert r.exit_code == 2 and "must be positive" in r.output


def test_qk_norm_on_fused_views_costs_the_copies_rms_norm_makes():
    """The plain decoder's q/k are strided views of the fused QKV output, and F.rms_norm copies each to a
    contiguous tensor first: per layer 2 copies + 2 norm kernels (profiled: h100-run11, Qwen3-8B decode
    runs 4 layer_norm and 2 direct_copy kernels per layer for q/k). HF's separate projections do not."""
    from perfcast.models import get_model
    from perfcast.models.builder import GRAPH_LAYOUT, HF_LAYOUT, StepShape, build_ops

    spec = get_model("Qwen/Qwen3-8B")
    shape = StepShape("decode", 8, 1, 2048)
    ops = {o.name: o for o in build_ops(spec, shape, 1, "bf16", GRAPH_LAYOUT)}
    cp = ops["qk_norm_copy"]
    assert cp.dims["op"] == "copy" and cp.meta["kernels"] == 2 and cp.count == 36
    assert cp.dims["width"] == (32 + 8) * 128 and cp.host_ops == 0.0
    assert "qk_norm_copy" not in {o.name for o in build_ops(spec, shape, 1, "bf16", HF_LAYOUT)}
    assert "qk_norm_copy" not in {o.name for o in build_ops(get_model("meta-llama/Llama-3.1-8B"), shape, 1, "bf16",
                                                             GRAPH_LAYOUT)}


def test_clock_join_reads_the_shipped_h200_alone_clocks():
    spec = importlib.util.spec_from_file_location("clock_join", ROOT / "benchmarks" / "clock_join.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.flops("gemm", {"m": 2, "n": 3, "k": 5}) == 60.0
    assert mod.flops("attention", {"batch": 1, "heads": 2, "head_dim": 4, "q_len": 8, "kv_len": 8,
                                   "causal": "True"}) == 4 * 2 * 4 * 8 * 8 * 0.5
    pts = mod.join(ROOT / "benchmarks" / "data" / "h200-run11")
    assert len(pts) > 800
    attn = [p[2] for p in pts if p[0] == "attention"]
    gemm = [p[2] for p in pts if p[0] == "gemm"]
    # measured: attention alone at the 1,980 MHz boost clock, GEMMs alone below it
    assert sorted(attn)[len(attn) // 2] == 1980.0 and sorted(gemm)[len(gemm) // 2] < 1950.0
