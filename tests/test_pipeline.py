"""Pipeline parallelism (perfcast.step.pipeline): the GPipe schedule against hand-computed numbers,
invariants against predict(), stage splitting, and input errors."""

import itertools
import json

import numpy as np
import pytest

import perfcast
from perfcast.models import get_model
from perfcast.step import memory as mem
from perfcast.step.pipeline import gpipe_closed_form, microbatch_size, schedule, stage_ops
from perfcast.step.predict import InputError, _phase, make_config, predict, sweep

L8 = "meta-llama/Llama-3.1-8B"
GPU = "h100-sxm"


# ------------------------------------------------------------------------------ the schedule, by hand
@pytest.mark.unit
def test_schedule_equal_stages_free_transfers_is_gpipe():
    # 4 stages of 1 ms, no transfers: latency 4, M micro-batches take M + 3, bubble (pp-1)/(M+pp-1)
    for m in (1, 2, 4, 8):
        lat, tot = schedule([1.0] * 4, [0.0] * 3, m)
        assert float(lat) == pytest.approx(4.0)
        assert float(tot) == pytest.approx(m + 3.0)
        bubble = 1 - m * 4 * 1.0 / (4 * float(tot))
        assert bubble == pytest.approx(3 / (m + 3))


@pytest.mark.unit
def test_schedule_with_transfers_counts_receive_and_send_in_a_stage_cycle():
    # c = 1, 1, 1 ms; p = 5, 5 ms. latency = 3 + 10 = 13; the middle stage is busy 5 + 1 + 5 = 11 per
    # micro-batch (it must receive, compute and send), so each further micro-batch adds 11
    lat, tot = schedule([1.0, 1.0, 1.0], [5.0, 5.0], 2)
    assert (float(lat), float(tot)) == pytest.approx((13.0, 24.0))
    assert float(schedule([1.0, 1.0, 1.0], [5.0, 5.0], 5)[1]) == pytest.approx(13 + 4 * 11)
    # unequal stages: the slowest stage's cycle sets the pace (pp 2: 1 + 10 + 0.5 ... )
    lat, tot = schedule([1.0, 10.0], [0.5], 3)
    assert float(lat) == pytest.approx(11.5)
    assert float(tot) == pytest.approx(11.5 + 2 * 10.5)  # stage 1: receive 0.5 + compute 10


@pytest.mark.unit
def test_schedule_equals_the_closed_form_without_host_limits():
    rng = np.random.default_rng(0)
    for pp, m in itertools.product((1, 2, 3, 4, 6), (1, 2, 3, 4, 7)):
        for _ in range(5):
            c = list(rng.uniform(0.1, 3.0, pp))
            p = list(rng.uniform(0.0, 1.0, pp - 1))
            lat, tot = schedule(c, p, m)
            lat2, tot2 = gpipe_closed_form(c, p, m)
            assert float(lat) == pytest.approx(float(lat2), rel=1e-12)
            assert float(tot) == pytest.approx(float(tot2), rel=1e-12), (c, p, m)


@pytest.mark.unit
def test_schedule_host_limits_by_hand():
    # two eager stages: alone each takes 3 ms (host 2.5 ms to issue, GPU 2 ms); no transfer time.
    # m0: stage 0 ends at 3; stage 1's host issued its ops meanwhile, so it ends at 3 + 2 = 5.
    # m1: stage 0's host needs until 2.5 + 3 = 5.5; stage 1 then ends at 5.5 + 2 = 7.5
    lat, tot = schedule([3.0, 3.0], [0.0], 2, gpu_s=[2.0, 2.0], host_s=[2.5, 2.5])
    assert (float(lat), float(tot)) == pytest.approx((5.0, 7.5))


@pytest.mark.unit
def test_schedule_is_vectorized_and_extrapolates_long_runs():
    lat, tot = schedule([np.array([1.0, 2.0]), np.array([1.0, 1.0])], [np.array([0.0, 0.5])], 3)
    assert np.allclose(lat, [2.0, 3.5]) and np.allclose(tot, [4.0, 3.5 + 2 * 2.5])
    _, long = schedule([1.0, 2.0, 1.0], [0.1, 0.1], 2000)  # beyond the simulated micro-batches
    assert float(long) == pytest.approx(float(gpipe_closed_form([1.0, 2.0, 1.0], [0.1, 0.1], 2000)[1]))


