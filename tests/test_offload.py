"""Offload plans: memory adds up, limits match the core model, hand-computed bounds, search, errors."""

import json
import math

import pytest

from perfcast.offload.plans import predict_offload
from perfcast.offload.search import search
from perfcast.step.predict import predict

GIB = float(1 << 30)
L8B = "meta-llama/Llama-3.1-8B"
KW = {"batch": 1, "prompt": 512, "context": 1024}
PLANS = [{"plan": "layers", "gpu_layers": 0}, {"plan": "layers", "gpu_layers": 13}, {"plan": "ffn_cpu"},
         {"plan": "cpu"}, {"plan": "stream"}, {"plan": "stream", "gpu_layers": 7},
         {"plan": "neurons", "hot_fraction": 0.3, "sparsity": 0.9}, {"plan": "neurons", "hot_fraction": 0.5,
                                                                      "sparsity": 0.0}]


def _total_weight_gib(model: str) -> float:
    from perfcast.models import get_model

    return get_model(model).total_params() * 2 / GIB


@pytest.mark.unit
@pytest.mark.parametrize("off", PLANS, ids=lambda o: json.dumps(o))
def test_weights_on_gpu_plus_cpu_is_the_model(off):
    r = predict_offload(L8B, "h100-pcie", "xeon-8480", off, **KW)
    o = r["offload"]
    assert r["weights_gib"] == pytest.approx(o["gpu_weights_gib"])
    assert o["gpu_weights_gib"] + o["cpu_weights_gib"] == pytest.approx(_total_weight_gib(L8B), rel=1e-9)
    assert r["total_gib"] >= r["weights_gib"] + r["kv_cache_gib"]
    assert r["prefill_ms"] > 0 and r["decode_ms"] > 0


@pytest.mark.unit
@pytest.mark.parametrize("n", [0, 5, 27])
def test_experts_on_cpu_memory_adds_up(n):
    m = "mistralai/Mixtral-8x7B-v0.1"
    r = predict_offload(m, "h100-pcie", "epyc-9654", {"plan": "experts_cpu", "n_cpu_moe": n}, **KW)
    o = r["offload"]
    assert o["gpu_weights_gib"] + o["cpu_weights_gib"] == pytest.approx(_total_weight_gib(m), rel=1e-9)
    assert o["cpu_weights_gib"] == pytest.approx(n * 8 * 3 * 4096 * 14336 * 2 / GIB)


@pytest.mark.unit
@pytest.mark.parametrize("runtime", ["cuda-graph", "eager"])
@pytest.mark.parametrize("model", [L8B, "Qwen/Qwen2.5-7B"])
def test_all_layers_on_gpu_is_the_core_prediction(model, runtime):
    from perfcast.models import get_model

    L = get_model(model).n_layers
    r = predict_offload(model, "h100-sxm", "xeon-8480", {"plan": "layers", "gpu_layers": L}, runtime=runtime, **KW)
    p = predict(model, "h100-sxm", runtime=runtime, **KW).to_dict()
    for k in ("prefill_ms", "decode_ms", "weights_gib", "kv_cache_gib", "activations_gib", "total_gib"):
        assert r[k] == pytest.approx(p[k], rel=1e-12), k
    assert r["fits"] == p["fits"] and r["offload"]["cpu_weights_gib"] == 0
    assert r["offload"]["decode"]["pcie_bytes"] == 0


@pytest.mark.unit
def test_all_layers_on_cpu_decode_is_bounded_by_cpu_memory_bandwidth():
    # Llama-3.1-8B layers: 32 x (qkv 4096x6144 + o 4096x4096 + gate/up/down 3x4096x14336 + 2 norms) bf16
    layer_bytes = 2 * 32 * (4096 * 6144 + 4096 * 4096 + 3 * 4096 * 14336 + 2 * 4096)
    assert layer_bytes == 13_959_168_000
    # xeon-8480 catalog, 56 threads: STREAM = 0.80 x 307.2 GB/s, a GEMV reaches 0.70 of that
    gemv_bw = 0.80 * 307.2e9 * 0.70
    floor_ms = layer_bytes / gemv_bw * 1e3  # 81.14 ms
    # + CPU decode attention, 32 layers x (16 x 50 us + 0.05 ns x 32 heads x 1025 keys x 128) = 32.3 ms
    attn_ms = 32 * (16 * 50e-6 + 0.05e-9 * 32 * 1025 * 128) * 1e3
    r = predict_offload(L8B, "h100-pcie", "xeon-8480", {"plan": "layers", "gpu_layers": 0}, **KW)
    cpu_ms = r["offload"]["decode"]["cpu_ms"]
    assert floor_ms == pytest.approx(81.14, abs=0.01) and attn_ms == pytest.approx(32.3, abs=0.05)
    assert floor_ms + attn_ms <= cpu_ms <= 1.1 * (floor_ms + attn_ms)  # + one eager dispatch per op
    assert r["decode_ms"] >= layer_bytes / 307.2e9 * 1e3  # never faster than theoretical DRAM
    assert r["decode_bound"] == "memory"


