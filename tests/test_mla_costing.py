"""MLA costing by hand: the per-head absorbed projections are ONE batched kernel, the decode attention reads
the latent once, the MLA attention widths (192/128 prefill, 576/512 decode) count their FLOPs and bytes
exactly, and reading the measured attention grids at an MLA width changes nothing for ordinary widths."""

import dataclasses
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from perfcast.hardware import get_gpu
from perfcast.models import get_model
from perfcast.models.builder import GRAPH_LAYOUT, StepShape, build_ops
from perfcast.ops import analytical as an
from perfcast.ops import roofline as rl
from perfcast.profiles import Profile
from perfcast.profiles.registry import resolve_profile
from perfcast.step.costs import op_cost
from perfcast.step.runtime import cuda_graph

ROOT = Path(__file__).resolve().parents[1]
H100 = get_gpu("h100-sxm")


def _ops(model, phase, batch, prompt=1, context=1, tp=1):
    shape = StepShape(phase, np.asarray(batch), np.asarray(prompt), np.asarray(context))
    return {o.name: o for o in build_ops(get_model(model), shape, tp=tp, layout=GRAPH_LAYOUT)}


def test_batched_gemm_flops_and_bytes_by_hand():
    # DeepSeek-V3 whole (128 heads), decode batch 4: q_nope [4, 128] x W_UK [128, 512] per head
    op = _ops("deepseek-ai/DeepSeek-V3", "decode", 4, context=1024)["q_absorb"]
    assert op.dims["groups"] == 128 and op.meta["batched"]
    c = op_cost(op, H100, resolve_profile(H100, "auto"))
    assert float(c.flops) == 2 * 4 * 128 * 128 * 512 == 67_108_864
    # per head: activations 4 x 128, weights 512 x 128, output 4 x 512, bf16; times 128 heads
    assert float(c.bytes) == 128 * (4 * 128 * 2 + 512 * 128 * 2 + 4 * 512 * 2) == 17_432_576


def test_batched_gemm_is_one_kernel_on_the_roofline():
    """Analytical profile: one memory-bound kernel streaming every head's weights, one floor; not 128
    launches of one head's GEMM (each paying its own floor)."""
    prof = Profile.analytical(H100)
    op = _ops("deepseek-ai/DeepSeek-V3", "decode", 1, context=1024)["q_absorb"]
    c = op_cost(op, H100, prof)
    nbytes = 128 * (1 * 128 * 2 + 512 * 128 * 2 + 1 * 512 * 2)  # 16,941,056 bytes
    assert float(c.bytes) == nbytes
    t_mem = nbytes / (H100.mem_bw_bytes_per_s * an.PRIOR.gemm_memory)
    assert t_mem > an.PRIOR.gemm_floor_s  # the weight stream, not the floor, sets it
    assert float(c.seconds) == pytest.approx(t_mem, rel=1e-12)
    one_head = an.gemm_cost(H100, 1, 512, 128, eff=an.PRIOR)
    assert float(c.seconds) < 128 * float(one_head.seconds) / 10
    # the cuda-graph runtime charges it as one kernel
    host = prof.host("cuda-graph")
    rt = cuda_graph([op], [c], host, prof.eff)
    expect = max(float(c.seconds) - host.graph_kernel_discount_s, host.graph_kernel_min_s)
    assert float(rt.op_seconds[0]) == pytest.approx(expect, rel=1e-12)


def test_batched_gemm_with_measured_tables_is_one_kernel():
    """Measured profile: V3's two per-head bmm of one decode token cost tens of microseconds (the table time
    of the (1, 128 x 512, 128) GEMM, scaled by the batched roofline over it), not 128 x a GEMM's floor."""
    prof = resolve_profile(H100, "auto").alone()
    ops = _ops("deepseek-ai/DeepSeek-V3", "decode", 1, context=1024)
    for name, n, k in (("q_absorb", 512, 128), ("out_absorb", 128, 512)):
        c = op_cost(ops[name], H100, prof)
        eq = prof.gemm(1, 128 * n, k)
        bat = an.gemm_cost(H100, 1, n, k, eff=prof.eff, groups=128)
        ref = an.gemm_cost(H100, 1, 128 * n, k, eff=prof.eff)
        assert float(c.seconds) == pytest.approx(float(eq.seconds) * float(bat.seconds) / float(ref.seconds),
                                                 rel=1e-9)
        one = float(prof.gemm(1, n, k).seconds)
        assert 1e-6 < float(c.seconds) < 50e-6 < 128 * one


