"""perfcast measure's side-by-side report, on shipped measured lines (no GPU needed)."""

import json
from pathlib import Path

import pytest

from perfcast.measure.compare import compare_lines, format_rows

DATA = Path(__file__).resolve().parents[1] / "benchmarks" / "data"


def test_compare_reports_error_of_each_measured_phase():
    lines = [json.loads(x) for x in (DATA / "h200-run1" / "step_single.jsonl").read_text().splitlines()][:5]
    rows = compare_lines(lines)
    assert rows and all(r["gpu"] == "h200" for r in rows)
    for r in rows:
        assert r["error_pct"] == pytest.approx((r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] * 100)
    text = format_rows(rows)
    assert "MAPE" in text and "measured" in text


def test_compare_keeps_error_lines_and_layer_overrides():
    rows = compare_lines([{"error": "oom", "model": "x", "case": 3},
                          {"model": "meta-llama/Llama-3.2-1B", "gpu_id": "h100-sxm", "batch": 1, "prompt": 16,
                           "context": 16, "runtime": "cuda-graph", "layers": 2, "decode_ms": 0.4}])
    assert rows[0]["error"] == "oom"
    full = compare_lines([{"model": "meta-llama/Llama-3.2-1B", "gpu_id": "h100-sxm", "batch": 1, "prompt": 16,
                           "context": 16, "runtime": "cuda-graph", "decode_ms": 0.4}])
    assert rows[1]["predicted_ms"] < full[0]["predicted_ms"] / 4  # 2 of 16 layers
