"""CPU smoke tests of the GPU-side harnesses (perfcast.measure): decoder numerics and model_step output."""

import json

import pytest

torch = pytest.importorskip("torch")

from perfcast.measure import model_step
from perfcast.measure.decoder import Decoder
from perfcast.models.spec import ModelSpec


@pytest.fixture(autouse=True)
def _quick(monkeypatch):
    monkeypatch.setattr(model_step, "TARGET_S", 0.02)


TINY = {"name": "tiny", "model_type": "llama", "hidden": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
        "head_dim": 16, "intermediate": 128, "vocab": 256, "max_positions": 4096}

TINY_CONFIG = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 256,
    "max_position_embeddings": 4096, "rope_theta": 500000.0, "tie_word_embeddings": False,
    "hidden_act": "silu", "rms_norm_eps": 1e-5,
}


@pytest.mark.parametrize("extra", [{}, {"attn_bias": True, "qk_norm": True, "tied_embeddings": True},
                                   {"mlp_act": "geglu", "n_kv_heads": 4}, {"mlp_act": "gelu", "n_kv_heads": 1}])
def test_decode_with_cache_matches_full_prefill(extra):
    spec = ModelSpec(**{**TINY, **extra})
    dec = Decoder(spec, device="cpu", dtype=torch.float32, seed=1)
    batch, n = 3, 11
    ids = torch.randint(0, spec.vocab, (batch, n + 1))
    dec.alloc_cache(batch, n + 1)
    full = dec.prefill(ids)  # logits of the last position over n + 1 tokens
    assert full.shape == (batch, spec.vocab)
    assert torch.isfinite(full).all()
    dec.alloc_cache(batch, n + 1)  # a fresh random cache: prefill must overwrite what decode reads
    dec.prefill(ids[:, :n])
    step = dec.decode(ids[:, n:], context=n)
    assert step.shape == (batch, spec.vocab)
    assert torch.allclose(step, full, atol=1e-4, rtol=0), (step - full).abs().max()


def test_decoder_shards_for_tensor_parallel():
    spec = ModelSpec(**{**TINY, "n_heads": 8, "n_kv_heads": 2})
    d = Decoder(spec, device="cpu", dtype=torch.float32, tp_rank=1, tp_size=4)
    assert (d.hq, d.hkv, d.inter, d.vocab_local) == (2, 1, 32, 64)  # kv heads replicated over tp 4
    assert d.layers[0].wqkv.shape == ((2 + 2 * 1) * 16, 64)
    assert d.layers[0].wo.shape == (64, 32)
    assert d.layers[0].wgu.shape == (64, 64) and d.layers[0].wdown.shape == (64, 32)
    assert float(d.layers[0].wqkv.abs().sum()) > 0  # random, never zeros
    with pytest.raises(ValueError):
        Decoder(spec, device="cpu", tp_size=3)


def test_gpu_id_rule():
    assert model_step.gpu_id("NVIDIA H100 80GB HBM3", 85 * 10**9) == "h100-sxm"
    assert model_step.gpu_id("NVIDIA H200") == "h200"
    assert model_step.gpu_id("NVIDIA A100-SXM4-80GB") == "a100-sxm4-80gb"