def test_batched_tiles_are_those_of_every_group():
    # 64 groups of (m 256, n 256, k 4096): 64 x 2 x 1 tiles of 128 x 256 (or 64 x 2 x 2 of 128 x 128), in waves
    gpu, eff = H100, an.PRIOR
    t = an.gemm_compute_time(gpu, 256, 256, 4096, "bf16", eff, groups=64)
    per_sm = gpu.flops("bf16") * eff.gemm_compute / gpu.sm_count
    big = math.ceil(64 * 2 / gpu.sm_count) * 2 * 128 * 256 * 4096 / per_sm  # 1 wave of 128 tiles
    assert float(t) == pytest.approx(big, rel=1e-12)
    # one group: unchanged
    assert float(an.gemm_compute_time(gpu, 256, 256, 4096, "bf16", eff)) == float(
        an.gemm_compute_time(gpu, 256, 256, 4096, "bf16", eff, groups=1))


def test_moe_groups_without_batched_stay_launches():
    """MoE expert GEMMs (``groups`` without ``batched``): one launch per expert hit, time x groups."""
    prof = resolve_profile(get_gpu("h200"), "auto")
    ops = _ops("mistralai/Mixtral-8x7B-v0.1", "decode", 16, context=512)
    op = ops["expert_down_proj"]
    assert op.dims.get("groups") is not None and not op.meta.get("batched")
    alone = dataclasses.replace(op, dims={k: v for k, v in op.dims.items() if k != "groups"})
    g = np.asarray(op.dims["groups"], dtype=float)
    gpu = get_gpu("h200")
    assert float(op_cost(op, gpu, prof).seconds) == float(op_cost(alone, gpu, prof).seconds * g)


def test_decode_attention_reads_the_latent_once_by_hand():
    # DeepSeek-V2-Lite decode, batch 8, context 4096 (4097 keys with the new token), 16 heads
    op = _ops("deepseek-ai/DeepSeek-V2-Lite", "decode", 8, context=4096)["attention"]
    d = op.dims
    assert (d["heads"], d["kv_heads"], d["head_dim"], d["v_head_dim"], d["kv_shared"]) == (16, 1, 576, 512, True)
    c = op_cost(op, H100, resolve_profile(H100, "auto"))
    # Q read (16 heads x 576) and O written (16 x 512) per sequence, the 576-wide latent of 4097 keys read once
    assert float(c.bytes) == 8 * (16 * (576 + 512) * 2 + 4097 * 576 * 2) == 38_036_480
    # QK^T over 576 channels and PV over 512, every head, every key
    assert float(c.flops) == 2 * 8 * 16 * 4097 * (576 + 512) == 1_141_129_216
    # counted as separate K and V, the latent would be read twice (once 576, once 512 wide)
    twice = rl.attention_bytes(8, 16, 1, 576, 1, 4097, v_head_dim=512)
    assert float(twice) - float(c.bytes) == 8 * 4097 * 512 * 2


