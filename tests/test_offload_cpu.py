"""The CPU model: catalog ceilings by hand, a measured profile read back, calibration and harness on CPU."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from perfcast.hardware import get_cpu, get_gpu
from perfcast.offload.cpu import PRIOR, from_catalog, resolve_cpu
from perfcast.offload.cpu_profile import load_cpu_profile

COLS = ("kind", "dtype", "threads", "m", "n", "k", "bytes", "flops", "median_ms", "min_ms", "p90_ms", "reps")


@pytest.mark.unit
def test_catalog_ceilings_by_hand():
    c = from_catalog(get_cpu("epyc-9654"), gpu=get_gpu("h100-pcie"))
    assert c.threads == 96
    assert c.stream_bw == pytest.approx(0.80 * 460.8e9)  # DRAM-bound: 96 cores x 12 GB/s is more
    assert c.gemv_bw["bf16"] == pytest.approx(0.80 * 460.8e9 * 0.70)
    assert c.gemm_flops["fp32"] == pytest.approx(96 * 32 * 3.55e9 * 0.65)
    assert c.gemm_flops["bf16"] == pytest.approx(96 * 64 * 3.55e9 * 0.50)
    few = from_catalog(get_cpu("epyc-9654"), threads=8)
    assert few.stream_bw == pytest.approx(8 * 12e9)  # few threads cannot pull the whole DRAM bandwidth
    # PCIe: min(CPU Gen5 64 GB/s, H100 PCIe link) x 0.8 pinned, half that pageable; 15 us per copy
    pcie = min(64e9, get_gpu("h100-pcie").pcie_bw_bytes_per_s)
    assert c.transfer(64e6, "h2d", pinned=True) == pytest.approx(15e-6 + 64e6 / (0.8 * pcie))
    assert c.transfer(64e6, "d2h") == pytest.approx(15e-6 + 64e6 / (0.4 * pcie))
    assert c.transfer(0, "d2h") == 0.0


@pytest.mark.unit
def test_cpu_decode_attention_pays_the_kernels_fixed_cost():
    c = from_catalog(get_cpu("xeon-8480"), threads=16)
    t, _ = c.attention(1, 32, 8, 64, 1, 513, False)
    # 50 us per thread per call + 0.05 ns per (batch x heads x kv_len x head_dim) element
    assert float(t) == pytest.approx(16 * 50e-6 + 0.05e-9 * 32 * 513 * 64)
    t56, _ = from_catalog(get_cpu("xeon-8480")).attention(1, 32, 8, 64, 1, 513, False)
    assert float(t56) == pytest.approx(float(t))  # the per-thread cost is not extrapolated past 16
    t4, _ = c.attention(4, 32, 8, 64, 1, 513, False)
    assert float(t) < float(t4) < 1.2 * float(t)  # batch barely matters: the fixed cost dominates
    tp, _ = c.attention(1, 32, 8, 64, 512, 512, True)  # prefill: compute at half the GEMM rate
    assert float(tp) == pytest.approx(2 * 32 * (512 * 513 / 2) * 128 / (0.5 * c.gemm_flops["bf16"]))


@pytest.mark.unit
def test_gemv_is_memory_bound_and_gemm_compute_bound():
    c = from_catalog(get_cpu("xeon-8480"))
    t, bound = c.gemm(1, 4096, 4096, "bf16")
    assert float(t) == pytest.approx((4096 * 4096 * 2 + 2 * 4096 * 2) / c.gemv_bw["bf16"])
    assert int(bound) == 1  # memory
    t, bound = c.gemm(8192, 4096, 4096, "bf16")
    assert float(t) == pytest.approx(2 * 8192 * 4096 * 4096 / c.gemm_flops["bf16"])
    assert int(bound) == 0  # compute
    # no native bf16 (an AVX2 host): bf16 GEMMs run at a fraction of the fp32 peak
    assert PRIOR.bf16_emulated < PRIOR.gemm_fp32


def _write_profile(root, rows, cores=8):
    root.mkdir(parents=True, exist_ok=True)
    (root / "meta.json").write_text(json.dumps({"format": "perfcast-cpu-profile", "format_version": 1,
                                                "cpu_name": "Test CPU", "cpu_id": None, "cores": cores,
                                                "mem_total_bytes": 64 << 30}))
    with open(root / "cpu.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLS)
        w.writeheader()
        for r in rows:
            w.writerow({**{k: 0 for k in COLS}, "min_ms": r["median_ms"], "p90_ms": r["median_ms"], "reps": 3, **r})


def _gemm_row(threads, m, gb_s, gflop_s, dtype="fp32"):
    n = k = 1024
    nbytes, flops = 4.0 * (m * k + n * k + m * n), 2.0 * m * n * k
    ms = max(nbytes / (gb_s * 1e9), flops / (gflop_s * 1e9)) * 1e3
    return {"kind": "gemm", "dtype": dtype, "threads": threads, "m": m, "n": n, "k": k, "bytes": nbytes,
            "flops": flops, "median_ms": ms}


@pytest.mark.unit
def test_measured_profile_read_back(tmp_path):
    rows = [{"kind": "copy", "threads": 1, "bytes": 1e9, "median_ms": 100.0},   # 10 GB/s
            {"kind": "triad", "threads": 1, "bytes": 1.5e9, "median_ms": 100.0},  # 15 GB/s (best)
            {"kind": "copy", "threads": 8, "bytes": 1e9, "median_ms": 20.0},    # 50 GB/s
            {"kind": "op", "threads": 8, "median_ms": 0.004},
            _gemm_row(1, 1, 10, 50), _gemm_row(1, 256, 10, 50), _gemm_row(8, 1, 40, 400),
            _gemm_row(8, 256, 40, 400),
            {"kind": "attn_decode", "dtype": "fp32", "threads": 8, "m": 512, "n": 32, "k": 64, "median_ms": 0.2 + 1e-6 * 512 * 32 * 64},
            {"kind": "attn_decode", "dtype": "fp32", "threads": 8, "m": 2048, "n": 128, "k": 128,
             "median_ms": 0.2 + 1e-6 * 2048 * 128 * 128},
            {"kind": "attn_prefill", "dtype": "fp32", "threads": 8, "m": 256, "n": 32, "k": 64, "flops": 1e9, "median_ms": 10.0},
            {"kind": "h2d_pinned", "bytes": 1e6, "median_ms": 0.06},  # 10 us + 1 MB / 20 GB/s
            {"kind": "h2d_pinned", "bytes": 1e8, "median_ms": 5.01}]
    _write_profile(tmp_path / "p", rows)
    c = load_cpu_profile(tmp_path / "p")
    assert c.threads == 8 and c.measured and c.name == "Test CPU"
    assert c.stream_bw == pytest.approx(50e9)
    assert c.gemv_bw["fp32"] == pytest.approx(40e9) and c.gemm_flops["fp32"] == pytest.approx(400e9)
    assert c.gemv_bw["bf16"] == c.gemv_bw["fp32"]  # an unmeasured dtype class borrows the other
    assert c.op_overhead_s == pytest.approx(4e-6)
    call, per = c.attn_decode["fp32"]
    assert call == pytest.approx(0.2e-3) and per == pytest.approx(1e-9)
    assert c.attn_flops["fp32"] == pytest.approx(1e11)
    link = c.link("h2d", pinned=True)
    assert link.bytes_per_s == pytest.approx(20e9, rel=1e-3) and link.latency_s == pytest.approx(10e-6, rel=1e-2)
    half = load_cpu_profile(tmp_path / "p", threads=4)  # between the measured 1 and 8 threads
    assert 15e9 < half.stream_bw < 50e9
    # at a measured point the model returns the measurement
    t, _ = c.gemm(256, 1024, 1024, "fp32")
    assert float(t) * 1e3 == pytest.approx(_gemm_row(8, 256, 40, 400)["median_ms"], rel=1e-9)
    assert resolve_cpu(str(tmp_path / "p")).source.startswith("measured")


def test_calibrate_cpu_tiny_writes_a_profile_the_model_reads(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from perfcast.measure import cpu_calibrate as cc

    monkeypatch.setattr(cc, "STREAM_MIN_BYTES", 1 << 20)
    monkeypatch.setattr(cc, "GEMM_NK", 256)
    monkeypatch.setattr(cc, "M_QUICK", (1, 16, 64))
    monkeypatch.setattr(cc, "_stream_elems", lambda facts: 1 << 18)
    monkeypatch.setattr(cc, "guarded", lambda measure, **kw: (measure(), 0.0))  # no re-timing on busy hosts
    monkeypatch.setattr(cc, "SWEEP_QUICK", (1 << 20, 4 << 20))
    monkeypatch.setattr(cc, "SWEEP_NK", 256)
    monkeypatch.setattr(cc, "GEMV_SHAPES_QUICK", ((128, 512), (512, 128)))
    facts = cc.cpu_facts
    monkeypatch.setattr(cc, "cpu_facts", lambda: {**facts(), "l3_bytes": 1 << 20})
    meta = cc.calibrate_cpu(tmp_path, threads=[1], dtypes=("fp32", "bf16"), quick=True, progress=False)
    assert meta["complete"] and meta["cores"] >= 1 and meta["cpu_name"]
    with open(tmp_path / "cpu.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["kind"] for r in rows} >= {"copy", "triad", "gemm", "op", "chain_cpu", "resume_cpu", "sweep_cpu"}
    assert all(float(r["median_ms"]) > 0 for r in rows)
    chain = [r for r in rows if r["kind"] == "chain_cpu"]
    assert {int(r["m"]) for r in chain} == {0, 1 << 20, 4 << 20} and {r["n"] for r in chain} == {"34"}
    assert {r["dtype"] for r in chain} == {"fp32"}  # the chain runs in the first dtype
    gv = [r for r in rows if r["kind"] == "gemv_shape"]  # one-token GEMVs by weight shape, both dtypes
    assert {(r["dtype"], r["n"], r["k"]) for r in gv} == {(d, n, k) for d in ("fp32", "bf16")
                                                           for n, k in (("128", "512"), ("512", "128"))}
    assert all(float(r["m"]) == 1 and float(r["flops"]) == 2 * float(r["n"]) * float(r["k"]) for r in gv)
    c = load_cpu_profile(tmp_path, threads=1)
    assert c.stream_bw > 0 and c.gemm_flops["bf16"] > 0 and np.isfinite(c.op_overhead_s)
    assert c.handoff_pts[0] == "cpu" and np.all(np.asarray(c.handoff(4 << 20)) >= 0)


def test_offload_step_decode_matches_prefill_on_cpu():
    torch = pytest.importorskip("torch")
    from perfcast.measure.offload_step import SplitDecoder, placement
    from perfcast.models.spec import ModelSpec

    spec = ModelSpec(name="tiny", model_type="qwen2", hidden=64, n_layers=2, n_heads=4, n_kv_heads=2,
                     head_dim=16, intermediate=128, vocab=256, max_positions=4096, attn_bias=True)
    ends, where = placement(spec, {"plan": "cpu"}, has_gpu=False)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        placement(spec, {"plan": "ffn_cpu"}, has_gpu=False)
    d = SplitDecoder(spec, ends, where, torch.float32)
    for L in d.layers:  # random, not the tiled pool, so positions differ
        L["wqkv"].normal_(0, 0.2)
    ids = torch.randint(0, 256, (2, 9))
    d.alloc(2, 9)
    full = d.forward(ids, list(range(9)), None)
    d.alloc(2, 9)
    d.forward(ids[:, :8], list(range(8)), None)
    step = d.forward(ids[:, 8:], [8], 9)
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-4)


@pytest.mark.unit
def test_handoff_prior_is_a_log_ramp_in_streamed_bytes():
    from dataclasses import replace

    c = from_catalog(get_cpu("xeon-8480"), threads=16)
    assert PRIOR.handoff_s == 0.14e-3 and PRIOR.handoff_resume_s == 0.0  # as measured on an H100 host (16 threads)
    c = replace(c, eff=replace(PRIOR, handoff_s=0.4e-3))
    mib = float(1 << 20)
    # 0 at <= 8 MiB, the full prior at >= 64 MiB, log2-linear between: 16 MiB is 1/3 of the way
    assert float(c.handoff(0.5 * mib)) == 0.0 and float(c.handoff(8 * mib)) == 0.0
    assert float(c.handoff(16 * mib)) == pytest.approx(0.4e-3 / 3)
    assert float(c.handoff(64 * mib)) == pytest.approx(0.4e-3)
    assert float(c.handoff(4096 * mib)) == pytest.approx(0.4e-3)
    assert float(c.handoff(4096 * mib, eager=False)) == 0.0  # CUDA-graph segments: not the eager dispatch


def _handoff_rows(dev, threads=8):
    ms = {0: 0.30, 16 << 20: 0.50, 256 << 20: 0.90}  # chain: warm, then after 16 MiB and 256 MiB sweeps
    rows = [{"kind": f"chain_{dev}", "dtype": "bf16", "threads": threads, "m": s, "n": 34, "bytes": s,
             "median_ms": t} for s, t in ms.items()]
    for s, (resume, sweep) in {16 << 20: (1.25, 1.20), 256 << 20: (19.6, 19.5)}.items():
        rows += [{"kind": f"resume_{dev}", "dtype": "bf16", "threads": threads, "m": s, "bytes": s, "median_ms": resume},
                 {"kind": f"sweep_{dev}", "dtype": "bf16", "threads": threads, "m": s, "bytes": s, "median_ms": sweep}]
    return rows


@pytest.mark.unit
def test_measured_handoff_read_back(tmp_path):
    base = [{"kind": "copy", "threads": 8, "bytes": 1e9, "median_ms": 20.0}, _gemm_row(8, 1, 40, 400)]
    _write_profile(tmp_path / "p", base + _handoff_rows("cpu"))
    c = load_cpu_profile(tmp_path / "p")
    dev, sizes, cold, resume = c.handoff_pts
    assert dev == "cpu" and list(sizes) == [16 << 20, 256 << 20]
    # chain cold - warm per S; resume = median over S of (resume - sweep) = (0.05 + 0.1) / 2 ms
    assert cold == pytest.approx([0.2e-3, 0.6e-3]) and resume == pytest.approx(0.075e-3)
    assert float(c.handoff(16 << 20, eager=False)) == pytest.approx(0.075e-3)  # a graph launch: resume only
    mib = float(1 << 20)
    assert float(c.handoff(16 * mib)) == pytest.approx(0.275e-3)
    assert float(c.handoff(64 * mib)) == pytest.approx(0.275e-3 + 0.4e-3 * 2 / 4)  # log2: 64 MiB is 2 of 4 steps
    assert float(c.handoff(4 * mib)) == pytest.approx(0.075e-3)  # below 8 MiB: the resume alone
    assert float(c.handoff(11.3137 * mib)) == pytest.approx(0.2e-3 / 2 + 0.075e-3, rel=1e-4)  # cold: 0 at 8 MiB
    assert float(c.handoff(1 << 40)) == pytest.approx(0.675e-3)  # flat past the largest sweep
    # a GPU's own chain wins over the CPU stand-in
    _write_profile(tmp_path / "q", base + _handoff_rows("cpu") + [
        {**r, "median_ms": 2 * r["median_ms"]} for r in _handoff_rows("cuda")])
    assert load_cpu_profile(tmp_path / "q").handoff_pts[0] == "cuda"
    assert float(load_cpu_profile(tmp_path / "q").handoff(16 * mib)) == pytest.approx(0.4e-3 + 0.15e-3)
    _write_profile(tmp_path / "r", base)  # an older profile without the rows: the prior
    assert load_cpu_profile(tmp_path / "r").handoff_pts is None


@pytest.mark.unit
def test_harness_segments_book_each_copy_to_the_device_it_leaves():
    from perfcast.measure.offload_step import Segments

    ticks = iter([0.0, 1.0, 1.5, 4.0, 4.25, 5.0])
    s = Segments(clock=lambda: next(ticks))
    s.start("cuda")          # t = 0: embedding on the GPU
    s.switch("cpu")          # t = 1: after x.to("cpu"): 1 s of GPU (its kernels and the copy out)
    s.switch("cuda")         # t = 1.5: after x.to("cuda"): 0.5 s of CPU
    s.switch("cpu")          # t = 4
    s.switch("cuda")         # t = 4.25
    assert s.stop() == {"cuda": 1.0 + 2.5 + 0.75, "cpu": 0.5 + 0.25} and s.switches == 4


@pytest.mark.unit
def test_cache_resident_gemm_rows_add_the_weights_dram_read(tmp_path):
    """calibrate-cpu times GEMMs with m > 16 on one reused weight; where half the L3 holds it, those rows
    were cache-hot, and a model step (weights from DRAM) adds one read of the weight at the STREAM rate,
    ramped in log m between the last rotating row (m = 16) and the first reused one (m = 64)."""
    rows = [{"kind": "copy", "threads": 8, "bytes": 1e9, "median_ms": 20.0},  # 50 GB/s
            _gemm_row(8, 1, 40, 400), _gemm_row(8, 16, 40, 400), _gemm_row(8, 64, 40, 400),
            _gemm_row(8, 256, 40, 400)]
    _write_profile(tmp_path / "hot", rows)
    meta = json.loads((tmp_path / "hot" / "meta.json").read_text())
    (tmp_path / "hot" / "meta.json").write_text(json.dumps({**meta, "l3_bytes": 64 << 20}))
    c = load_cpu_profile(tmp_path / "hot")
    assert c.gemm_hot["fp32"] == (16.0, 64.0)
    w_s = 1024 * 1024 * 4 / 50e9  # the 4 MiB fp32 weight at 50 GB/s: 83.886 us
    for m, ramp in ((1, 0.0), (16, 0.0), (32, 0.5), (64, 1.0), (256, 1.0)):
        t, _ = c.gemm(m, 1024, 1024, "fp32")
        meas = _gemm_row(8, m, 40, 400)["median_ms"] * 1e-3 if m != 32 else None
        assert float(c.cold_weights(m, 1024, 1024, "fp32")) == pytest.approx(ramp * w_s)
        if meas is not None:
            assert float(t) == pytest.approx(meas + ramp * w_s, rel=1e-9)
    assert float(c.gemm(256, 1024, 1024, "fp32")[0]) * 1e3 == pytest.approx(1.3421773 + 0.0838861, rel=1e-6)  # 2*256*1024^2 FLOP at 400 GFLOP/s + w_s
    # a weight over half the L3 streamed from DRAM in the calibration too: the rows stand as measured
    _write_profile(tmp_path / "cold", rows)
    (tmp_path / "cold" / "meta.json").write_text(json.dumps({**meta, "l3_bytes": 4 << 20}))
    c = load_cpu_profile(tmp_path / "cold")
    assert c.gemm_hot == {}
    assert float(c.gemm(256, 1024, 1024, "fp32")[0]) * 1e3 == pytest.approx(1.3421773, rel=1e-6)


@pytest.mark.unit
def test_gpu_host_profiles_have_hot_gemm_rows_the_dev_vm_not():
    """The 16-core Xeon profiles (300 MiB L3) timed the 4096x4096 weight of m >= 64 from the cache; the
    2-core VM's (32 MiB L3) did not (a 32/64 MiB weight is over half its L3)."""
    data = Path(__file__).resolve().parent.parent / "benchmarks" / "data"
    assert load_cpu_profile(data / "offload_h100-sxm_r3_cpu").gemm_hot == {"fp32": (16.0, 64.0),
                                                                            "bf16": (16.0, 64.0)}
    assert load_cpu_profile(data / "cpu_profile_local").gemm_hot == {}
