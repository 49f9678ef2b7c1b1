"""The serving harness's pure-Python parts: traces, replay timing, summary statistics, and the static
server loop against the simulator's static scheduler. No GPU; the CPU smoke tests need torch (and
transformers for hf-cb) and skip without them."""

import json
import math

import numpy as np
import pytest

from perfcast.measure import serve_run as sr
from perfcast.serving import Simulator, parse_config
from perfcast.serving.config import Workload
from perfcast.serving.workload import generate


class FakeClock:
    def __init__(self, t=0.0):
        self.t = t

    def __call__(self):
        return self.t

    def sleep_until(self, t):
        self.t = max(self.t, t)

    def advance(self, dt):
        self.t += dt


def test_make_trace_is_the_simulators_workload():
    inp = {"dist": "lognormal", "mean": 300, "sigma": 0.7, "min": 16, "max": 1024}
    out = {"dist": "uniform", "min": 8, "max": 64}
    reqs = sr.make_trace(4.0, 50, inp, out, seed=3)
    w = Workload.parse({"arrival": "poisson", "rate_per_s": 4.0, "requests": 50, "input_tokens": inp,
                        "output_tokens": out, "seed": 3})
    want = generate(w, 131072)
    assert [(r.arrival_s, r.input_tokens, r.output_tokens) for r in reqs] == \
        [(q.arrival, q.prompt, q.output) for q in want]
    assert reqs[0].arrival_s == 0.0 and all(16 <= r.input_tokens <= 1024 for r in reqs)


