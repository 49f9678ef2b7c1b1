"""The serving simulator: queueing sanity against the step model, schedulers, and the report."""

import json

import numpy as np
import pytest

from perfcast.serving import ConfigError, Simulator, parse_config, simulate
from perfcast.serving.capacity import kv_bytes_per_token
from perfcast.serving.trace import chrome_trace
from perfcast.step.predict import make_config, sweep

MODEL, GPU = "meta-llama/Llama-3.1-8B", "h100-sxm"


def config(workload=None, **kw):
    wl = {"arrival": "poisson", "rate_per_s": 5, "requests": 200, "input_tokens": 512, "output_tokens": 64,
          "seed": 1}
    wl.update(workload or {})
    return parse_config({"model": MODEL, "gpu": GPU, **kw, "workload": wl})


def test_low_load_ttft_is_the_prefill_time():
    s = simulate(config({"rate_per_s": 0.01, "requests": 40, "input_tokens": 1024})).summary
    want = float(sweep(make_config(MODEL, GPU), None, batch=1, prompt=1024, context=1024)["prefill_ms"])
    assert s["ttft_ms"]["mean"] == pytest.approx(want, rel=0.02)
    assert s["queue_ms"]["p99"] == pytest.approx(0.0, abs=1e-6)
    assert not s["overloaded"]


def test_low_load_tpot_is_the_decode_step_time():
    s = simulate(config({"rate_per_s": 0.01, "requests": 30, "input_tokens": 1000, "output_tokens": 65})).summary
    ctx = np.arange(1000, 1064)  # the 64 decode steps attend over 1000..1063 cached tokens
    want = float(sweep(make_config(MODEL, GPU), None, batch=1, prompt=1000, context=ctx)["decode_ms"].mean())
    assert s["tpot_ms"]["mean"] == pytest.approx(want, rel=0.02)
    assert s["itl_ms"]["mean"] == pytest.approx(s["tpot_ms"]["mean"], rel=1e-9)


def _throughput_rps():
    s = simulate(config({"rate_per_s": 1000, "requests": 400})).summary  # a burst: the engine stays full
    return s["requests_per_s"]


def test_past_capacity_is_flagged_and_ttft_grows_with_requests():
    rate = 10 * _throughput_rps()
    small = simulate(config({"rate_per_s": rate, "requests": 150})).summary
    big = simulate(config({"rate_per_s": rate, "requests": 450})).summary
    for s in (small, big):
        assert s["overloaded"] is True
        assert "past capacity" in s["overload_message"]
    assert big["ttft_ms"]["mean"] > 1.5 * small["ttft_ms"]["mean"]
    calm = simulate(config({"rate_per_s": 0.2 * _throughput_rps(), "requests": 300})).summary
    assert calm["overloaded"] is False and calm["overload_message"] is None


def test_same_seed_same_output_and_seed_matters():
    a = simulate(config({"seed": 7, "input_tokens": {"dist": "lognormal", "mean": 400, "sigma": 0.8}})).summary
    b = simulate(config({"seed": 7, "input_tokens": {"dist": "lognormal", "mean": 400, "sigma": 0.8}})).summary
    c = simulate(config({"seed": 8, "input_tokens": {"dist": "lognormal", "mean": 400, "sigma": 0.8}})).summary
    assert json.dumps(a) == json.dumps(b)
    assert a["ttft_ms"] != c["ttft_ms"]


def test_gamma_arrivals_burstier_than_poisson_queue_more():
    p = simulate(config({"rate_per_s": 15, "requests": 400})).summary
    g = simulate(config({"rate_per_s": 15, "requests": 400, "arrival": "gamma", "cv": 4})).summary
    assert g["queue_ms"]["p99"] > p["queue_ms"]["p99"]


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_trace_file_input(tmp_path, suffix):
    rows = [(0.0, 100, 5), (0.5, 2000, 20), (0.25, 300, 1), (3.0, 50, 10)]
    f = tmp_path / f"trace.{suffix}"
    if suffix == "csv":
        f.write_text("arrival_s,input_tokens,output_tokens\n" + "".join(f"{a},{i},{o}\n" for a, i, o in rows))
    else:
        f.write_text("".join(json.dumps({"arrival_s": a, "input_tokens": i, "output_tokens": o}) + "\n"
                             for a, i, o in rows))
    cfg = parse_config({"model": MODEL, "gpu": GPU, "workload": {"trace": str(f)}})
    rep = simulate(cfg)
    per = rep.per_request()
    assert [r["arrival_s"] for r in per] == [0.0, 0.25, 0.5, 3.0]  # sorted by arrival
    assert [r["output_tokens"] for r in per] == [5, 1, 20, 10]
    assert rep.summary["requests"] == 4
    assert all(r["e2e_ms"] >= r["ttft_ms"] > 0 for r in per)