@pytest.mark.unit
def test_fewer_threads_are_never_faster_and_pinned_links_are_faster():
    off = {"plan": "layers", "gpu_layers": 10}
    slow = predict_offload(L8B, "h100-pcie", "xeon-8480", off, cpu_threads=4, **KW)
    fast = predict_offload(L8B, "h100-pcie", "xeon-8480", off, **KW)
    assert slow["decode_ms"] > fast["decode_ms"] and slow["prefill_ms"] > fast["prefill_ms"]
    page = predict_offload(L8B, "h100-pcie", "xeon-8480", {"plan": "ffn_cpu"}, batch=8, prompt=2048, context=2048)
    pin = predict_offload(L8B, "h100-pcie", "xeon-8480", {"plan": "ffn_cpu", "pinned": True}, batch=8,
                          prompt=2048, context=2048)
    assert pin["offload"]["prefill"]["pcie_ms"] < page["offload"]["prefill"]["pcie_ms"]


def _with_handoff(handoff_s: float):
    from dataclasses import replace

    from perfcast.hardware import get_cpu, get_gpu
    from perfcast.offload.cpu import PRIOR, from_catalog

    return from_catalog(get_cpu("xeon-8480"), gpu=get_gpu("h100-pcie"), eff=replace(PRIOR, handoff_s=handoff_s))


@pytest.mark.unit
def test_handoffs_by_hand():
    """One hand-off per return to the GPU after a CPU block: L for ffn_cpu, one for a layer split with CPU
    layers, none without a device change; each after the CPU streamed that block's weights. Eager GPU
    segments only (the prior has no resume part; a CUDA-graph segment's dispatch is not the eager one)."""
    cpu0, cpu1 = _with_handoff(0.0), _with_handoff(0.5e-3)
    kw = {**KW, "runtime": "eager"}
    graph = predict_offload(L8B, "h100-pcie", cpu1, {"plan": "ffn_cpu"}, **KW)
    assert graph["runtime"] == "cuda-graph" and graph["offload"]["decode"]["handoff_ms"] == 0.0
    runs = {}
    for name, off in (("ffn", {"plan": "ffn_cpu"}), ("split", {"plan": "layers", "gpu_layers": 13}),
                      ("gpu", {"plan": "layers", "gpu_layers": 32}), ("cpu", {"plan": "cpu"}),
                      ("stream", {"plan": "stream"})):
        runs[name] = [predict_offload(L8B, "h100-pcie", c, off, **kw) for c in (cpu0, cpu1)]
    # Llama-3.1-8B MLP: 3 x 4096 x 14336 bf16 = 352 MB per layer >= 64 MiB: the full 0.5 ms, 32 times
    for ph in ("prefill", "decode"):
        base, h = runs["ffn"][0], runs["ffn"][1]
        assert h["offload"][ph]["handoff_ms"] == pytest.approx(32 * 0.5)
        assert h[f"{ph}_ms"] - base[f"{ph}_ms"] == pytest.approx(32 * 0.5)
        assert base["offload"][ph]["handoff_ms"] == 0.0
        assert runs["split"][1]["offload"][ph]["handoff_ms"] == pytest.approx(0.5)  # 19 CPU layers, one return
        for name in ("gpu", "cpu", "stream"):
            assert runs[name][1]["offload"][ph]["handoff_ms"] == 0.0
            assert runs[name][1][f"{ph}_ms"] == pytest.approx(runs[name][0][f"{ph}_ms"])
    # a small MLP streams less than 64 MiB: Qwen2.5-0.5B, 3 x 896 x 4864 bf16 = 26.1 MB per layer, on the
    # log2 ramp from 8 MiB: log2(26.1 MB / 8 MiB) / log2(64 / 8) of the prior, 24 layers
    q = predict_offload("Qwen/Qwen2.5-0.5B", "h100-pcie", cpu1, {"plan": "ffn_cpu"}, **kw)
    frac = math.log2(3 * 896 * 4864 * 2 / 2**23) / 3
    assert q["offload"]["decode"]["handoff_ms"] == pytest.approx(24 * 0.5 * frac)
    # neurons: one hand-off per layer after the cold neurons, fewer bytes than the whole MLP
    n = predict_offload(L8B, "h100-pcie", cpu1, {"plan": "neurons", "hot_fraction": 0.5, "sparsity": 0.0}, **kw)
    assert n["offload"]["decode"]["handoff_ms"] == pytest.approx(32 * 0.5)  # half of 352 MB is still > 64 MiB
    assert predict_offload(L8B, "h100-pcie", cpu1, {"plan": "neurons", "hot_fraction": 1.0, "sparsity": 0.0},
                           **kw)["offload"]["decode"]["handoff_ms"] == 0.0