def test_load_trace_sorts_and_starts_at_zero(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text("".join(json.dumps({"arrival_s": a, "input_tokens": i, "output_tokens": o}) + "\n"
                         for a, i, o in [(5.0, 10, 2), (4.5, 20, 3), (6.0, 30, 4)]))
    reqs = sr.load_trace(str(f))
    assert [(r.id, r.arrival_s, r.input_tokens) for r in reqs] == [(0, 0.0, 20), (1, 0.5, 10), (2, 1.5, 30)]


def test_replay_submits_on_time_and_late_when_busy():
    clk = FakeClock(100.0)
    reqs = [sr.Req(i, a, 10, 2) for i, a in enumerate([0.0, 0.1, 0.12, 0.5])]
    seen = []

    def submit(r):
        seen.append((r.id, clk()))
        clk.advance(0.05)  # the engine holds the process for 50 ms per add_request

    n = sr.replay(reqs, submit, t0=100.0, clock=clk, sleep_until=clk.sleep_until)
    assert n == 4
    assert [r.submit_s for r in reqs] == pytest.approx([0.0, 0.1, 0.15, 0.5])  # #2 is 30 ms late
    assert [i for i, _ in seen] == [0, 1, 2, 3]


def test_replay_stops_at_the_deadline():
    clk = FakeClock(0.0)
    reqs = [sr.Req(i, float(i), 10, 2) for i in range(10)]
    n = sr.replay(reqs, lambda r: None, t0=0.0, clock=clk, sleep_until=clk.sleep_until, deadline=3.5)
    assert n == 4  # arrivals 0, 1, 2, 3
    assert math.isnan(reqs[4].submit_s)


def _req(i, arrival, submit, tokens, inp, out, sched=math.nan, error=None):
    r = sr.Req(i, arrival, inp, out, submit_s=submit, sched_s=sched, tokens_s=list(tokens), error=error)
    return r


def test_summary_statistics_by_hand():
    reqs = [
        _req(0, 0.0, 0.0, [0.1, 0.2, 0.4], 10, 3, sched=0.05),  # TTFT 100, TPOT 150, E2E 400, gaps 100, 200
        _req(1, 0.49, 0.5, [0.8, 0.9], 20, 2, sched=0.5),  # TTFT 300, TPOT 100, E2E 400, gap 100; 10 ms late
        _req(2, 1.0, 1.0, [1.05], 30, 1),  # TTFT 50, no TPOT, E2E 50
        _req(3, 1.1, 1.1, [1.2], 40, 4, error="cut"),  # incomplete: left out of every metric
    ]
    s = sr.summarize(reqs)
    assert (s["requests"], s["completed"], s["incomplete"]) == (4, 3, 1)
    # TTFT [100, 300, 50]: numpy's linear percentiles
    assert s["ttft_ms"]["mean"] == pytest.approx(150.0)
    assert s["ttft_ms"]["p50"] == pytest.approx(100.0)
    assert s["ttft_ms"]["p90"] == pytest.approx(260.0)
    assert s["ttft_ms"]["p99"] == pytest.approx(296.0)
    assert s["tpot_ms"]["mean"] == pytest.approx(125.0)
    assert s["tpot_ms"]["p90"] == pytest.approx(145.0)
    # ITL: gaps 100, 200, 100, each one token
    assert s["itl_ms"]["mean"] == pytest.approx(400.0 / 3)
    assert s["itl_ms"]["p50"] == pytest.approx(100.0)
    assert s["itl_ms"]["p90"] == pytest.approx(200.0)
    assert s["e2e_ms"]["mean"] == pytest.approx(850.0 / 3)
    assert s["e2e_ms"]["p50"] == pytest.approx(400.0)
    assert s["queue_ms"]["mean"] == pytest.approx(25.0)
    assert s["duration_s"] == pytest.approx(1.05)
    assert s["output_tokens_per_s"] == pytest.approx(6 / 1.05)
    assert s["input_tokens_per_s"] == pytest.approx(60 / 1.05)
    assert s["requests_per_s"] == pytest.approx(3 / 1.05)
    assert s["submit_late_ms"]["max"] == pytest.approx(10.0)
    assert s["submit_late_ms"]["mean"] == pytest.approx(2.5)


def test_summary_row_of_a_request():
    row = _req(7, 0.0, 0.02, [0.12, 0.17, 0.22], 5, 3).row()
    assert row["ttft_ms"] == pytest.approx(100.0)
    assert row["tpot_ms"] == pytest.approx(50.0)
    assert row["e2e_ms"] == pytest.approx(200.0)
    assert row["generated"] == 3 and row["error"] is None
    cut = _req(8, 0.0, 0.0, [0.1], 5, 3).row()
    assert cut["ttft_ms"] is None and cut["generated"] == 1


def _prefill_s(b, p):
    return 0.010 + 2e-6 * b * p


def _decode_s(b, kv):
    return 0.005 + 3e-4 * b + 1e-6 * b * kv


class StubModel:
    """The simulator's iteration time, replaced by the toy step times the fake server runs."""

    def seconds(self, tokens, seqs, n_decode=0, sum_kv=0.0, n_chunks=0, q_sum=0, pairs_sum=0.0, kv_read=0.0):
        if n_chunks:
            return _prefill_s(seqs, q_sum // seqs)
        return _decode_s(seqs, sum_kv / seqs)


def test_static_server_matches_the_simulators_static_scheduler(tmp_path):
    rng = np.random.default_rng(5)
    arrivals = np.cumsum(rng.exponential(0.08, size=25))
    arrivals -= arrivals[0]
    reqs = [sr.Req(i, float(a), int(rng.integers(20, 300)), int(rng.integers(1, 40)))
            for i, a in enumerate(arrivals)]
    clk = FakeClock(10.0)
    srv = sr.StaticServer(reqs, 4, lambda b, p: clk.advance(_prefill_s(b, p)),
                          lambda b, kv: clk.advance(_decode_s(b, kv)), clock=clk, sleep_until=clk.sleep_until)
    srv.run(t0=10.0)
    assert all(r.complete for r in reqs)
    assert max(b["batch"] for b in srv.batches) == 4 and min(b["batch"] for b in srv.batches) >= 1

    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(json.dumps({"arrival_s": r.arrival_s, "input_tokens": r.input_tokens,
                                         "output_tokens": r.output_tokens}) + "\n" for r in reqs))
    cfg = parse_config({"model": "meta-llama/Llama-3.1-8B", "gpu": "h100-sxm", "scheduler": "static",
                        "max_num_seqs": 4, "kv_blocks": 100000, "workload": {"trace": str(trace)}})
    sim = Simulator(cfg)
    for e in sim.engines:
        e.model = StubModel()
    rows = sim.run().per_request()
    got = {r.id: r.row() for r in reqs}
    for row in rows:
        assert got[row["id"]]["ttft_ms"] == pytest.approx(row["ttft_ms"], abs=1e-6)
        assert got[row["id"]]["e2e_ms"] == pytest.approx(row["e2e_ms"], abs=1e-6)


def test_static_server_marks_what_the_deadline_cut():
    clk = FakeClock(0.0)
    reqs = [sr.Req(i, 0.3 * i, 50, 10) for i in range(6)]
    srv = sr.StaticServer(reqs, 2, lambda b, p: clk.advance(0.05), lambda b, kv: clk.advance(0.05),
                          clock=clk, sleep_until=clk.sleep_until)
    srv.run(t0=0.0, deadline=0.7)
    assert reqs[0].complete
    assert all(r.error for r in reqs[2:])
    assert not any(r.complete for r in reqs if r.error)


def test_kv_bucket_and_default_blocks():
    assert [sr.kv_bucket(x, 128) for x in (1, 128, 129, 1000)] == [128, 128, 256, 1024]
    n = sr.default_num_blocks(1280, 32, 256)
    assert n * 256 >= 32 * 1280 * 1.5 and n >= 16


def test_parse_rates():
    assert sr.parse_rates(["2,8"], ["hf-cb", "static"]) == {"hf-cb": [2.0, 8.0], "static": [2.0, 8.0]}
    assert sr.parse_rates(["hf-cb=1,3", "static=2"], ["hf-cb", "static"]) == {"hf-cb": [1.0, 3.0], "static": [2.0]}
    with pytest.raises(ValueError):
        sr.parse_rates(["vllm=2"], ["hf-cb"])
    with pytest.raises(ValueError):
        sr.parse_rates(["0"], ["hf-cb"])


TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False}