def test_preemption_when_kv_cache_is_tiny():
    s = simulate(config({"rate_per_s": 50, "requests": 120, "output_tokens": 200}, kv_blocks=120)).summary
    assert s["preemptions"] > 0
    assert s["kv_cache"]["peak_used_fraction"] <= 1.0
    assert s["kv_cache"]["peak_used_fraction"] > 0.9
    roomy = simulate(config({"rate_per_s": 50, "requests": 120, "output_tokens": 200})).summary
    assert roomy["preemptions"] == 0
    assert s["e2e_ms"]["mean"] > roomy["e2e_ms"]["mean"]
    assert s["output_tokens_per_s"] * s["duration_s"] == pytest.approx(120 * 200)


def test_request_larger_than_the_cache_is_an_error():
    with pytest.raises(ConfigError, match="more KV cache than an engine holds"):
        Simulator(config({"input_tokens": 4000}, kv_blocks=100))


def test_continuous_batching_beats_static_at_moderate_load():
    wl = {"rate_per_s": 8, "requests": 300, "input_tokens": {"dist": "uniform", "min": 100, "max": 1000},
          "output_tokens": {"dist": "uniform", "min": 10, "max": 300}}
    cont = simulate(config(wl)).summary
    stat = simulate(config(wl, scheduler="static")).summary
    assert cont["ttft_ms"]["mean"] < stat["ttft_ms"]["mean"]
    assert cont["preemptions"] == stat["preemptions"] == 0


def test_static_batching_at_low_load_is_one_prefill_then_decodes():
    s = simulate(config({"rate_per_s": 0.01, "requests": 10, "input_tokens": 512}, scheduler="static")).summary
    want = float(sweep(make_config(MODEL, GPU), None, batch=1, prompt=512, context=512)["prefill_ms"])
    assert s["ttft_ms"]["mean"] == pytest.approx(want, rel=0.02)


def test_disaggregated_runs_and_adds_the_kv_transfer_time():
    wl = {"rate_per_s": 0.01, "requests": 20, "input_tokens": 2000, "output_tokens": 50}
    dis = {"prefill_replicas": 1, "decode_replicas": 2}
    fast = simulate(config(wl, disaggregated={**dis, "kv_link_gbps": 1e6})).summary
    slow = simulate(config(wl, disaggregated={**dis, "kv_link_gbps": 10})).summary
    xfer_ms = 2000 * kv_bytes_per_token(make_config(MODEL, GPU)) * 8 / 10e9 * 1e3
    assert slow["e2e_ms"]["mean"] - fast["e2e_ms"]["mean"] == pytest.approx(xfer_ms, rel=0.01)
    assert slow["ttft_ms"]["mean"] == pytest.approx(fast["ttft_ms"]["mean"], rel=1e-9)  # first token: prefill pool
    assert slow["itl_ms"]["p99"] > xfer_ms  # the gap shows on the second token
    assert slow["gpus"] == 3


def test_more_replicas_cut_queueing():
    one = simulate(config({"rate_per_s": 30, "requests": 400})).summary
    two = simulate(config({"rate_per_s": 30, "requests": 400}, replicas=2)).summary
    assert two["ttft_ms"]["p90"] < one["ttft_ms"]["p90"]


def test_pipeline_parallel_replica_runs_virtual_engines():
    s = simulate(config({"rate_per_s": 10, "requests": 200}, pp=2)).summary
    assert s["kv_cache"]["engines"] == 2 and s["gpus"] == 2
    assert not s["overloaded"]


def test_report_has_the_contract_keys_goodput_and_kv_series():
    s = simulate(config(sla={"ttft_ms": 1e6, "tpot_ms": 1e6})).to_dict(per_request=True)
    for m in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        assert set(s[m]) == {"mean", "p50", "p90", "p99"}
        assert s[m]["p50"] <= s[m]["p90"] <= s[m]["p99"]
    for k in ("requests", "duration_s", "output_tokens_per_s", "overloaded", "kv_cache", "goodput"):
        assert k in s
    assert s["goodput"]["fraction"] == 1.0
    assert set(s["per_request"][0]) >= {"id", "arrival_s", "ttft_ms", "e2e_ms", "output_tokens"}
    series = s["kv_cache"]["series"]
    assert len(series["t_s"]) == len(series["used_fraction"]) > 10
    assert all(0.0 <= x <= 1.0 for x in series["used_fraction"])
    strict = simulate(config(sla={"ttft_ms": 1.0})).summary
    assert strict["goodput"]["requests_meeting_sla"] == 0


