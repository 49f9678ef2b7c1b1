"""Tier 1: FLOP, byte and memory formulas against hand-computed numbers."""

import numpy as np
import pytest

from perfcast.hardware import get_gpu
from perfcast.models import get_model
from perfcast.ops import roofline as rl
from perfcast.ops.analytical import PRIOR, collective_cost, gemm_compute_time
from perfcast.ops.base import COMPUTE, MEMORY
from perfcast.step import memory as mem

pytestmark = pytest.mark.unit


def test_gemm_counts():
    assert rl.gemm_flops(4096, 4096, 4096) == 2 * 4096**3 == 137438953472
    # x[1,4096], w[4096,4096], y[1,4096] in bf16
    assert rl.gemm_bytes(1, 4096, 4096) == (4096 + 4096 * 4096 + 4096) * 2 == 33570816
    # int4 weight-only: weights at half a byte, activations bf16
    assert rl.gemm_bytes(1, 4096, 4096, "bf16", "int4") == 4096 * 2 + 4096 * 4096 * 0.5 + 4096 * 2


def test_attention_pairs_by_hand():
    assert rl.attention_pairs(4, 4, True) == 1 + 2 + 3 + 4
    assert rl.attention_pairs(1, 10, False) == 10
    assert rl.attention_pairs(4, 10, True) == 7 + 8 + 9 + 10  # chunk after 6 cached tokens
    assert rl.attention_pairs(4, 10, True, window=8) == 7 + 8 + 8 + 8
    assert rl.attention_pairs(1, 10, False, window=8) == 8


def test_attention_flops_and_bytes():
    # decode: 2 sequences, 32 heads, head_dim 128, 1000 keys: QK and PV, 2 FLOP per MAC
    assert rl.attention_flops(2, 32, 128, 1, 1000, False) == 2 * 2 * 32 * 1000 * 256
    # bytes: q and o (32 heads x 128 each) + K and V (8 kv heads x 1000 x 128 each), bf16
    want = 2 * (32 * 1 * 256 * 2 + 8 * 1000 * 256 * 2)
    assert rl.attention_bytes(2, 32, 8, 128, 1, 1000) == want


def test_elementwise_bytes():
    assert rl.elementwise_bytes("add", 10, 4096) == 3 * 10 * 4096 * 2
    assert rl.elementwise_bytes("rmsnorm", 10, 4096) == 2 * 10 * 4096 * 2 + 4096 * 2


def test_collective_wire_bytes():
    assert rl.collective_wire_bytes("all_reduce", 1000, 4) == 2 * 3 / 4 * 1000
    assert rl.collective_wire_bytes("all_gather", 1000, 4) == 3 * 1000
    assert rl.collective_wire_bytes("reduce_scatter", 1000, 4) == 3 / 4 * 1000
    c = collective_cost(get_gpu("h100"), "all_reduce", 1 << 30, 4)
    # NVLink 4: 450 GB/s one way, 80% prior efficiency, plus latency
    bw_time = 2 * 3 / 4 * (1 << 30) / (450e9 * PRIOR.coll_link)
    assert float(c.seconds) == pytest.approx(bw_time + PRIOR.coll_latency_s + 5e-6)


def test_roofline_bound():
    t, b = rl.roofline(2e12, 1e9, 1e15, 1e12)
    assert float(t) == pytest.approx(2e-3) and int(b) == COMPUTE
    t, b = rl.roofline(1e9, 2e9, 1e15, 1e12)
    assert float(t) == pytest.approx(2e-3) and int(b) == MEMORY


def test_wave_quantization():
    g = get_gpu("h100")  # 132 SMs
    # 132 tiles of 128x256 fill one wave; one more tile costs a second wave
    one = gemm_compute_time(g, 128 * 12, 256 * 11, 8192, "bf16", PRIOR)
    two = gemm_compute_time(g, 128 * 12 + 1, 256 * 11, 8192, "bf16", PRIOR)
    assert float(two) > float(one) * 1.05
    # never faster than the datasheet peak
    m = np.array([1, 17, 1000, 8192])
    assert np.all(gemm_compute_time(g, m, 4096, 4096, "bf16", PRIOR) >= 2 * m * 4096 * 4096 / g.flops("bf16"))