@pytest.mark.unit
def test_stream_is_at_least_the_transfer_and_the_compute():
    r = predict_offload(L8B, "h100-pcie", "xeon-8480", {"plan": "stream"}, **KW)
    d = r["offload"]["decode"]
    assert r["decode_ms"] >= max(d["gpu_ms"], d["pcie_ms"]) - 1e-9
    assert d["pcie_bytes"] == pytest.approx(r["offload"]["cpu_weights_gib"] * GIB)


@pytest.mark.parametrize("model,gpu,cpu,vram", [
    ("meta-llama/Llama-3.1-70B", "h100-pcie", "xeon-8480", None),
    (L8B, "rtx-4090", "ryzen-9-7950x", 8.0),
    ("mistralai/Mixtral-8x7B-v0.1", "rtx-4090", "epyc-9654", None),
])
def test_chosen_plan_is_never_slower_than_memory_first(model, gpu, cpu, vram):
    r = search(model, gpu, cpu, vram_gib=vram, context=4096)
    assert r["best"]["fits"] and r["memory_first"]["fits"]
    assert r["best"]["decode_tokens_per_s"] >= r["memory_first"]["decode_tokens_per_s"]
    if r["frequency_first"] is not None:
        assert r["best"]["decode_tokens_per_s"] >= r["frequency_first"]["decode_tokens_per_s"]
    budget = r["vram_gib"]
    assert all(c["gpu_gib"] <= budget + 1e-9 for c in r["candidates"] if c["fits"])
    ngl = r["memory_first"]["offload"]["gpu_layers"]
    over = [c for c in r["candidates"] if c["offload"] == {"plan": "layers", "gpu_layers": ngl + 1}]
    assert not over or not over[0]["fits"]  # memory-first is the most layers that fit


BAD = [
    ({"plan": "nope"}, "unknown offload plan 'nope'"),
    ({"plan": "layers"}, "needs field 'gpu_layers'"),
    ({"plan": "layers", "gpu_layers": 99}, "gpu_layers=99 exceeds the 32 layers"),
    ({"plan": "layers", "gpu_layers": -1}, "non-negative integer"),
    ({"plan": "layers", "gpu_layers": "all"}, "non-negative integer"),
    ({"plan": "layers", "gpu_layers": 4, "ngl": 3}, "unknown offload field 'ngl'"),
    ({"plan": "experts_cpu"}, "needs a mixture-of-experts model"),
    ({"plan": "neurons", "hot_fraction": 0.5}, "exactly one of 'sparsity'"),
    ({"plan": "neurons", "hot_fraction": 1.5, "sparsity": 0.5}, "number in [0, 1]"),
    ({"plan": "ffn_cpu", "pinned": "yes"}, "true or false"),
    ([1, 2], "offload must be a JSON object"),
]


@pytest.mark.parametrize("off,msg", BAD, ids=lambda x: str(x)[:40])
def test_bad_offload_fields_say_what_is_wrong(off, msg):
    with pytest.raises(ValueError, match=None) as e:
        predict_offload(L8B, "h100-pcie", "xeon-8480", off, **KW)
    assert msg in str(e.value)


def test_bad_cpu_and_parallelism_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="offload needs 'cpu'"):
        predict_offload(L8B, "h100-pcie", None, {"plan": "ffn_cpu"}, **KW)
    with pytest.raises(ValueError, match="unknown CPU"):
        predict_offload(L8B, "h100-pcie", "pentium-4", {"plan": "ffn_cpu"}, **KW)
    with pytest.raises(ValueError, match="not a CPU profile"):
        predict_offload(L8B, "h100-pcie", str(tmp_path), {"plan": "ffn_cpu"}, **KW)
    with pytest.raises(ValueError, match="cpu_threads"):
        predict_offload(L8B, "h100-pcie", "xeon-8480", {"plan": "ffn_cpu"}, cpu_threads=0, **KW)
    with pytest.raises(ValueError, match="neurons' splits dense FFNs"):
        predict_offload("mistralai/Mixtral-8x7B-v0.1", "h100-pcie", "xeon-8480",
                        {"plan": "neurons", "hot_fraction": 0.5, "sparsity": 0.5}, **KW)