def test_chrome_trace_has_every_iteration():
    sim = Simulator(config({"requests": 30}, replicas=2), trace=True)
    rep = sim.run()
    tr = chrome_trace(rep.engines)
    its = [e for e in tr["traceEvents"] if e.get("ph") == "X"]
    assert len(its) == sum(e.it for e in rep.engines)
    assert {e["pid"] for e in its} == {0, 1}
    json.dumps(tr)


@pytest.mark.parametrize("bad,msg", [
    ({"scheduler": "fifo"}, "scheduler"), ({"max_num_seqs": 512, "max_batched_tokens": 256}, "max_batched_tokens"),
    ({"tpp": 2}, "unknown key"), ({"workload": {"arrival": "uniform", "rate_per_s": 1}}, "arrival"),
    ({"workload": {"rate_per_s": 0}}, "rate_per_s"), ({"workload": {"rate_per_s": 1, "input_tokens": {"dist": "zipf"}}},
                                                      "dist"),
])
def test_config_errors_say_what_is_valid(bad, msg):
    d = {"model": MODEL, "gpu": GPU, "workload": {"rate_per_s": 1}}
    d.update(bad)
    with pytest.raises(ConfigError, match=msg):
        parse_config(d)


def test_model_that_does_not_fit_is_an_error():
    cfg = parse_config({"model": "meta-llama/Llama-3.1-70B", "gpu": "l4", "workload": {"rate_per_s": 1}})
    with pytest.raises(ConfigError, match="does not leave room for a KV cache"):
        Simulator(cfg)


@pytest.mark.parametrize("kw", [
    {"kv_blocks": 90}, {"kv_blocks": 300, "max_batched_tokens": 512, "max_num_seqs": 16},
    {"kv_blocks": 200, "disaggregated": {"prefill_replicas": 2, "decode_replicas": 1}},
    {"kv_blocks": 150, "pp": 2, "replicas": 2, "block_size": 32}, {"scheduler": "static", "kv_blocks": 400},
])
def test_bookkeeping_balances_under_pressure(kw):
    wl = {"rate_per_s": 40, "requests": 150, "input_tokens": {"dist": "uniform", "min": 1, "max": 700},
          "output_tokens": {"dist": "lognormal", "mean": 80, "sigma": 1.0, "max": 600}}
    sim = Simulator(config(wl, **kw))
    rep = sim.run()
    for e in sim.engines:
        assert e.free == e.total_blocks
        assert max(e.kv_used) <= e.total_blocks
        if hasattr(e, "running"):
            assert not e.running and not e.prefilling and e.n_dec == 0 and e.sum_ctx == 0
            assert not any(e.need)
    for r in sim.requests:
        assert r.generated == r.output and r.finish_t >= r.first_t >= r.arrival
    per = rep.per_request()
    assert sum(p["output_tokens"] for p in per) == sum(r.output for r in sim.requests)


def test_sensitivity_at_low_load_scales_the_service_time_itself():
    """Without queueing, TTFT is the prefill time, so the band is exactly the service time -/+ pct."""
    from perfcast.serving.simulator import sensitivity

    cfg = config({"rate_per_s": 0.01, "requests": 20, "input_tokens": 1024})
    base = simulate(cfg).summary
    band = sensitivity(cfg, 3.0)
    for side, s in (("faster", 0.97), ("slower", 1.03)):
        for m in ("ttft_ms", "tpot_ms", "e2e_ms"):
            assert band[side][m]["mean"] == pytest.approx(base[m]["mean"] * s, rel=1e-9)
        assert not band[side]["overloaded"]


def test_sensitivity_near_capacity_is_wide_and_ordered():
    """Near capacity, a few % of service time moves p90 TTFT by far more than those few %."""
    from perfcast.serving.simulator import sensitivity

    cap = _throughput_rps()
    cfg = config({"rate_per_s": 0.93 * cap, "requests": 600})
    base = simulate(cfg).summary["ttft_ms"]["p90"]
    band = sensitivity(cfg, 3.0)
    lo, hi = band["faster"]["ttft_ms"]["p90"], band["slower"]["ttft_ms"]["p90"]
    assert lo < base < hi
    assert (hi - lo) / base > 0.15  # against 0.06 for the service time alone
    with pytest.raises(ValueError, match="between 0 and 100"):
        sensitivity(cfg, 0.0)
