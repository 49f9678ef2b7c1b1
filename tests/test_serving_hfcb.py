"""The hf-cb scheduler (transformers continuous batching) and a measured engine's calibration keys."""

import pytest

from perfcast.serving import ConfigError, parse_config, simulate
from perfcast.serving.steptime import iteration_model
from perfcast.step.predict import make_config

MODEL, GPU = "meta-llama/Llama-3.1-8B", "h100-sxm"


def config(workload=None, **kw):
    wl = {"arrival": "poisson", "rate_per_s": 5, "requests": 200, "input_tokens": 512, "output_tokens": 64, "seed": 1}
    wl.update(workload or {})
    base = {"model": MODEL, "gpu": GPU, "runtime": "eager", "max_num_seqs": 32, "max_batched_tokens": 2048,
            "block_size": 256}
    return parse_config({**base, **kw, "workload": wl})


LOW = {"rate_per_s": 0.01, "requests": 20, "input_tokens": 700, "output_tokens": 33}


def test_hf_cb_at_low_load_is_vllm_plus_the_kv_gather():
    v = simulate(config(LOW, scheduler="vllm")).summary
    h = simulate(config(LOW, scheduler="hf-cb")).summary
    # a fresh prefill reads no cache: the same iteration
    assert h["ttft_ms"]["mean"] == pytest.approx(v["ttft_ms"]["mean"], rel=1e-9)
    m = iteration_model(make_config(MODEL, GPU, runtime="eager"), 2048, 32)
    ctx = [700 + k for k in range(1, 33)]  # decode step k holds 700 + k tokens of KV
    extra = sum(m.seconds(1, 1, 1, c, kv_read=c) - m.seconds(1, 1, 1, c) for c in ctx) / 32 * 1e3
    assert h["tpot_ms"]["mean"] - v["tpot_ms"]["mean"] == pytest.approx(extra, abs=1e-6)


def test_kv_gather_cost_grows_with_the_tokens_read():
    m = iteration_model(make_config(MODEL, GPU, runtime="cuda-graph"), 2048, 32)
    small, big = m.kv_gather(1000), m.kv_gather(100000)
    assert 0 < small < big
    # a copy of 32 layers x 2 x 8 heads x 128 x 2 bytes per token, read and written, near HBM bandwidth
    bytes_moved = 100000 * 32 * 2 * 8 * 128 * 2 * 2
    assert 0.5 < bytes_moved / big / 3.35e12 < 1.05
    assert m.seconds(64, 64, 64, 64 * 2000, kv_read=64 * 2000) > m.seconds(64, 64, 64, 64 * 2000)


def test_iteration_overhead_is_added_to_every_iteration():
    over = {"base_ms": 2.0, "per_seq_us": 50.0, "per_token_us": 1.0, "per_kv_token_us": 0.1}
    a = simulate(config(LOW, scheduler="hf-cb")).summary
    b = simulate(config(LOW, scheduler="hf-cb", iteration_overhead=over)).summary
    # the prefill iteration: one sequence, 700 new tokens, no cache read
    assert b["ttft_ms"]["mean"] - a["ttft_ms"]["mean"] == pytest.approx(2.0 + 0.05 + 0.7, rel=1e-6)
    # decode step k: one sequence, one token, 700 + k tokens read
    per_step = 2.0 + 0.05 + 0.001 + 0.1e-3 * (700 + 16.5)  # the mean over k = 1..32
    assert b["tpot_ms"]["mean"] - a["tpot_ms"]["mean"] == pytest.approx(per_step, rel=1e-6)
    assert b["calibration"]["iteration_overhead"]["base_ms"] == 2.0 and "calibration" not in a


def test_iteration_overhead_also_applies_to_vllm_and_static():
    over = {"base_ms": 5.0}
    for sched in ("vllm", "static"):
        a = simulate(config(LOW, scheduler=sched)).summary
        b = simulate(config(LOW, scheduler=sched, iteration_overhead=over)).summary
        assert b["ttft_ms"]["mean"] - a["ttft_ms"]["mean"] == pytest.approx(5.0, rel=1e-6)
        assert b["tpot_ms"]["mean"] - a["tpot_ms"]["mean"] == pytest.approx(5.0, rel=1e-6)


def test_eager_host_scale_slows_host_bound_steps():
    a = simulate(config(LOW, scheduler="hf-cb")).summary
    b = simulate(config(LOW, scheduler="hf-cb", eager_host_scale=1.2)).summary
    # Llama-3.1-8B decode at batch 1 under eager is host-bound: its step grows nearly with the host
    assert 1.12 < b["tpot_ms"]["mean"] / a["tpot_ms"]["mean"] < 1.2


def test_safety_margin_holds_back_new_prompts_when_the_cache_is_nearly_full():
    wl = {"rate_per_s": 200, "requests": 60, "input_tokens": 500, "output_tokens": 200}
    # 24 blocks of 256 tokens: 8 requests of 700 tokens hold 3 blocks each
    free = simulate(config(wl, scheduler="hf-cb", kv_blocks=24, safety_margin=0.0)).summary
    held = simulate(config(wl, scheduler="hf-cb", kv_blocks=24, safety_margin=0.5)).summary
    assert held["kv_cache"]["peak_used_fraction"] < free["kv_cache"]["peak_used_fraction"]
    assert held["ttft_ms"]["mean"] > free["ttft_ms"]["mean"]


@pytest.mark.parametrize("bad,msg", [
    ({"safety_margin": 0.2}, "'hf-cb' only"),
    ({"scheduler": "hf-cb", "safety_margin": 1.5}, "safety_margin"),
    ({"iteration_overhead": {"base_ms": -1}}, "iteration_overhead.base_ms"),
    ({"iteration_overhead": {"per_step": 1}}, "unknown key"),
    ({"iteration_overhead": 3}, "must be an object"),
    ({"eager_host_scale": 0}, "eager_host_scale"),
])
def test_calibration_config_errors(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        config(LOW, **bad)
