"""`perfcast explain`: the explanation's numbers add up, and the command writes its tables and pictures."""

import json
import subprocess
import sys

import pytest

import perfcast
from perfcast.report.explain import explain, families

PERFCAST = [sys.executable, "-m", "perfcast.cli"]
CASE = {"model": "meta-llama/Llama-3.1-8B", "gpu": "h100-sxm", "batch": 8, "prompt": 2048, "context": 2048}
PNG = b"\x89PNG\r\n\x1a\n"


def run(args):
    return subprocess.run(PERFCAST + args, check=False, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def eager_tp2():
    return explain(**CASE, tp=2, runtime="eager")


def test_explanation_matches_the_prediction(eager_tp2):
    p = perfcast.predict(**CASE, tp=2, runtime="eager", breakdown=True)
    assert eager_tp2.prediction == p.to_dict()
    assert [(r["phase"], r["name"], r["ms"]) for r in eager_tp2.ops] == [
        (r["phase"], r["name"], r["ms"]) for r in p.breakdown]


def test_families_cover_each_phase(eager_tp2):
    for phase in ("prefill", "decode"):
        fam = [f for f in eager_tp2.families if f["phase"] == phase]
        assert sum(f["ms"] for f in fam) == pytest.approx(eager_tp2.prediction[f"{phase}_ms"], rel=1e-9)
        assert sum(f["share"] for f in fam) == pytest.approx(1.0)
        assert fam == sorted(fam, key=lambda f: -f["ms"])
    kinds = {f["kind"] for f in eager_tp2.families}
    assert {"gemm", "attention", "elementwise", "collective"} <= kinds


def test_families_by_hand():
    rows = [{"phase": "prefill", "kind": "gemm", "ms": 6.0, "count": 2},
            {"phase": "prefill", "kind": "gemm", "ms": 2.0, "count": 1},
            {"phase": "prefill", "kind": "attention", "ms": 2.0, "count": 1},
            {"phase": "decode", "kind": "elementwise", "ms": 1.0, "count": 4}]
    fam = families(rows, {"prefill": 10.0, "decode": 4.0})
    assert fam == [
        {"phase": "prefill", "kind": "gemm", "ms": 8.0, "launches": 3, "share": 0.8},
        {"phase": "prefill", "kind": "attention", "ms": 2.0, "launches": 1, "share": 0.2},
        # time no kernel accounts for (host gaps, graph launch) is shown, not hidden
        {"phase": "decode", "kind": "runtime", "ms": 3.0, "launches": 0, "share": 0.75},
        {"phase": "decode", "kind": "elementwise", "ms": 1.0, "launches": 4, "share": 0.25},
    ]


def test_memory_components_add_up(eager_tp2):
    p = eager_tp2.prediction
    mem = {m["component"]: m["gib"] for m in eager_tp2.memory}
    assert mem["weights"] + mem["kv_cache"] + mem["activations"] + mem["reserve"] == pytest.approx(p["total_gib"])
    assert mem["free"] == pytest.approx(p["capacity_gib"] - p["total_gib"])
    assert mem["reserve"] == pytest.approx(1.5)  # CUDA context + NCCL buffers at tp=2


def test_roofline_coordinates(eager_tp2):
    r = eager_tp2.roofline
    g = perfcast.get_gpu("h100-sxm")
    assert r["peak_flops_per_s"] == g.peak_flops["bf16"] and r["mem_bw_bytes_per_s"] == g.mem_bw_bytes_per_s
    assert r["ridge_flop_per_byte"] == pytest.approx(r["peak_flops_per_s"] / r["mem_bw_bytes_per_s"])
    placed = [o for o in eager_tp2.ops if o["intensity_flop_per_byte"] is not None]
    assert {"qkv_proj", "gate_up_proj", "attention"} <= {o["name"] for o in placed}
    for o in placed:
        assert o["intensity_flop_per_byte"] == pytest.approx(o["flops"] / o["bytes"])
        assert o["achieved_flops_per_s"] == pytest.approx(o["flops"] / (o["ms"] * 1e-3))
    collectives = [o for o in eager_tp2.ops if o["kind"] == "collective"]
    assert collectives and all(o["intensity_flop_per_byte"] is None for o in collectives)


def test_weight_only_int4_is_placed_under_the_bf16_ceiling():
    e = explain(**CASE, dtype="int4")
    assert e.roofline["dtype"] == "bf16"


def test_explain_writes_pictures_tables_and_json(tmp_path):
    out = tmp_path / "why"
    r = run(["explain", "--model", CASE["model"], "--gpu", "h100", "--batch", "8", "--prompt", "2048",
             "--out", str(out)])
    assert r.returncode == 0, r.stderr
    for name in ("breakdown", "families", "memory", "roofline"):
        data = (out / f"{name}.png").read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000
    saved = json.loads((out / "explain.json").read_text())
    assert saved["prediction"]["gpu"] == "h100-sxm" and saved["ops"]
    for text in ("prefill", "decode", "gate_up_proj", "time by op family", "memory per GPU", "roofline of h100-sxm",
                 "TFLOP/s"):
        assert text in r.stdout
    assert any(src in r.stdout for src in ("measured", "interpolated", "analytical"))  # provenance shown
    assert "breakdown.png" in r.stdout


def test_explain_svg_and_json_output(tmp_path):
    r = run(["explain", "--model", "Qwen/Qwen2.5-0.5B", "--gpu", "h200", "--batch", "2", "--prompt", "256",
             "--out", str(tmp_path), "--format", "svg", "--json"])
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert set(d) == {"prediction", "ops", "families", "memory", "roofline"}
    assert d["prediction"]["batch"] == 2 and d["prediction"]["context"] == 256
    assert (tmp_path / "roofline.svg").read_text().lstrip().startswith("<?xml")


@pytest.mark.parametrize("args, needle", [
    (["--gpu", "h100", "--tp", "3"], "valid tp"),
    (["--gpu", "no-such-gpu"], "unknown GPU"),
    (["--gpu", "h100", "--batch", "0"], "batch"),
    (["--gpu", "h100", "--prompt", "999999999"], "max_position_embeddings"),
])
def test_explain_bad_input_is_one_line(args, needle):
    r = run(["explain", "--model", CASE["model"], *args])
    assert r.returncode == 1
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_missing_matplotlib_says_how_to_install(monkeypatch, eager_tp2, tmp_path):
    from perfcast.report import plots

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    with pytest.raises(plots.PlotUnavailable, match=r"perfcast\[plot\]"):
        plots.write_figures(eager_tp2, tmp_path)