# ------------------------------------------------------------------------------ stages
@pytest.mark.unit
def test_layers_split_as_vllm_does():
    split = lambda n, pp: [len(r) for r in mem.stage_layers(n, pp)]
    assert split(32, 4) == [8, 8, 8, 8]
    assert split(80, 3) == [27, 27, 26]
    assert split(22, 4) == [5, 6, 6, 5]  # the remainder skips the last stage (it has the LM head)
    assert split(5, 3) == [2, 2, 1] and split(4, 3) == [1, 2, 1]
    r = mem.stage_layers(61, 4)
    assert r[0].start == 0 and r[-1].stop == 61 and all(a.stop == b.start for a, b in itertools.pairwise(r))


def test_stage_ops_hold_embedding_first_and_head_last():
    cfg = make_config(L8, GPU, pp=4)
    names = [{o.name for o in stage_ops(cfg, "decode", 4, 512, 512, r)} for r in mem.stage_layers(32, 4)]
    assert "embedding" in names[0] and not any("embedding" in n for n in names[1:])
    assert {"final_norm", "lm_head"} <= names[3] and not any("lm_head" in n for n in names[:3])
    assert "pp_send" not in set().union(*names)


@pytest.mark.parametrize("model,pp", [(L8, 4), ("deepseek-ai/DeepSeek-V2-Lite", 3), ("google/gemma-2-9b", 4),
                                      ("Qwen/Qwen1.5-MoE-A2.7B", 5), ("meta-llama/Llama-3.1-70B", 3)])
def test_stage_ops_add_up_to_the_whole_model(model, pp):
    spec = get_model(model)
    cfg = make_config(model, GPU, pp=pp)
    whole = {}
    for o in stage_ops(cfg, "decode", 8, 1024, 1024, range(spec.n_layers)):
        whole[o.name] = whole.get(o.name, 0) + o.count
    parts = {}
    for r in mem.stage_layers(spec.n_layers, pp):
        for o in stage_ops(cfg, "decode", 8, 1024, 1024, r):
            parts[o.name] = parts.get(o.name, 0) + o.count
    assert parts == whole


def test_stage_sums_and_sends_give_the_latency():
    for runtime in ("cuda-graph", "eager"):
        one = make_config(L8, GPU, runtime=runtime)
        for phase in ("prefill", "decode"):
            pr = perfcast.pipeline(L8, GPU, 8, 1024, 1024, pp=4, microbatches=1, phase=phase, runtime=runtime)
            gpu_stages = sum(s["gpu_ms"] for s in pr.stages)
            # the stages' kernels are the one-GPU step's kernels, with HF's layout swapped for the plain
            # decoder's under eager (pipeline stages are plain-decoder processes)
            if runtime == "cuda-graph":
                _, _, rt, _ = _phase(one, phase, 8, 1024, 1024)
                assert gpu_stages == pytest.approx(float(rt.gpu_seconds) * 1e3, rel=1e-9)
                launch = pr.stages[0]["host_ms"]
                sends = sum(s["send_ms"] for s in pr.stages)
                assert pr.latency_ms == pytest.approx(launch + gpu_stages + sends, rel=1e-9)
            assert len(pr.stages) == 4 and pr.stages[-1]["send_ms"] == 0.0
            assert all(s["send_ms"] > 0 for s in pr.stages[:-1])
            assert pr.send_bytes == 8 * (1024 if phase == "prefill" else 1) * 4096 * 2


# ------------------------------------------------------------------------------ invariants
@pytest.mark.parametrize("runtime", ["cuda-graph", "eager"])
def test_one_microbatch_is_predict(runtime):
    for pp in (1, 2, 4):
        p = predict(L8, GPU, 16, 2048, 2048, pp=pp, runtime=runtime)
        for phase in ("prefill", "decode"):
            pr = perfcast.pipeline(L8, GPU, 16, 2048, 2048, pp=pp, microbatches=1, phase=phase, runtime=runtime)
            assert pr.latency_ms == pytest.approx(getattr(p, f"{phase}_ms"), rel=1e-12)
            assert pr.total_ms == pytest.approx(pr.latency_ms, rel=1e-12)