def _run(tmp_path, cases):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY_CONFIG))
    lines = [{"model": str(cfg), "tp": 1, **c} for c in cases]
    (tmp_path / "cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in lines))
    out = tmp_path / "out.jsonl"
    rc = model_step.main(["--cases", str(tmp_path / "cases.jsonl"), "--out", str(out), "--device", "cpu",
                          "--dtype", "fp32"])
    return rc, [json.loads(x) for x in out.read_text().splitlines()]


def test_model_step_plain_eager_on_cpu(tmp_path):
    rc, rows = _run(tmp_path, [
        {"batch": 2, "prompt": 8, "context": 16, "runtime": "eager", "impl": "plain"},
        {"batch": 1, "prompt": 4, "context": 4, "runtime": "eager", "impl": "plain", "measure": "decode",
         "layers": 1},
        {"batch": 1, "prompt": 4, "context": 4, "runtime": "cuda-graph"},  # no CUDA here: an error line
    ])
    assert rc == 1 and len(rows) == 3
    r = rows[0]
    for k in ("prefill_ms", "prefill_min_ms", "prefill_p90_ms", "prefill_reps", "decode_ms", "decode_min_ms",
              "decode_p90_ms", "decode_reps", "gpu", "gpu_id", "torch", "transformers", "cuda", "driver", "date",
              "tp", "model", "batch", "prompt", "context", "runtime"):
        assert k in r, k
    assert r["gpu_id"] == "cpu" and r["impl"] == "plain-decoder" and r["layers"] == 2
    assert 0 < r["prefill_min_ms"] <= r["prefill_ms"] <= r["prefill_p90_ms"]
    assert r["prefill_reps"] >= 5
    assert rows[1]["layers"] == 1 and "decode_ms" in rows[1] and "prefill_ms" not in rows[1]
    assert "error" in rows[2] and "CUDA" in rows[2]["error"]


def test_model_step_hf_eager_on_cpu(tmp_path):
    pytest.importorskip("transformers")
    rc, rows = _run(tmp_path, [{"batch": 2, "prompt": 8, "context": 16, "runtime": "eager"}])
    assert rc == 0, rows
    r = rows[0]
    assert r["impl"] == "hf-transformers" and r["hf_cache"] == "DynamicCache"
    assert r["prefill_ms"] > 0 and r["decode_ms"] > 0


def test_model_step_tensor_parallel_on_cpu_gloo(tmp_path, monkeypatch):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    monkeypatch.setenv("PERFCAST_MEASURE_TARGET_S", "0.01")  # the spawned ranks read it at import
    cfg = {**TINY_CONFIG, "model_type": "qwen2", "num_attention_heads": 8, "num_key_value_heads": 1}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    cases = [{"model": str(tmp_path / "c.json"), "batch": 2, "prompt": 8, "context": 8, "tp": 2, "runtime": "eager"},
             {"model": str(tmp_path / "c.json"), "batch": 1, "prompt": 8, "context": 8, "tp": 1, "runtime": "eager"}]
    (tmp_path / "cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))
    out = tmp_path / "out.jsonl"
    rc = model_step.main(["--cases", str(tmp_path / "cases.jsonl"), "--out", str(out), "--tp", "2",
                          "--device", "cpu", "--dtype", "fp32", "--pin"])
    assert rc == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["tp"] == 2 and rows[0]["impl"] == "plain-decoder"  # tp-1 case skipped
    assert rows[0]["prefill_ms"] > 0 and rows[0]["decode_ms"] > 0
    # --pin: rank 0 ran bound to its own slice of the cores, and says so
    assert rows[0]["pinned"] is True
    assert rows[0]["cpu_affinity"] == len(model_step.pin_slices(__import__("os").sched_getaffinity(0), 2,
                                                                 model_step._core_of)[0])


def test_pin_slices_whole_cores_disjoint_and_even():
    ht = lambda c: c % 8  # 16 logical CPUs, siblings c and c + 8
    s = model_step.pin_slices(range(16), 4, ht)
    assert s == [[0, 8, 1, 9], [2, 10, 3, 11], [4, 12, 5, 13], [6, 14, 7, 15]]
    s = model_step.pin_slices(range(10), 3)  # 10 cores, 3 ranks: 3 each, one left unused
    assert s == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    flat = [c for r in model_step.pin_slices(range(32), 4, ht) for c in r]
    assert len(flat) == len(set(flat))  # disjoint
    assert model_step.pin_slices([5, 7], 4) == [[5], [7], [5], [7]]  # fewer cores than ranks: shared
    with pytest.raises(ValueError):
        model_step.pin_slices([], 2)


def test_hf_decode_cache_has_context_tokens():
    pytest.importorskip("transformers")
    import pathlib
    import tempfile

    from perfcast.measure import hf_step

    with tempfile.TemporaryDirectory() as d:
        p = pathlib.Path(d) / "config.json"
        p.write_text(json.dumps(TINY_CONFIG))
        m = hf_step.build(str(p), layers=1, device="cpu", dtype=torch.float32)
        assert m.config.num_hidden_layers == 1
        prep, fn = hf_step.decode_step(m, batch=2, context=5)
        with torch.inference_mode():
            prep()
            first = fn()
            assert first.shape == (2, 1, 256)
            prep()  # a fresh cache of `context` tokens again: the same step gives the same logits
            assert torch.equal(fn(), first)
            again = fn()  # without prep the cache has grown by one token: different logits
            assert not torch.equal(again, first)


def test_collective_sizes_and_bus_bandwidth():
    from perfcast.measure import collectives as co

    s = co.sizes()
    assert s[0] == 1024 and s[-1] == 2 << 30 and s == sorted(set(s))
    assert 1536 not in s and 3072 in s  # 1.5x points between every other pair of powers
    assert all(x % 8 == 0 for x in s)  # bf16 elements divide by 4 ranks
    ms = 1.0  # 1 GB in 1 ms = 1000 GB/s algorithm bandwidth
    assert co.busbw_gbps("all_reduce", 10**9, 4, ms) == pytest.approx(1500.0)
    assert co.busbw_gbps("all_gather", 10**9, 4, ms) == pytest.approx(3000.0)  # output is 4 GB
    assert co.busbw_gbps("reduce_scatter", 10**9, 4, ms) == pytest.approx(750.0)
    assert co.busbw_gbps("send_recv", 10**9, 2, ms) == pytest.approx(1000.0)
    assert co._parse_bytes("2G") == 2 << 30 and co._parse_bytes("64MiB") == 64 << 20


# ------------------------------------------------------------------------------ pipeline parallel
def _copy_stage(full: Decoder, stage: Decoder) -> None:
    """Give a pipeline stage the full decoder's weights for its layers (and embedding / head)."""
    for i, L in zip(stage.stage, stage.layers):
        for n in L.__slots__:
            setattr(L, n, getattr(full.layers[i], n))
    if stage.first:
        stage.embed = full.embed
    if stage.last:
        stage.final_norm, stage.final_norm_b, stage.lm_head = full.final_norm, full.final_norm_b, full.lm_head


@pytest.mark.parametrize("n_layers,pp", [(4, 2), (5, 3), (4, 4)])
def test_pipeline_stages_chain_to_the_full_decoder(n_layers, pp):
    from perfcast.step.memory import stage_layers

    spec = ModelSpec(**{**TINY, "n_layers": n_layers, "tied_embeddings": True})
    full = Decoder(spec, device="cpu", dtype=torch.float32, seed=3)
    stages = [Decoder(spec, device="cpu", dtype=torch.float32, stage=r) for r in stage_layers(n_layers, pp)]
    assert stages[0].embed is not None and all(s.embed is None for s in stages[1:])
    assert stages[-1].lm_head is not None and all(s.lm_head is None for s in stages[:-1])
    assert sum(len(s.layers) for s in stages) == n_layers
    for s in stages:
        _copy_stage(full, s)
    batch, n = 4, 9
    ids = torch.randint(0, spec.vocab, (batch, n + 1))
    full.alloc_cache(batch, n + 1)
    want_prefill = full.prefill(ids[:, :n])
    want_decode = full.decode(ids[:, n:], context=n)
    for s in stages:
        s.alloc_cache(batch, n + 1)
    pos = torch.arange(n)
    # two micro-batches of two sequences, each in its own rows of every stage's cache
    for rows in (slice(0, 2), slice(2, 4)):
        x = ids[rows, :n]
        for s in stages:
            x = s.forward_stage(x, pos, None, rows)
        assert torch.allclose(x, want_prefill[rows], atol=1e-5)
        x = ids[rows, n:]
        for s in stages:
            x = s.forward_stage(x, torch.tensor([n]), n + 1, rows)
        assert torch.allclose(x, want_decode[rows], atol=1e-5)
    assert stages[0].cache_bytes(batch, n + 1) * n_layers == full.cache_bytes(batch, n + 1) * len(stages[0].layers)


def _gloo_run(tmp_path, monkeypatch):
    """(tiny 4-layer config path, writer of a cases file): gloo ranks on the CPU, quick measurements."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    monkeypatch.setenv("PERFCAST_MEASURE_TARGET_S", "0.01")  # the spawned ranks read it at import
    (tmp_path / "c.json").write_text(json.dumps({**TINY_CONFIG, "num_hidden_layers": 4}))

    def write(cases):
        (tmp_path / "cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))
        return str(tmp_path / "cases.jsonl")

    return str(tmp_path / "c.json"), write


def test_model_step_pipeline_parallel_on_cpu_gloo(tmp_path, monkeypatch):
    m, write = _gloo_run(tmp_path, monkeypatch)
    cases = [{"model": m, "batch": 4, "prompt": 8, "context": 12, "pp": 2, "microbatches": 2, "runtime": "eager"},
             {"model": m, "batch": 2, "prompt": 8, "context": 8, "pp": 2, "runtime": "eager", "measure": "decode",
              "layers": 3},
             {"model": m, "batch": 4, "prompt": 8, "context": 8, "pp": 2, "microbatches": 3, "runtime": "eager"},
             {"model": m, "batch": 1, "prompt": 8, "context": 8, "runtime": "eager"},  # pp 1: not this run
             {"model": m, "batch": 2, "prompt": 8, "context": 8, "pp": 4, "runtime": "eager"}]  # pp 4: neither
    out = tmp_path / "out.jsonl"
    rc = model_step.main(["--cases", write(cases), "--out", str(out), "--pp", "2",
                          "--device", "cpu", "--dtype", "fp32"])
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rc == 1 and [r["case"] for r in rows] == [0, 1, 2]  # one error line (case 2)
    r = rows[0]
    assert (r["pp"], r["tp"], r["microbatches"], r["impl"]) == (2, 1, 2, "plain-decoder-pp")
    assert r["stages"] == [[0, 2], [2, 4]] and r["pp_schedule"].startswith("gpipe-forward")
    for ph in ("prefill", "decode"):
        assert 0 < r[f"{ph}_min_ms"] <= r[f"{ph}_ms"] <= r[f"{ph}_p90_ms"] and r[f"{ph}_reps"] >= 5
        assert len(r[f"{ph}_stage_ms"]) == 2 and all(x > 0 for x in r[f"{ph}_stage_ms"])
    assert rows[1]["stages"] == [[0, 2], [2, 3]] and "decode_ms" in rows[1] and "prefill_ms" not in rows[1]
    assert "does not divide" in rows[2]["error"] or "must divide" in rows[2]["error"]
    with pytest.raises(SystemExit):  # sizes must be positive
        model_step.main(["--cases", str(tmp_path / "cases.jsonl"), "--out", str(out), "--pp", "0",
                         "--device", "cpu"])


def test_model_step_tensor_and_pipeline_parallel_on_cpu_gloo(tmp_path, monkeypatch):
    """tp 2 x pp 2 = 4 gloo ranks: stage s on ranks [2s, 2s+2), each stage a TP-2 decoder on its own group."""
    m, write = _gloo_run(tmp_path, monkeypatch)
    base = {"model": m, "prompt": 8, "context": 12, "runtime": "eager"}
    cases = [{**base, "batch": 4, "tp": 2, "pp": 2, "microbatches": 2},
             {**base, "batch": 2, "tp": 2, "pp": 2, "measure": "decode", "layers": 3},
             {**base, "batch": 2, "pp": 2},  # tp 1: not this run
             {**base, "batch": 2, "tp": 2}]  # pp 1: not this run
    out = tmp_path / "out.jsonl"
    rc = model_step.main(["--cases", write(cases), "--out", str(out), "--tp", "2", "--pp", "2",
                          "--device", "cpu", "--dtype", "fp32", "--no-compare"])
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rc == 0 and [r["case"] for r in rows] == [0, 1], rows
    r = rows[0]
    assert (r["tp"], r["pp"], r["microbatches"], r["impl"]) == (2, 2, 2, "plain-decoder-pp")
    assert r["stages"] == [[0, 2], [2, 4]] and r["stage_ms_over_tp"] == "max"
    for ph in ("prefill", "decode"):
        assert 0 < r[f"{ph}_min_ms"] <= r[f"{ph}_ms"] <= r[f"{ph}_p90_ms"] and r[f"{ph}_reps"] >= 5
        assert len(r[f"{ph}_stage_ms"]) == 2 and all(x > 0 for x in r[f"{ph}_stage_ms"])
    assert rows[1]["stages"] == [[0, 2], [2, 3]] and "decode_ms" in rows[1] and "prefill_ms" not in rows[1]


def test_compare_predicts_pipeline_lines_with_their_microbatches():
    from perfcast import pipeline
    from perfcast.measure.compare import compare_lines, format_rows

    line = {"model": "meta-llama/Llama-3.1-8B", "gpu_id": "h100-sxm", "batch": 8, "prompt": 1024, "context": 1024,
            "tp": 1, "pp": 2, "microbatches": 2, "runtime": "eager", "impl": "plain-decoder-pp",
            "decode_ms": 10.0, "decode_stage_ms": [3.0, 3.5], "prefill_ms": 100.0}
    rows = compare_lines([line])
    assert [r["phase"] for r in rows] == ["prefill", "decode"]
    want = pipeline("meta-llama/Llama-3.1-8B", "h100-sxm", 8, 1024, 1024, pp=2, microbatches=2, phase="decode",
                    runtime="eager").total_ms
    assert rows[1]["predicted_ms"] == pytest.approx(want) and rows[1]["pp"] == 2
    assert "pp2xM2" in format_rows(rows)


def test_gemm_table_writes_rows_and_skips_failing_shapes(tmp_path, capsys):
    """The one loop behind the extras' FP8, bf16 and INT4 tables: a shape whose inputs cannot be built
    is skipped with a line on stderr; the others are timed and written in the CSV's columns."""
    torch = pytest.importorskip("torch")
    from perfcast.measure.extras import CSV_HEAD, gemm_table
    from perfcast.measure.timing import CpuTimer

    def build(m, n, k):
        if n == 3:
            raise RuntimeError("no kernel for this shape\nsecond line")
        x, w = torch.ones(m, k), torch.ones(n, k)
        return lambda: x @ w.t()

    path = tmp_path / "g.csv"
    rows = gemm_table(torch, CpuTimer(), path, [(2, 4, 8), (1, 3, 8), (4, 2, 2)], "w4a16", build, label="int4")
    lines = path.read_text().splitlines()
    assert rows == 2 and lines[0] + "\n" == CSV_HEAD and len(lines) == 3
    assert [ln.split(",")[:4] for ln in lines[1:]] == [["w4a16", "2", "4", "8"], ["w4a16", "4", "2", "2"]]
    assert all(float(ln.split(",")[4]) > 0 for ln in lines[1:])
    assert "int4 skip 1x3x8: no kernel for this shape" in capsys.readouterr().err


def test_tp_host_noise_reads_the_shipped_ab_run():
    """The shipped tppin run (h200x4-run7): 16 phases, each with its four medians, as measured."""
    from benchmod import load_bench

    mod = load_bench("bench_tp_host_noise")
    rows = mod.medians(mod.DEFAULT)
    full = {k: v for k, v in rows.items() if all(t in v for t in mod.TAGS)}
    assert len(full) == 16
    v = full[(2, "Llama-3.1-8B", "decode", 2048, "decode")]
    assert v == {"free_r1": pytest.approx(27.02, abs=0.01), "pin_r1": pytest.approx(28.94, abs=0.01),
                 "pin_r2": pytest.approx(15.24, abs=0.01), "free_r2": pytest.approx(26.56, abs=0.01)}
    assert mod.main([str(mod.DEFAULT)]) == 0


def test_fp8_decoder_runs_e4m3_linears_and_keeps_the_rest():
    """fp8=True: the four linears of a layer hold e4m3 weights and run _scaled_mm on their cast input; the
    embedding, norms, KV cache and LM head stay bf16; the weight bytes follow (hand count)."""
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("torch without float8")
    spec = ModelSpec(**{**TINY, "attn_bias": True})
    d = Decoder(spec, device="cpu", dtype=torch.bfloat16, fp8=True)
    L = d.layers[0]
    assert {L.wqkv.dtype, L.wo.dtype, L.wgu.dtype, L.wdown.dtype} == {torch.float8_e4m3fn}
    assert L.bqkv.dtype == d.lm_head.dtype == d.embed.dtype == torch.bfloat16
    # per layer: qkv 128x64 (+128 bias, bf16), o 64x64, gate/up 256x64, down 64x128 in e4m3; 2 norms of 64 bf16
    per_layer = (128 * 64 + 64 * 64 + 256 * 64 + 64 * 128) * 1 + (128 + 2 * 64) * 2
    assert d.weight_bytes() == 2 * per_layer + (2 * 256 * 64 + 64) * 2
    d.alloc_cache(2, 32)
    ids = torch.randint(0, 256, (2, 8))
    out = d.prefill(ids)
    step = d.forward(torch.randint(0, 256, (2, 1)), torch.tensor([8]), 9)
    assert out.shape == step.shape == (2, 256) and out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all() and torch.isfinite(step.float()).all()
    with pytest.raises(ValueError, match="bf16 or fp16"):
        Decoder(spec, device="cpu", dtype=torch.float32, fp8=True)


def test_extras_parts_and_fp8_case_draws():
    """extras refuses an unknown part by name; the sustained FP8 sample is a fixed fifth of the dense grid;
    held-out draws of other seeds stay off both grids and apart from set 12; gemm_stack shapes are the
    step builder's layer GEMMs."""
    from perfcast.measure import extras

    with pytest.raises(SystemExit, match=r"unknown part.*bogus"):
        extras.main(["--out", "/tmp/perfcast-extras-test", "--parts", "fp8held,bogus"])
    dense = extras.fp8_dense_cases()
    sus = extras.fp8_sustain_cases()
    assert len(sus) == round(0.2 * len(dense)) == 288 and set(sus) <= set(dense) and sus == extras.fp8_sustain_cases()
    grid = set(extras.FP8_M) | set(extras.FP8_M_DENSE)
    s12, s13 = extras.fp8_heldout11(seed=12), extras.fp8_heldout11(seed=13)
    assert len(s13) == 150 and not any(m in grid for m, _, _ in s13) and set(s12) != set(s13)
    assert extras.gemm_stack_shapes("meta-llama/Llama-3.1-8B", 1) == [
        ("qkv_proj", 6144, 4096), ("o_proj", 4096, 4096), ("gate_up_proj", 28672, 4096), ("down_proj", 4096, 14336)]