def _smoke(tmp_path, engine, rates):
    cfg = tmp_path / "tiny" / "config.json"
    cfg.parent.mkdir()
    cfg.write_text(json.dumps(TINY))
    out = tmp_path / "out"
    rc = sr.main(["--model", str(cfg), "--engines", engine, "--rates", rates, "--requests", "10", "--device", "cpu",
                  "--dtype", "fp32", "--max-num-seqs", "4", "--max-batched-tokens", "128", "--block-size", "16",
                  "--static-batch", "3", "--warmup-requests", "4", "--kv-bucket", "32",
                  "--input-tokens", '{"dist": "uniform", "min": 4, "max": 60}',
                  "--output-tokens", '{"dist": "uniform", "min": 1, "max": 8}', "--out", str(out),
                  "--wall-limit-s", "300"])
    assert rc == 0
    index = json.loads((out / "index.json").read_text())
    runs = [r for r in index["runs"] if "dir" in r]
    assert runs and all(r["incomplete"] == 0 for r in runs)
    for r in runs:
        d = out / r["dir"]
        summary = json.loads((d / "summary.json").read_text())
        rows = [json.loads(x) for x in (d / "requests.jsonl").read_text().splitlines()]
        assert summary["completed"] == len(rows) == 10
        assert all(x["generated"] == x["output_tokens"] for x in rows)
        assert summary["ttft_ms"]["p90"] > 0 and summary["settings"]
    return out, runs


def test_static_engine_smoke_on_cpu(tmp_path):
    pytest.importorskip("torch")
    out, runs = _smoke(tmp_path, "static", "static=40")
    s = json.loads((out / runs[0]["dir"] / "summary.json").read_text())
    assert s["settings"]["decode"] == "eager" and s["static_kv_overshoot_mean"] >= 0


def test_hf_cb_engine_smoke_on_cpu(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out, runs = _smoke(tmp_path, "hf-cb", "hf-cb=40")
    s = json.loads((out / runs[0]["dir"] / "summary.json").read_text())
    assert s["settings"]["attn_implementation"] == sr.ATTN_VARLEN
    assert s["settings"]["max_requests_per_batch"] == 4 and s["settings"]["use_cuda_graph"] == [False, False]
    steps = [json.loads(x) for x in (out / runs[0]["dir"] / "steps.jsonl").read_text().splitlines()]
    assert steps and all(st["t_start"] <= st["t_prepared"] <= st["t_issued"] <= st["t_synced"] <= st["t_end"]
                         for st in steps)
    assert sum(st["q_tokens"] for st in steps) == sum(
        json.loads(x)["input_tokens"] + json.loads(x)["output_tokens"] - 1
        for x in (out / runs[0]["dir"] / "requests.jsonl").read_text().splitlines())
    warm = out / "tiny" / "hf-cb-warmup" / "steps.jsonl"
    assert warm.exists() and warm.read_text().strip()