def test_batch_lines_route_offload_and_keep_errors_in_place():
    from perfcast.batch import predict_lines

    base = {"model": L8B, "gpu": "h100-pcie", "batch": 1, "prompt": 512, "context": 1024}
    lines = [json.dumps({**base, "offload": {"plan": "layers", "gpu_layers": 20}, "cpu": "xeon-8480"}),
             json.dumps({**base, "offload": {"plan": "layers", "gpu_layers": 20}}),
             json.dumps({**base, "offload": {"plan": "ffn_cpu"}, "cpu": "epyc-9654", "tp": 2}),
             json.dumps(base)]
    out, ok = predict_lines(lines)
    assert not ok and len(out) == 4
    assert out[0]["offload"]["gpu_layers"] == 20 and out[0]["offload"]["cpu"] == "xeon-8480"
    for k in ("prefill_ms", "decode_ms", "weights_gib", "kv_cache_gib", "activations_gib", "total_gib", "fits",
              "prefill_bound", "decode_bound", "source"):
        assert k in out[0] and k in out[3], k
    assert out[0]["decode_ms"] > out[3]["decode_ms"]
    assert "offload needs 'cpu'" in out[1]["error"]
    assert "tp=1" in out[2]["error"]
    assert out[0]["offload"]["decode"]["pcie_bytes"] > 0 and out[0]["offload"]["cpu_weights_gib"] > 0


def test_offload_cli_table_and_json():
    import click
    from click.testing import CliRunner

    from perfcast.offload.cli import register

    @click.group()
    def main():
        pass

    register(main)
    args = ["offload", "--model", L8B, "--gpu", "rtx-4090", "--cpu", "ryzen-9-7950x", "--vram-gib", "10"]
    r = CliRunner().invoke(main, args + ["--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["best"]["decode_tokens_per_s"] >= d["memory_first"]["decode_tokens_per_s"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and "memory-first" in r.output
    r = CliRunner().invoke(main, ["offload", "--model", L8B, "--gpu", "rtx-4090", "--cpu", "nope"])
    assert r.exit_code == 1 and "unknown CPU" in r.output


@pytest.mark.unit
def test_gpu_segment_host_time_counts_the_ops_it_dispatches():
    """The plain decoder's eager host model is per layer; an attention-only GPU segment (ffn_cpu) carries
    the attention block's share of the layer's eager calls: norm 1 + qkv 3 + rope 14 + kv write 2 +
    attention 3 + o 2 + residual 1 = 26 of 26 + (norm 1 + gate/up 2 + act 2 + down 1 + residual 1) = 33."""
    from perfcast.offload.base import make_case
    from perfcast.offload.blocks import ATTN, EXPERTS, MLP, POST, PRE
    from perfcast.step.predict import make_config

    cfg = make_config("meta-llama/Llama-3.2-1B", "h100-sxm", 1, 1, "bf16", "eager", "auto", None, None)
    p = make_case(cfg, "xeon-8480", None, 1, 128, 512, impl="plain").parts("decode")
    assert p.layer_host_share({PRE: 1.0, POST: 1.0, ATTN: 1.0}) == pytest.approx(26 / 33)
    assert p.layer_host_share({MLP: 1.0}) == pytest.approx(7 / 33)
    assert p.layer_host_share({ATTN: 0.25, MLP: 0.25, EXPERTS: 0.25}) == 1.0  # whole layers (a layer split)
    host = p.prof.host(p.host_key)
    assert host.per_op_s == 0.0 and host.per_layer_s > 0  # the fitted plain-decoder host model is per layer
    # 16 attention segments dispatch 7/33 of a layer less each than 16 whole layers would
    whole = p.gpu_seconds({PRE: 1.0, POST: 1.0, ATTN: 1.0, MLP: 1.0}, 16)
    attn = p.gpu_seconds({PRE: 1.0, POST: 1.0, ATTN: 1.0}, 16)
    assert float(whole - attn) >= 16 * host.per_layer_s * 7 / 33 - 1e-9


def test_pick_leaves_memory_first_only_past_the_margin(monkeypatch):
    """The pick stays on memory-first unless another plan is predicted faster by more than PICK_MARGIN:
    with a margin of 0 it is the fastest fitting plan, with one larger than any gain it is memory-first."""
    from perfcast.offload import search as s

    monkeypatch.setattr(s, "PICK_MARGIN", 0.0)
    r = search(L8B, "rtx-4090", "ryzen-9-7950x", vram_gib=8.0, context=4096)
    fastest = max(c["decode_tokens_per_s"] for c in r["candidates"] if c["fits"])
    assert r["best"]["decode_tokens_per_s"] >= fastest
    gain = r["best"]["decode_tokens_per_s"] / r["memory_first"]["decode_tokens_per_s"] - 1.0
    assert gain > 0.0  # another plan beats memory-first here
    monkeypatch.setattr(s, "PICK_MARGIN", gain * 1.01)
    r = search(L8B, "rtx-4090", "ryzen-9-7950x", vram_gib=8.0, context=4096)
    assert r["best"]["offload"] == r["memory_first"]["offload"]
    assert r["speedup_vs_memory_first"] == pytest.approx(1.0)
