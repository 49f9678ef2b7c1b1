"""The calibration harness end to end on a tiny CPU grid, and the model GEMM shape table."""

import csv
import json

import pytest

from perfcast.measure import shapes

COLUMNS = {
    "gemm.csv": "dtype,m,n,k,median_ms,min_ms,p90_ms,reps",
    "attention.csv": "dtype,batch,heads,kv_heads,head_dim,q_len,kv_len,causal,median_ms,min_ms,p90_ms,reps",
    "elementwise.csv": "op,dtype,tokens,width,elements,bytes,median_ms,min_ms,p90_ms,reps",
    "launch.csv": "mode,op,median_us,min_us,p90_us,reps",
}
META_KEYS = {
    "gpu_name", "gpu_id", "sm_count", "l2_bytes", "total_memory_bytes", "clocks", "driver_version",
    "cuda_version", "torch_version", "cudnn_version", "python_version", "hostname", "date_utc", "command",
    "seed", "heldout", "elapsed_s", "skipped", "cases", "timing", "format_version", "complete",
}


def test_calibrate_cpu_tiny(tmp_path):
    pytest.importorskip("torch")
    from perfcast.measure.calibrate import calibrate

    meta = calibrate(out_dir=tmp_path, quick=True, device="cpu", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*COLUMNS, "meta.json"])
    for name, header in COLUMNS.items():
        with open(tmp_path / name, newline="") as f:
            rows = list(csv.reader(f))
        assert ",".join(rows[0]) == header, name
        assert len(rows) > 1, f"{name} has no rows"
        cols = rows[0]
        t = cols.index("median_ms") if "median_ms" in cols else cols.index("median_us")
        for row in rows[1:]:
            assert len(row) == len(cols)
            med, lo, p90, reps = float(row[t]), float(row[t + 1]), float(row[t + 2]), int(row[t + 3])
            assert 0 < lo <= med <= p90 and reps >= 1, (name, row)
    on_disk = json.loads((tmp_path / "meta.json").read_text())
    assert set(on_disk) >= META_KEYS, META_KEYS - set(on_disk)
    assert on_disk["complete"] is True and on_disk == json.loads(json.dumps(meta, default=str))
    assert set(on_disk["elapsed_s"]) >= {"gemm", "attention", "elementwise", "launch"}
    with open(tmp_path / "elementwise.csv", newline="") as f:
        ops = {r["op"] for r in csv.DictReader(f)}
    assert ops == set(shapes.EW_OPS)


def test_calibrate_only_rejects_unknown_family(tmp_path):
    pytest.importorskip("torch")
    from perfcast.measure.calibrate import calibrate

    with pytest.raises(ValueError, match="unknown family"):
        calibrate(out_dir=tmp_path, device="cpu", only="gemm,flops", progress=False)


def test_llm_gemm_shapes_llama8b():
    spec = shapes.model_dims("meta-llama/Llama-3.1-8B")
    tp1 = shapes.llm_gemm_shapes(spec, 1)
    assert tp1["qkv"] == (6144, 4096)
    assert tp1["q"] == (4096, 4096)
    assert tp1["kv"] == (1024, 4096)
    assert tp1["o"] == (4096, 4096)
    assert tp1["gate_up"] == (28672, 4096)
    assert tp1["gate"] == (14336, 4096)
    assert tp1["down"] == (4096, 14336)
    assert tp1["lm_head"] == (128256, 4096)
    tp2 = shapes.llm_gemm_shapes(spec, 2)
    assert tp2 == {"qkv": (3072, 4096), "q": (2048, 4096), "kv": (512, 4096), "o": (4096, 2048),
                   "gate_up": (14336, 4096), "gate": (7168, 4096), "down": (4096, 7168),
                   "lm_head": (64128, 4096)}
    tp8 = shapes.llm_gemm_shapes(spec, 8)
    assert tp8["kv"] == (128, 4096) and tp8["qkv"] == (512 + 256, 4096)


def test_llm_gemm_shapes_replicates_kv_heads_and_rejects_bad_tp():
    spec = shapes.FALLBACK["Qwen/Qwen2.5-7B"]  # 28 heads, 4 KV heads
    assert shapes.llm_gemm_shapes(spec, 4)["kv"] == (128, 3584)
    with pytest.raises(ValueError):
        shapes.llm_gemm_shapes(spec, 8)


