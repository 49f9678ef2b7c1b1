"""benchmarks/bench_serving_real.py: the hf-cb calibration fits recover known constants, and a run
whose 'measured' times come from the simulator's own step model compares at 0% error."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from perfcast.measure import serve_run as sr
from perfcast.serving.steptime import iteration_model
from perfcast.step.predict import make_config

ROOT = Path(__file__).resolve().parent.parent
MODEL, GPU = "meta-llama/Llama-3.1-8B", "h100-sxm"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_serving_real", ROOT / "benchmarks" / "bench_serving_real.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _step(t, n, q, n_dec, dec_kv, past, chunks, fwd, outside, waiting=0):
    pre = outside * 0.7
    return {"phase": "warmup", "t_start": t, "t_prepared": t + pre, "t_issued": t + pre + fwd * 0.9,
            "t_synced": t + pre + fwd, "t_end": t + pre + fwd + outside * 0.3, "requests": n, "q_tokens": q,
            "decodes": n_dec, "decode_kv": dec_kv, "past_tokens": past, "chunks": chunks, "waiting": waiting,
            "active": n}


def test_overhead_fit_recovers_a_linear_host_cost(bench):
    rng = np.random.default_rng(0)
    a, b, c, d = 1.2e-3, 25e-6, 0.4e-6, 0.03e-6
    steps, t = [], 0.0
    for _ in range(120):
        n = int(rng.integers(1, 33))
        q = n + int(rng.integers(0, 2) * rng.integers(1, 1500))
        past = int(rng.integers(0, 40000))
        outside = a + b * n + c * q + d * (past + q if past else 0)
        steps.append(_step(t, n, q, n, past + n, past, [], 0.02, outside))
        t += 1.0  # idle gaps: no loop gap is added
    over, stats = bench.fit_overhead(steps)
    assert over["base_ms"] == pytest.approx(a * 1e3, rel=1e-6)
    assert over["per_seq_us"] == pytest.approx(b * 1e6, rel=1e-6)
    assert over["per_token_us"] == pytest.approx(c * 1e6, rel=1e-6)
    assert over["per_kv_token_us"] == pytest.approx(d * 1e6, rel=1e-6)
    assert stats["r2"] == pytest.approx(1.0)


def test_overhead_fit_keeps_coefficients_non_negative(bench):
    steps = [_step(float(i), n, n, n, 100 * n, 99 * n, [], 0.02, 2e-3 - 1e-6 * n) for i, n in enumerate(range(1, 30))]
    over, _ = bench.fit_overhead(steps)
    assert all(v >= 0 for v in over.values())


def test_host_scale_fit_recovers_the_factor(bench):
    m = iteration_model(make_config(MODEL, GPU, runtime="eager"), 2048, 32, 1.13)
    steps = []
    for i, n in enumerate(range(1, 33)):
        ctx = 300 * n
        st = _step(float(i), n, n, n, ctx + n, ctx, [], 0.0, 1e-3)
        fwd = bench.predict_forward(m, st)
        st["t_synced"] = st["t_prepared"] + fwd
        st["t_end"] = st["t_synced"] + 3e-4
        steps.append(st)
    scale, stats = bench.fit_host_scale({"model": MODEL, "gpu": GPU}, steps, 2048, 32)
    assert scale == pytest.approx(1.13, rel=0.01)
    assert stats["iterations"] == 32


def test_static_run_measured_on_the_step_model_compares_at_zero_error(bench, tmp_path):
    """The harness's static server on a fake clock ticking with perfcast's own iteration times is what
    the simulator predicts: the bench must report ~0% everywhere."""
    m = iteration_model(make_config(MODEL, GPU, runtime="cuda-graph"), 16 * 1024, 16)
    reqs = sr.make_trace(3.0, 40, {"dist": "uniform", "min": 20, "max": 600}, {"dist": "uniform", "min": 2, "max": 80},
                         seed=4)
    clock = {"t": 100.0}

    def prefill(b, p):
        clock["t"] += m.seconds(b * p, b, 0, 0.0, b, b * p, b * (p * p - p * (p - 1) / 2.0))

    def decode(b, kv):
        clock["t"] += m.seconds(b, b, b, float(b * kv))

    srv = sr.StaticServer(reqs, 8, prefill, decode, clock=lambda: clock["t"],
                          sleep_until=lambda t: clock.__setitem__("t", max(clock["t"], t)))
    srv.run(t0=100.0)
    summ = sr.summarize(reqs)
    settings = {"max_batch": 8, "kv_bucket": 1}
    d = tmp_path / "serve_h100-sxm" / "meta-llama__Llama-3.1-8B" / "static-r3"
    sr.write_run(d, reqs, srv.batches, {"engine": "static", "model": MODEL, "label": "r3", "rate_per_s": 3.0,
                                       **summ, "settings": settings, "env": {"gpu_id": GPU, "gpu_name": "fake"}})
    roots = bench.find_data([str(tmp_path / "serve_h100-sxm")])
    runs = bench.load_runs(roots[0])
    sim = bench.simulate_run(runs[0], None, tmp_path)
    for row in bench.compare(runs[0]["summary"], sim):
        assert row["error_pct"] == pytest.approx(0.0, abs=1e-6), row


def test_bench_without_data_says_so(bench, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("sys.argv", ["bench", "--data", str(tmp_path)])
    assert bench.main() == 0
    assert "no measured serving data" in capsys.readouterr().out


def test_bench_reads_a_tarball(bench, tmp_path):
    import tarfile

    d = tmp_path / "out" / "m" / "static-r1"
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"engine": "static"}))
    tgz = tmp_path / "serve.tgz"
    with tarfile.open(tgz, "w:gz") as t:
        t.add(tmp_path / "out", arcname="serve")
    roots = bench.find_data([str(tgz)])
    assert len(roots) == 1 and list(roots[0].rglob("summary.json"))


def test_host_scale_fit_is_a_mean_without_the_stalls(bench):
    """By hand: 20 iterations at the true host factor 1.13, 4 with 10% jitter, 8 stalled at 1.8x.
    Median ratio 1, so the 1.8x ones (> 1.25x the median) are stalls and left out; the rest average
    (20 * 1.0 + 4 * 1.1) / 24 = 1.01667, so the factor is 1.13 * 1.01667 = 1.1488 (a median gives
    1.13, a plain mean 1.13 * (20 + 4.4 + 14.4) / 32 = 1.370)."""
    m = iteration_model(make_config(MODEL, GPU, runtime="eager"), 2048, 32, 1.13)
    steps = []
    factors = [1.0] * 20 + [1.1] * 4 + [1.8] * 8
    for i, f in enumerate(factors):
        n = 1 + i % 32
        ctx = 300 * n
        st = _step(float(i), n, n, n, ctx + n, ctx, [], 0.0, 1e-3)
        st["t_synced"] = st["t_prepared"] + f * bench.predict_forward(m, st)
        st["t_end"] = st["t_synced"] + 3e-4
        steps.append(st)
    scale, stats = bench.fit_host_scale({"model": MODEL, "gpu": GPU}, steps, 2048, 32)
    assert scale == pytest.approx(1.13 * (20 + 4 * 1.1) / 24, rel=0.005)
    assert stats["stalls"] == 8
    kept = bench.warm_steps({"model": MODEL, "gpu": GPU}, steps, 2048, 32, scale)
    assert len(kept) == 24


def _hfcb_engine(tmp_path, rows, **kw):
    from perfcast.serving import parse_config
    from perfcast.serving.simulator import Simulator

    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(json.dumps(dict(zip(("arrival_s", "input_tokens", "output_tokens"), r))) + "\n"
                             for r in rows))
    cfg = {"model": MODEL, "gpu": GPU, "runtime": "eager", "scheduler": "hf-cb", "block_size": 256,
           "kv_blocks": 100, **kw, "workload": {"trace": str(trace)}}
    sim = Simulator(parse_config(cfg))
    return sim.engines[0], sim.requests


def test_replay_fills_batches_by_transformers_fifo_rules(bench, tmp_path):
    """transformers 5.17 FIFOScheduler (scheduler.py, _process_candidates), by hand, on given iteration
    boundaries (10 ms each from t = 1 ms), 2 requests per batch, a budget of 300 tokens:
    A (100 prompt tokens, 3 out), B (250, 2), C (100, 2) arrive at 0, 0.1, 0.2 ms.
    it0: A whole (100), B cut to what is left (200); the request budget is spent, C waits.
    it1: decodes first (A), then B's split prefill (its last 50): B's first token.
    it2: A and B decode and finish (A's 3rd token, B's 2nd); C still has no slot.
    it3: C's prefill; it4: C's decode.
    First tokens at the ends of it0, it1, it3: TTFT 11, 20.9 and 40.8 ms."""
    eng, reqs = _hfcb_engine(tmp_path, [(0.0, 100, 3), (0.0001, 250, 2), (0.0002, 100, 2)],
                             max_num_seqs=2, max_batched_tokens=300)
    steps = [{"t_start": 0.001 + 0.01 * k, "t_end": 0.011 + 0.01 * k} for k in range(5)]
    got = bench.replay(eng, reqs, steps)
    assert [[g[f] for f in bench.POLICY_FIELDS] for g in got] == [
        [2, 300, 0, [[0, 100], [0, 200]]],
        [2, 51, 1, [[200, 50]]],
        [2, 2, 2, []],
        [1, 100, 0, [[0, 100]]],
        [1, 1, 1, []],
    ]
    ttft = [(r.first_t - r.arrival) * 1e3 for r in sorted(reqs, key=lambda r: r.arrival)]
    assert ttft == pytest.approx([11.0, 20.9, 40.8])
    assert all(g["seconds"] > 0 for g in got)


def test_replay_splits_a_long_prompt_behind_the_decodes(bench, tmp_path):
    """A prompt longer than the budget left after the decodes is chunked over several iterations,
    each chunk what the decodes leave of max_batch_tokens (transformers: _schedule_request)."""
    eng, reqs = _hfcb_engine(tmp_path, [(0.0, 50, 6), (0.0001, 700, 2)], max_num_seqs=4, max_batched_tokens=256)
    steps = [{"t_start": 0.001 + 0.01 * k, "t_end": 0.011 + 0.01 * k} for k in range(6)]
    got = bench.replay(eng, reqs, steps)
    # it0: A (50) + B's first 206; then A decodes (1) and B gets 255, 239 (its last)
    assert [g["chunks"] for g in got[:3]] == [[[0, 50], [0, 206]], [[206, 255]], [[461, 239]]]
    b = max(reqs, key=lambda r: r.prompt)
    assert (b.first_t - b.arrival) * 1e3 == pytest.approx(30.9)


HFCB_R18 = ROOT / "benchmarks" / "data" / "serve_h100-sxm" / "serve" / "meta-llama__Llama-3.1-8B" / "hf-cb-r18"


@pytest.mark.skipif(not (HFCB_R18 / "steps.jsonl").exists(), reason="measured hf-cb run not in the tree")
def test_replay_of_a_measured_run_is_the_engine(bench, tmp_path):
    """On a measured transformers run at 18 req/s (the queue for the 32 slots grows to 25), the
    simulator's hf-cb policy driven by the measured iteration boundaries fills every iteration as the
    engine did and gives the measured TTFT: what the free-running simulation gets wrong there is the
    iteration times, not the policy."""
    run = next(r for r in bench.load_runs(HFCB_R18.parent) if r["dir"] == HFCB_R18)
    rp = bench.replay_policy(run, None, tmp_path)
    assert rp["identical"] == rp["iterations"] == len(run["steps"]) and rp["first_difference"] is None
    assert rp["first_tokens"] == rp["requests"] == 360
    m = run["summary"]["ttft_ms"]
    assert rp["ttft_ms"]["p50"] == pytest.approx(m["p50"], abs=0.5)
    assert rp["ttft_ms"]["p90"] == pytest.approx(m["p90"], abs=0.5)