def test_weights_and_kv_cache_by_hand():
    s = get_model("meta-llama/Llama-3.1-8B")
    g = get_gpu("h100")
    assert s.total_params() == 8_030_261_248
    assert mem.weights_bytes_per_gpu(s, 1, 1) == 8_030_261_248 * 2
    # 32 layers x (K + V) x 8 heads x 128 x 2 bytes
    assert mem.kv_bytes_per_token_per_gpu(s, 1, 1) == 32 * 2 * 8 * 128 * 2 == 131072
    m = mem.memory(s, g, 8, 2048, 2048)
    assert float(m.kv_cache_bytes) == 8 * 2049 * 131072
    # TP2: everything but the norms is split in half
    norms = s.n_layers * s.norm_params() + s.final_norm_params()
    assert mem.weights_bytes_per_gpu(s, 2, 1) == pytest.approx(((s.total_params() - norms) / 2 + norms) * 2)
    # TP16 > 8 KV heads: each rank keeps one whole KV head, so K/V weights do not shrink past 8
    kv16 = mem.kv_bytes_per_token_per_gpu(s, 16, 1)
    assert kv16 == mem.kv_bytes_per_token_per_gpu(s, 8, 1) == 32 * 2 * 1 * 128 * 2


def test_pipeline_stages_split_layers():
    assert [len(r) for r in mem.stage_layers(80, 3)] == [27, 27, 26]
    s = get_model("meta-llama/Llama-3.1-70B")
    w1 = mem.weights_bytes_per_gpu(s, 1, 1)
    w4 = mem.weights_bytes_per_gpu(s, 1, 4)
    assert w1 / 4 < w4 < w1 / 3.5


def test_max_batch_and_context_are_tight():
    s = get_model("meta-llama/Llama-3.1-8B")
    g = get_gpu("h100")
    b = mem.max_batch(s, g, 4096)
    assert bool(mem.memory(s, g, b, 4096, 4096).fits)
    assert not bool(mem.memory(s, g, b + 1, 4096, 4096).fits)
    c = mem.max_context(s, get_gpu("l4"), 16)
    assert bool(mem.memory(s, get_gpu("l4"), 16, c, c).fits)
    assert not bool(mem.memory(s, get_gpu("l4"), 16, c + 1, c + 1).fits)


def test_table_disk_cache_round_trip(tmp_path, monkeypatch):
    """Tables built once are pickled; a second process start loads them and predicts identically."""
    from perfcast.profiles import measured
    from perfcast.profiles.registry import shipped_profile_dir

    monkeypatch.setenv("PERFCAST_CACHE_DIR", str(tmp_path))
    path = str(shipped_profile_dir("h100-sxm"))
    built = measured._tables_cached.__wrapped__(path, "h100-sxm")
    assert len(list(tmp_path.glob("tables-h100-sxm-*.pkl"))) == 1
    loaded = measured._tables_cached.__wrapped__(path, "h100-sxm")
    assert loaded is not built and loaded.gpu is get_gpu("h100-sxm")
    from perfcast.profiles import Profile

    for t in (built, loaded):
        p = Profile(gpu=t.gpu, eff=t.efficiency, hosts=t.hosts, name=t.name, tables=t)
        c = p.gemm(np.array([1, 100, 5000]), 4096, 4096)
        c8 = p.gemm(np.array([1, 3, 5000]), 4096, 14336, "w8a16c")  # the weight-only int8 table too
        if t is built:
            ref, ref8 = c.seconds, c8.seconds
    assert np.array_equal(ref, c.seconds)
    assert np.array_equal(ref8, c8.seconds)
    monkeypatch.setenv("PERFCAST_CACHE_DIR", "")
    assert measured._disk_cache_path(path, "h100-sxm") is None


def test_int4_weight_only_uses_the_measured_tinygemm_table():
    """H100's profile holds torch._weight_int4pack_mm (w4a16) times: a measured grid point is returned
    exactly; the roofline of int4 bytes would be ~8x faster than that kernel at 1 row."""
    import csv
    from pathlib import Path

    from perfcast.hardware import get_gpu
    from perfcast.profiles.registry import resolve_profile

    path = Path(__file__).resolve().parents[1] / "src/perfcast/profiles/data/h100-sxm/gemm_int4.csv"
    row = next(r for r in csv.DictReader(open(path)) if (r["m"], r["n"], r["k"]) == ("1", "4096", "4096"))
    prof = resolve_profile(get_gpu("h100-sxm"), "auto")
    c = prof.gemm(1, 4096, 4096, "bf16", "int4")
    assert float(c.seconds) * 1e3 == pytest.approx(float(row["median_ms"]), rel=1e-6)
    assert int(c.source) == 0  # measured


def _int8c_rows(gpu_id):
    import csv
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / f"src/perfcast/profiles/data/{gpu_id}/gemm_int8.csv"
    return list(csv.DictReader(open(path)))


