"""FP8 model steps: the builder's FP8 ops (input casts, unquantized head and router), the cast's cost, the
memory of quantized weights, and the measured FP8 steps (model_step --dtype fp8: h100-run26, h200-run17)
against predictions."""

import json
from pathlib import Path

import numpy as np
import pytest

from perfcast.hardware import get_gpu
from perfcast.models import get_model
from perfcast.models.builder import GRAPH_LAYOUT, HF_LAYOUT, StepShape, build_ops
from perfcast.profiles.registry import resolve_profile
from perfcast.step.predict import accuracy_of, make_config, predict_many

DATA = Path(__file__).resolve().parents[1] / "benchmarks" / "data"


def _shape(tokens):
    return StepShape("prefill", np.asarray(1), np.asarray(tokens), np.asarray(tokens))


def test_fp8_step_casts_each_gemm_input_once_and_keeps_the_head_bf16():
    spec = get_model("meta-llama/Llama-3.1-8B")
    ops = build_ops(spec, _shape(512), 1, "fp8", GRAPH_LAYOUT)
    names = [o.name for o in ops]
    for g in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
        assert names.index(f"{g}_quant") == names.index(g) - 1  # right before its GEMM
    q = {o.name: o for o in ops if o.name.endswith("_quant")}
    assert len(q) == 4 and all(o.kind == "elementwise" and o.dtype == "bf16" and o.count == 32 for o in q.values())
    assert [q[f"{g}_quant"].dims["width"] for g in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")] == \
        [4096, 4096, 4096, 14336]  # each GEMM's k
    gemms = {o.name: o.dtype for o in ops if o.kind == "gemm"}
    assert gemms.pop("lm_head") == "bf16" and set(gemms.values()) == {"fp8"}
    # bf16: no casts; separate projections share the cast of their input (HF layout)
    assert not any(o.name.endswith("_quant") for o in build_ops(spec, _shape(512), 1, "bf16", GRAPH_LAYOUT))
    hf = [o.name for o in build_ops(spec, _shape(512), 1, "fp8", HF_LAYOUT) if o.name.endswith("_quant")]
    assert hf == ["q_proj_quant", "o_proj_quant", "gate_proj_quant", "down_proj_quant"]
    moe = build_ops(get_model("mistralai/Mixtral-8x7B-v0.1"), _shape(512), 1, "fp8", GRAPH_LAYOUT)
    assert next(o for o in moe if o.name == "router").dtype == "bf16"


def test_fp8_cast_costs_three_quarters_of_a_copy():
    prof = resolve_profile(get_gpu("h100-sxm"), "auto")
    for t in (4096, 65536):
        q, c = prof.elementwise("quant_fp8", t, 4096), prof.elementwise("copy", t, 4096)
        assert float(q.bytes) == pytest.approx(3.0 * t * 4096) and float(c.bytes) == pytest.approx(4.0 * t * 4096)
        assert float(q.seconds) == pytest.approx(0.75 * float(c.seconds), rel=1e-9)  # the copy's measured ratio


def _measured(run):
    for line in (DATA / run / "step_fp8_fp8.jsonl").read_text().splitlines():
        yield json.loads(line)


@pytest.mark.parametrize("run,gpu_id,dec_max,pre_max", [("h100-run26", "h100-sxm", 3.0, 5.0),
                                                        ("h200-run17", "h200", 4.0, 5.0)])
def test_measured_fp8_steps_meet_the_stated_bounds(run, gpu_id, dec_max, pre_max):
    err = {"prefill": [], "decode": []}
    for r in _measured(run):
        assert r["dtype"] == "fp8" and r["gpu_id"] == gpu_id and "error" not in r
        cfg = make_config(r["model"], gpu_id, 1, 1, "fp8", "cuda-graph")
        p = predict_many(cfg, r["batch"], r["prompt"], r["context"])[0]
        for ph in err:
            if r.get(f"{ph}_ms"):
                err[ph].append(abs(getattr(p, f"{ph}_ms") / r[f"{ph}_ms"] - 1) * 100)
    assert len(err["decode"]) == 5 and len(err["prefill"]) == 4
    # measured: decode 1.5% (H100), 3.0% (H200); prefill 3.5% (H100; 8.0% with the per-kernel power cap),
    # 3.6% (H200)
    assert np.mean(err["decode"]) <= dec_max and max(err["decode"]) <= 6.0
    assert np.mean(err["prefill"]) <= pre_max and max(err["prefill"]) <= 7.0


def test_fp8_accuracy_figure_only_where_it_was_measured():
    p90_pre, p90_dec, basis = accuracy_of(make_config("meta-llama/Llama-3.1-8B", "h100-sxm", 1, 1, "fp8"), "measured:x")
    assert "FP8 steps" in basis and p90_pre > 0 and p90_dec > 0
    # tp 2: measured on a 2xH200 host (graph decode, eager prefill); the other phase has no figure
    pre, dec, basis = accuracy_of(make_config("meta-llama/Llama-3.1-8B", "h200", 2, 1, "fp8"), "measured:x")
    assert pre is None and dec > 0 and "FP8 steps (0 prefill, 6 decode" in basis
    for cfg in (make_config("meta-llama/Llama-3.1-8B", "h100-sxm", 2, 2, "fp8"),
                make_config("meta-llama/Llama-3.1-8B", "h100-sxm", 1, 1, "fp8", kv_dtype="fp8")):
        assert accuracy_of(cfg, "measured:x")[0] is None


@pytest.mark.parametrize("run,gpu_id", [("h100-run27", "h100-sxm"), ("h200-run18", "h200")])
def test_held_out_steps_of_the_step_power_model(run, gpu_id):
    """cases_steps7 (measured after the step-level power model was built: Qwen2.5-32B, Qwen3-8B, 16k-token
    prompts, FP8 Llama-3.1-70B on the H200), bf16 and FP8: measured 0.8-3.5% MAPE per group, every case
    within 6%."""
    err = []
    for f in sorted((DATA / run).glob("step_steps7*.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            assert "error" not in r and r["gpu_id"] == gpu_id
            cfg = make_config(r["model"], gpu_id, 1, 1, r["dtype"], "cuda-graph")
            p = predict_many(cfg, r["batch"], r["prompt"], r["context"])[0]
            ph = "prefill" if r.get("prefill_ms") else "decode"
            err.append(abs(getattr(p, f"{ph}_ms") / r[f"{ph}_ms"] - 1) * 100)
    assert len(err) == (16 if gpu_id == "h100-sxm" else 18)
    assert np.mean(err) <= 3.0 and max(err) <= 7.0