def test_predict_pp_keeps_its_cuda_graph_meaning():
    # one micro-batch through the stages: every layer's kernels, one graph launch (the later stages'
    # launches hide behind the earlier stages), pp - 1 sends; the sends run outside the graphs, so they
    # are not discounted as in-graph kernels are (the breakdown row still shows the discounted figure)
    # (the breakdown rows show each op's own kernel time; the in-graph gaps after them are apart)
    from perfcast.step.predict import _graph_gaps, _phase, make_config

    p = predict(L8, GPU, 8, 1024, 1024, pp=4, breakdown=True)
    cfg = make_config(L8, GPU, 1, 4, "bf16", "cuda-graph", "auto")
    for phase in ("prefill", "decode"):
        rows = [r for r in p.breakdown if r["phase"] == phase]
        assert any(r["name"] == "pp_send" and r["count"] == 3 for r in rows)
        pr = perfcast.pipeline(L8, GPU, 8, 1024, 1024, pp=4, phase=phase)
        launch = pr.stages[0]["host_ms"]
        ops, _, _, prof = _phase(cfg, phase, 8, 1024, 1024)
        gaps = sum(g * o.count for g, o in zip(_graph_gaps(cfg, prof, ops), ops) if o.name != "pp_send") * 1e3
        assert gaps > 0
        kernels = sum(r["ms"] for r in rows if r["name"] != "pp_send") + gaps
        sends = sum(s["send_ms"] for s in pr.stages)
        assert getattr(p, f"{phase}_ms") == pytest.approx(kernels + launch + sends, rel=1e-9)
        send_row = next(r for r in rows if r["name"] == "pp_send")
        assert 0 <= sends - send_row["ms"] < 3 * 3e-3  # at most the in-graph discount (~2.7 us) per send


def test_pp1_runs_microbatches_back_to_back():
    one = perfcast.pipeline(L8, GPU, 2, 512, 512, pp=1, microbatches=1, phase="decode")
    two = perfcast.pipeline(L8, GPU, 4, 512, 512, pp=1, microbatches=2, phase="decode")
    launch = one.stages[0]["host_ms"]
    assert two.total_ms == pytest.approx(launch + 2 * (one.latency_ms - launch), rel=1e-9)
    assert predict(L8, GPU, 2, 512, 512).decode_ms == pytest.approx(one.latency_ms, rel=1e-12)


@pytest.mark.parametrize("phase", ["prefill", "decode"])
@pytest.mark.parametrize("runtime", ["cuda-graph", "eager"])
def test_more_microbatches_of_one_size_never_lower_throughput(phase, runtime):
    prev_tp, prev_bubble = 0.0, 1.0
    for m in (1, 2, 4, 8, 16):
        pr = perfcast.pipeline(L8, GPU, 2 * m, 512, 1024, pp=4, microbatches=m, phase=phase, runtime=runtime)
        assert pr.microbatch_size == 2
        assert pr.tokens_per_s >= prev_tp * (1 - 1e-12)
        assert pr.bubble_fraction <= prev_bubble + 1e-12
        assert 0.0 <= pr.bubble_fraction < 1.0
        prev_tp, prev_bubble = pr.tokens_per_s, pr.bubble_fraction


def test_splitting_a_fixed_batch_helps_prefill_but_not_weight_bound_decode():
    kw = {"batch": 16, "prompt": 1024, "context": 1024, "pp": 4}
    pre = [perfcast.pipeline(L8, GPU, microbatches=m, phase="prefill", **kw).total_ms for m in (1, 4)]
    dec = [perfcast.pipeline(L8, GPU, microbatches=m, phase="decode", **kw).total_ms for m in (1, 4)]
    assert pre[1] < pre[0]  # compute-bound: each micro-batch's stage time shrinks ~M-fold, the bubble too
    assert dec[1] > dec[0]  # weight-bound: every micro-batch reads each stage's weights again