def test_prefill_attention_widths_by_hand():
    # DeepSeek-V2-Lite prefill of 512 tokens: 16 heads, q/k 192 wide, v 128 wide, causal
    op = _ops("deepseek-ai/DeepSeek-V2-Lite", "prefill", 1, prompt=512)["attention"]
    c = op_cost(op, H100, resolve_profile(H100, "auto"))
    assert float(c.flops) == 2 * 16 * (512 * 513 // 2) * (192 + 128) == 1_344_798_720
    assert float(c.bytes) == 16 * 512 * (192 + 128) * 2 * 2 == 10_485_760  # Q + O, then K + V


def test_mla_attention_reads_the_measured_grids():
    """An MLA width is carried by the measured grids: prefill by the tile schedule with the op's own
    per-block FLOPs, decode by its own bytes. At an ordinary width, naming v_head_dim changes nothing."""
    prof = resolve_profile(H100, "auto").alone()
    for q, kv, causal in ((1, 4097, False), (2048, 2048, True)):
        plain = prof.attention(4, 32, 8, 128, q, kv, causal)
        named = prof.attention(4, 32, 8, 128, q, kv, causal, v_head_dim=128)
        assert float(named.seconds) == float(plain.seconds)
    # prefill 192/128: between the 128/128 and 192/192 kernels of the same config
    lo = float(prof.attention(1, 16, 16, 128, 2048, 2048, True).seconds)
    mid = float(prof.attention(1, 16, 16, 192, 2048, 2048, True, v_head_dim=128).seconds)
    hi = float(prof.attention(1, 16, 16, 192, 2048, 2048, True, v_head_dim=192).seconds)
    assert lo < mid < hi
    blocks = an.flash_block_seconds(H100, 192, "bf16", 128) / an.flash_block_seconds(H100, 128)
    assert blocks == pytest.approx(320 / 256)


def test_mla_decode_compute_bound_by_hand():
    """V3 whole, decode batch 128 at 16385 keys: 128 query heads on one latent stream make the kernel tensor-core
    bound (about 242 FLOP a byte): FLOPs at the profile's fitted attention efficiency, full occupancy (the keys
    split over CTAs)."""
    prof = resolve_profile(H100, "auto").alone()
    c = prof.attention(128, 128, 1, 576, 1, 16385, False, v_head_dim=512, kv_shared=True)
    flops = 2 * 128 * 128 * 16385 * (576 + 512)
    assert float(c.flops) == flops
    assert float(c.seconds) == pytest.approx(flops / (H100.flops("bf16") * prof.eff.attn_compute), rel=1e-12)
    # V2-Lite (16 heads): memory bound, at least the latent at the datasheet bandwidth
    c = prof.attention(128, 16, 1, 576, 1, 16385, False, v_head_dim=512, kv_shared=True)
    assert float(c.seconds) > 128 * 16385 * 576 * 2 / H100.mem_bw_bytes_per_s
    assert float(c.seconds) > 2 * 128 * 16 * 16385 * 1088 / (H100.flops("bf16") * prof.eff.attn_compute)


def test_split_kv_occupancy():
    # one sequence of 1025 keys split into ceil(1025 / 64) = 17 CTAs of the 132 SMs
    f = 1e9
    t = an.attention_compute_seconds(H100, f, 1, 128, 1, 1025, "bf16", an.PRIOR, split_kv=True)
    assert float(t) == pytest.approx(f / (H100.flops("bf16") * an.PRIOR.attn_compute * 17 / H100.sm_count))


def _bench():
    spec = importlib.util.spec_from_file_location("bench_mla", ROOT / "benchmarks" / "bench_mla.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rec(model, tp, phase, batch, q_len, kv_len, impl):
    from perfcast.measure.extras import mla_dims

    return {"gpu_id": "h100-sxm", "model": model, **mla_dims(get_model(model), tp), "layers": 4, "phase": phase,
            "batch": batch, "q_len": q_len, "kv_len": kv_len, "attn_impl": impl, "runtime": "cuda-graph", "ms": 1.0}


def test_bench_glue_and_vpad_shapes():
    bench = _bench()
    rec = _rec("deepseek-ai/DeepSeek-V3", 8, "decode", 32, 1, 4097, "matmul")  # 16 heads a GPU
    glue = {o.name: (int(o.dims["tokens"]), o.dims["width"]) for o in bench.glue_ops(rec)}
    assert glue == {"glue_cache_cat": (32, 576), "glue_q_cat": (32, 16 * 576), "glue_out_transpose": (32, 16 * 128)}
    rec = _rec("deepseek-ai/DeepSeek-V2-Lite", 1, "prefill", 1, 2048, 2048, "sdpa_vpad")
    ops = bench.stack_ops(rec)
    att = next(o for o in ops if o.kind == "attention")
    assert (att.dims["head_dim"], att.dims["v_head_dim"]) == (192, 192)  # v padded to q/k's width
    assert {o.name for o in ops if o.name.startswith("glue_")} == {
        "glue_cache_cat", "glue_k_cat", "glue_q_cat", "glue_out_transpose", "glue_v_pad"}
    plain = next(o for o in bench.stack_ops(dict(rec, attn_impl="sdpa")) if o.kind == "attention")
    assert plain.dims["v_head_dim"] == 128
    # the matmul decode as run: two batched GEMMs over the sequences around the softmax
    k = bench.matmul_attention_ops(_rec("deepseek-ai/DeepSeek-V3", 8, "decode", 32, 1, 4097, "matmul"))
    assert [(o.dims.get("m"), o.dims.get("n"), o.dims.get("k"), o.dims.get("groups")) for o in k if o.kind == "gemm"] \
        == [(16, 4097, 576, 32), (16, 512, 4097, 32)]
