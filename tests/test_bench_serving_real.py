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