def test_total_is_latency_plus_periods_under_cuda_graph():
    pr = perfcast.pipeline("Qwen/Qwen2.5-14B", GPU, 32, 2048, 2048, pp=4, microbatches=4, phase="decode")
    period = max(s["cycle_ms"] for s in pr.stages)
    assert pr.total_ms == pytest.approx(pr.latency_ms + 3 * period, rel=1e-6)
    assert pr.bottleneck_stage == int(np.argmax([s["cycle_ms"] for s in pr.stages]))
    assert pr.tokens_per_s == pytest.approx(32 / (pr.total_ms * 1e-3))


def test_memory_and_fit_are_the_most_loaded_stage():
    pr = perfcast.pipeline("meta-llama/Llama-3.1-70B", GPU, 8, 2048, 2048, pp=4, microbatches=2)
    p = predict("meta-llama/Llama-3.1-70B", GPU, 8, 2048, 2048, pp=4)
    assert pr.total_gib == pytest.approx(p.total_gib) and pr.fits == p.fits
    assert not perfcast.pipeline("meta-llama/Llama-3.1-70B", GPU, 1, 512, 512, pp=1).fits


def test_sweep_with_pp_matches_predict():
    b = np.array([[1], [8], [32]])
    c = np.array([512, 4096])
    for runtime in ("cuda-graph", "eager"):
        s = sweep(L8, GPU, batch=b, prompt=c, context=c, pp=2, runtime=runtime)
        for i, bb in enumerate(b.ravel()):
            for j, cc in enumerate(c):
                p = predict(L8, GPU, int(bb), int(cc), int(cc), pp=2, runtime=runtime)
                assert s["decode_ms"][i, j] == pytest.approx(p.decode_ms, rel=1e-9)
                assert s["prefill_ms"][i, j] == pytest.approx(p.prefill_ms, rel=1e-9)


def test_to_dict_is_json_and_public_names():
    pr = perfcast.pipeline(L8, GPU, 4, 512, 512, pp=2, microbatches=2, phase="prefill")
    d = json.loads(json.dumps(pr.to_dict()))
    for k in ("latency_ms", "total_ms", "tokens_per_s", "bubble_fraction", "stages", "send_bytes", "microbatches"):
        assert k in d
    assert d["stages"][0]["layers"] == [0, 16] and d["stages"][1]["layers"] == [16, 32]
    assert "pipeline" in perfcast.__all__ and "PipelinePrediction" in perfcast.__all__
    from perfcast import api

    assert api.pipeline is perfcast.pipeline


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("kw,msg", [
    ({"pp": 33}, "exceeds the 32 layers"),
    ({"microbatches": 16}, "exceeds batch=8"),
    ({"microbatches": 3}, "does not divide batch=8"),
    ({"microbatches": 0}, "positive integer"),
    ({"microbatches": True}, "positive integer"),
    ({"microbatches": 2.0}, "positive integer"),
    ({"phase": "both"}, "phase must be"),
    ({"prompt": 10**6}, "max_position_embeddings"),
])
def test_bad_input_says_what_is_valid(kw, msg):
    args = {"batch": 8, "prompt": 512, "context": 512, "pp": 2, "microbatches": 2, **kw}
    with pytest.raises(InputError, match=msg):
        perfcast.pipeline(L8, GPU, **args)


def test_microbatch_size_lists_valid_divisors():
    assert microbatch_size(12, 4) == 3
    with pytest.raises(InputError, match="valid: 1, 2, 3, 4, 6, 12"):
        microbatch_size(12, 5)