def test_standard_grid_covers_every_model_shape():
    gemm = {(c["n"], c["k"]) for c in shapes.gemm_grid() if c["dtype"] == "bf16"}
    for mid in shapes.MODELS:
        spec = shapes.model_dims(mid)
        for tp in shapes.TPS:
            if shapes.tp_ok(spec, tp):
                assert set(shapes.llm_gemm_shapes(spec, tp).values()) <= gemm, (mid, tp)
    for fam, cases in shapes.grids().items():
        keys = [tuple(c.values()) for c in cases]
        assert len(keys) == len(set(keys)), f"{fam} grid has duplicates"


def test_heldout_is_seeded_and_off_grid():
    a = shapes.grids(heldout=True, seed=3)
    b = shapes.grids(heldout=True, seed=3)
    assert a == b
    assert len(a["gemm"]) == 300 and len(a["attention"]) == 80 and len(a["elementwise"]) == 80
    assert not {c["m"] for c in a["gemm"]} & set(shapes.M_GRID)
    assert all(2 * c["m"] * c["n"] * c["k"] <= shapes.MAX_GEMM_FLOP for c in a["gemm"])
    assert shapes.grids(heldout=True, seed=4)["gemm"] != a["gemm"]
    for c in a["attention"]:
        assert c["heads"] % c["kv_heads"] == 0


def test_input_pool_views_are_contiguous_and_distinct():
    torch = pytest.importorskip("torch")
    from perfcast.measure.calibrate import _Run
    from perfcast.measure.timing import CpuTimer

    r = _Run(torch, "cpu", CpuTimer(), progress=False)
    r.set_pool({("a", "bf16"): 64, ("b", "bf16"): 64})
    x, y = r.rand("a", 4, 8), r.rand("b", 2, 4, 8)
    assert x.is_contiguous() and y.is_contiguous() and x.dtype == torch.bfloat16
    assert x.data_ptr() != y.data_ptr() and bool((x != 0).any())
    big = r.rand("a", 16, 8)  # larger than the pool buffer: allocated on its own
    assert big.shape == (16, 8) and big.data_ptr() != r.pool[("a", "bf16")].data_ptr()
    assert r.rand("c", 3).shape == (3,)  # no such buffer: allocated on its own


def test_calibrate_timeline_lists_every_timed_row_in_time_order(tmp_path):
    pytest.importorskip("torch")
    from perfcast.measure.calibrate import calibrate

    meta = calibrate(out_dir=tmp_path, quick=True, device="cpu", progress=False, only="gemm,elementwise",
                     timeline=True)
    with open(tmp_path / "timeline.csv", newline="") as f:
        tl = list(csv.DictReader(f))
    assert "timeline" in meta
    for fam in ("gemm", "elementwise"):
        rows = [r for r in tl if r["family"] == fam]
        assert [int(r["row"]) for r in rows] == list(range(meta["cases"][fam]))  # one line per CSV row
    starts = [float(r["start_unix_s"]) for r in tl]
    assert starts == sorted(starts) and all(float(r["end_unix_s"]) >= float(r["start_unix_s"]) for r in tl)


def test_calibrate_order_seed_reorders_the_same_cases(tmp_path):
    """--order-seed: the same cases (those of --seed) in another random order; the meta records it and
    the settle time (which the CPU timer ignores)."""
    pytest.importorskip("torch")
    from perfcast.measure.calibrate import calibrate

    def shapes_of(d):
        with open(d / "gemm.csv", newline="") as f:
            return [(r["dtype"], r["m"], r["n"], r["k"]) for r in csv.DictReader(f)]

    a = calibrate(out_dir=tmp_path / "a", quick=True, device="cpu", progress=False, only="gemm", seed=3)
    b = calibrate(out_dir=tmp_path / "b", quick=True, device="cpu", progress=False, only="gemm", seed=3,
                  order_seed=11, settle_ms=5.0)
    sa, sb = shapes_of(tmp_path / "a"), shapes_of(tmp_path / "b")
    assert sorted(sa) == sorted(sb) and len(sa) > 3
    assert sa != sb  # another order
    assert a["order_seed"] == 3 and b["order_seed"] == 11
    assert b["timing"]["settle_ms"] == 0.0  # CPU: no settle
    with pytest.raises(ValueError):
        calibrate(out_dir=tmp_path / "c", quick=True, device="cpu", progress=False, only="gemm", settle_ms=-1)