def test_int8_weight_only_measured_compiled_table_by_name():
    """H100's profile holds torch.compile'd int8 weight-only linears (dtype w8a16c, asked for by name): a
    measured point comes back as measured, an off-grid M is interpolated between its neighbours, and every
    M=1 row is matched within 3% (the interpolant is monotone in M). Weight-only "int8" itself stays the
    analytical fused kernel (one byte a weight), ~4x faster than that unfused compiled path."""
    from perfcast.ops import analytical as an
    from perfcast.ops.base import INTERPOLATED, MEASURED
    from perfcast.profiles.registry import resolve_profile

    gpu = get_gpu("h100-sxm")
    prof = resolve_profile(gpu, "auto")
    rows = _int8c_rows("h100-sxm")
    row = {(int(r["m"]), int(r["n"]), int(r["k"])): float(r["median_ms"]) for r in rows}
    c = prof.gemm(1, 4096, 14336, "w8a16c")
    assert float(c.seconds) * 1e3 == pytest.approx(row[(1, 4096, 14336)], rel=1e-6)
    assert int(c.source) == MEASURED
    fused = prof.gemm(1, 4096, 14336, "bf16", "int8")
    assert float(fused.seconds) == float(an.gemm_cost(gpu, 1, 4096, 14336, "bf16", "int8", prof.eff).seconds)
    assert float(c.seconds) > 3 * float(fused.seconds)
    for (m, n, k), ms in row.items():
        if m == 1:
            assert float(prof.gemm(1, n, k, "w8a16c").seconds) * 1e3 == pytest.approx(ms, rel=0.03)
    c3 = prof.gemm(3, 4096, 14336, "w8a16c")
    assert int(c3.source) == INTERPOLATED
    lo, hi = sorted((row[(2, 4096, 14336)], row[(4, 4096, 14336)]))
    assert lo * 0.999 <= float(c3.seconds) * 1e3 <= hi * 1.001
    # int8 weights with int8 activations (W8A8) do not use it
    assert float(prof.gemm(1, 4096, 14336, "int8").seconds) < 0.5 * float(c.seconds)


def test_int8_weight_only_keeps_the_ops_flops_and_bytes():
    """The table changes the time only: FLOPs and bytes are those of the op (int8 weights, bf16
    activations), and the weight memory of an int8 model is one byte a layer weight (the embedding and LM
    head stay bf16, as quantized checkpoints keep them)."""
    from perfcast.profiles.registry import resolve_profile

    for gid in ("h100-sxm", "h200"):
        for mode in ("auto", "none"):
            c = resolve_profile(get_gpu(gid), mode).gemm(np.array([1, 64, 3000]), 8192, 28672, "w8a16c")
            assert np.array_equal(c.bytes, rl.gemm_bytes(np.array([1, 64, 3000]), 8192, 28672, "bf16", "int8"))
            assert np.array_equal(c.flops, rl.gemm_flops(np.array([1, 64, 3000]), 8192, 28672))
    s = get_model("meta-llama/Llama-3.1-8B")
    # Llama-3.1-8B: 8,030,261,248 parameters, of which embedding and (untied) head 2 x 128,256 x 4,096
    head = 2 * 128256 * 4096
    assert mem.weights_bytes_per_gpu(s, 1, 1, "bf16") == 2 * 8030261248
    assert mem.weights_bytes_per_gpu(s, 1, 1, "int8") == (8030261248 - head) * 1 + head * 2
    assert mem.weights_bytes_per_gpu(s, 1, 1, "fp8") == (8030261248 - head) * 1 + head * 2
    assert mem.weights_bytes_per_gpu(s, 1, 1, "int4") == (8030261248 - head) * 0.5 + head * 2


def test_int8_weight_only_transfers_to_the_other_gpu():
    """profile none on H200 (H100's int8 ratios over H200's datasheet) predicts H200's own table at a
    10% median error (no row off by 25%), and says it is analytical."""
    from perfcast.ops.base import ANALYTICAL
    from perfcast.profiles.registry import resolve_profile

    prof = resolve_profile(get_gpu("h200"), "none")
    assert "h100" in prof.name
    err = []
    for r in _int8c_rows("h200"):
        c = prof.gemm(int(r["m"]), int(r["n"]), int(r["k"]), "w8a16c")
        err.append(abs(float(c.seconds) * 1e3 / float(r["median_ms"]) - 1))
        assert int(c.source) == ANALYTICAL
    assert len(err) == 60 and np.median(err) < 0.10 and max(err) < 0.25