# ------------------------------------------------------------------------------ the benchmark script
def _bench_pp():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_pp.py"
    spec = importlib.util.spec_from_file_location("bench_pp", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_pp_without_measurements(tmp_path, capsys):
    assert _bench_pp().main(["--data", str(tmp_path)]) == 0
    assert "no PP measurements yet" in capsys.readouterr().out


def test_bench_pp_compares_and_splits_the_error(tmp_path, capsys):
    bench = _bench_pp()
    pr = perfcast.pipeline(L8, GPU, 8, 1024, 1024, pp=2, microbatches=2, phase="decode")
    stage = [max(s["gpu_ms"], s["host_ms"]) for s in pr.stages]
    line = {"model": L8, "gpu_id": GPU, "gpu": "NVIDIA H100 80GB HBM3", "batch": 8, "prompt": 1024,
            "context": 1024, "tp": 1, "pp": 2, "microbatches": 2, "runtime": "cuda-graph",
            "decode_ms": pr.total_ms * 1.1, "decode_stage_ms": stage}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "step_pp2.jsonl").write_text(json.dumps(line) + "\n" + json.dumps({**line, "error": "oom"}) + "\n")
    out = tmp_path / "o.json"
    assert bench.main(["--data", str(tmp_path), "--json", str(out), "--cases"]) == 0
    res = json.loads(out.read_text())
    (row,) = res["cases"]
    assert row["err_pct"] == pytest.approx(100 / 1.1 - 100)
    assert all(abs(e) < 1e-9 for e in row["stage_err_pct"])  # the stages were given as predicted
    assert row["schedule_ms"] == pytest.approx(pr.total_ms, abs=0.05)  # the model's composition (less a graph launch)
    assert res["summary"]["h100-sxm:decode:all"]["n"] == 1
    assert "pp2 cuda-graph" in capsys.readouterr().out


def test_pp_device_cases_fit_the_time_budget():
    bench = _bench_pp()
    est = bench.estimate(bench.CASES, "h100-sxm")
    assert set(est) == {(1, 2), (1, 4)}  # parts (tp, pp)
    assert sum(e["seconds"] for e in est.values()) < 180  # pp2 + pp4 on 4 H100s: about 3 minutes at most
    lines = [json.loads(x) for x in bench.CASES.read_text().splitlines() if x.strip()]
    models = {d["model"] for d in lines}
    assert {"meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-14B", "meta-llama/Llama-3.1-70B"} <= models
    assert {d.get("microbatches", 1) for d in lines} == {1, 2, 4}
    for d in lines:  # every case is valid and fits one GPU per stage (80 GB)
        assert d["batch"] % d.get("microbatches", 1) == 0
        p = predict(d["model"], GPU, d["batch"], d["prompt"], d["context"], pp=d["pp"]) if not d.get("layers") else None
        if p is not None and d.get("measure") == "decode":
            assert p.weights_gib + p.kv_cache_gib + 1.5 < 79.0, d


def test_tppp_device_cases_fit_the_time_budget():
    bench = _bench_pp()
    path = bench.CASES.parent / "cases_tppp.jsonl"
    est = bench.estimate(path, "h100-sxm")
    assert set(est) == {(2, 2)} and est[(2, 2)]["seconds"] < 150  # the tppp part on 4 H100s
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    assert [d.get("tag") for d in lines[:2]] == ["smoke", "smoke"] and all(d.get("layers") == 4 for d in lines[:2])
    models = {d["model"] for d in lines}
    assert {"meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-14B", "meta-llama/Llama-3.1-70B"} <= models
    for d in lines:  # every case is valid and fits one GPU per (stage, TP rank) (80 GB)
        assert (d["tp"], d["pp"]) == (2, 2) and d["batch"] % d.get("microbatches", 1) == 0
        if not d.get("layers"):
            p = predict(d["model"], GPU, d["batch"], d["prompt"], d["context"], tp=2, pp=2)
            assert p.weights_gib + p.kv_cache_gib + 1.5 < 79.0, d


def test_bench_pp_predicts_tppp_lines_at_their_tp(tmp_path):
    bench = _bench_pp()
    pr = perfcast.pipeline(L8, GPU, 16, 2048, 2048, tp=2, pp=2, microbatches=2, phase="decode")
    line = {"model": L8, "gpu_id": GPU, "gpu": "NVIDIA H100 80GB HBM3", "batch": 16, "prompt": 2048,
            "context": 2048, "tp": 2, "pp": 2, "microbatches": 2, "runtime": "cuda-graph",
            "decode_ms": pr.total_ms, "decode_stage_ms": [1.0, 1.0], "stage_ms_over_tp": "max"}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "step_tppp.jsonl").write_text(json.dumps(line) + "\n")
    (row,) = bench.compare(bench.measured_lines(tmp_path))
    assert (row["tp"], row["pp"]) == (2, 2) and row["predicted_ms"] == pytest.approx(pr.total_ms)
    assert "h100-sxm:decode:tp2xpp2 cuda-graph" in bench.summarize([row])


@pytest.mark.parametrize("runtime", ["cuda-graph", "eager"])
def test_latency_from_whole_model_ops_matches_the_stage_build(runtime):
    # the serving model splits the whole model's ops over the stages; for uniform layers it is exact
    from perfcast.profiles.registry import resolve_profile
    from perfcast.step.costs import step_costs
    from perfcast.step.pipeline import latency_from_ops
    from perfcast.step.predict import host_key, step_ops

    for pp in (2, 3, 4):
        cfg = make_config(L8, GPU, tp=2, pp=pp, runtime=runtime)
        prof = resolve_profile(cfg.gpu, "auto")
        for phase in ("prefill", "decode"):
            ops = step_ops(cfg, phase, np.array([1, 16]), np.array([512, 2048]), np.array([512, 2048]))
            costs = step_costs(ops, cfg.gpu, prof)  # the power state of the layers: a stage's too
            got = latency_from_ops(cfg, ops, costs, prof.host(host_key(cfg)), prof.eff)
            want = [getattr(predict(L8, GPU, b, c, c, tp=2, pp=pp, runtime=runtime), f"{phase}_ms")
                    for b, c in ((1, 512), (16, 2048))]
            assert np.allclose(got * 1e3, want, rtol=1e-9)


def test_batch_lines_with_pp_equal_predict():
    """The batch path costs groups in one pass; a pp > 1 line must still take the pipeline's latency."""
    import json as _json

    from perfcast.batch import predict_lines

    cases = [{"model": L8, "gpu": GPU, "batch": b, "prompt": p, "context": p, "pp": pp, "runtime": rt}
             for b, p, pp, rt in ((16, 2048, 2, "cuda-graph"), (4, 512, 4, "cuda-graph"), (8, 1024, 2, "eager"),
                                  (1, 128, 4, "eager"))]
    out, _ = predict_lines([_json.dumps(c) for c in cases])
    for c, o in zip(cases, out):
        p = predict(**c)
        assert o["prefill_ms"] == p.prefill_ms and o["decode_ms"] == p.decode_ms, c


def test_pipeline_predictions_carry_the_measured_pp_error():
    import json as _json
    from importlib import resources

    table = _json.loads((resources.files("perfcast.profiles") / "data" / "accuracy.json").read_text())["own"]
    p = predict(L8, "h200", 8, 1024, 1024, pp=2)  # cuda-graph: decode measured, prefill (ran eager) not
    assert p.decode_err_p90_pct == table["decode:cuda-graph:pp>1"]["p90_pct"] and p.prefill_err_p90_pct is None
    assert "pipeline" in p.accuracy_basis
    e = predict(L8, "h200", 8, 1024, 1024, pp=2, runtime="eager")
    assert e.prefill_err_p90_pct == table["prefill:eager:pp>1"]["p90_pct"]
    # TP and PP together: measured on 4xH200 (cuda-graph decode, eager prefill); a GPU nobody measured: no figure
    tp = predict(L8, "h200", 8, 1024, 1024, pp=2, tp=2)
    assert tp.decode_err_p90_pct == table["decode:cuda-graph:tp>1,pp>1"]["p90_pct"] and "TP x PP" in tp.accuracy_basis
    assert tp.prefill_err_p90_pct is None  # prefill was measured eager only
    assert predict(L8, "h200", 8, 1024, 1024, pp=2, tp=2, runtime="eager").prefill_err_p90_pct == \
        table["prefill:eager:tp>1,pp>1"]["p90_pct"]
    assert predict(L8, "a100-80gb", 8, 1024, 1024, pp=2).decode_err_p90_pct is None
