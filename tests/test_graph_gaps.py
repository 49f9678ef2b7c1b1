"""In-graph gaps (host.json ``graph_gap_s``, fitted by benchmarks/fit_graph_gap.py): a breakdown under
``cuda-graph`` shows each op's own kernel time and leaves the gaps to the time no op accounts for; the
step time does not change."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import perfcast
from perfcast.step.predict import StepConfig, _graph_gaps, _phase, make_config

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_gap_is_the_fitted_median_of_the_step_profiles():
    from benchmod import load_bench

    fit = load_bench("fit_graph_gap").gaps()
    for gpu in ("h100-sxm", "h200"):
        host = json.loads((ROOT / "src/perfcast/profiles/data" / gpu / "host.json").read_text())
        g = host["runtimes"]["cuda-graph"]["graph_gap_s"]
        assert g == pytest.approx(float(np.median([x for _, x in fit[gpu]])), abs=1e-9)  # written to 1 ns
        assert 0.3e-6 < g < 1.0e-6  # measured 0.55-0.61 us per kernel


@pytest.mark.parametrize("runtime", ["cuda-graph", "eager"])
def test_breakdown_moves_the_gaps_out_of_the_ops_and_keeps_the_step(runtime):
    kw = dict(batch=8, prompt=1024, context=2048, runtime=runtime)
    p = perfcast.predict("meta-llama/Llama-3.1-8B", "h100-sxm", breakdown=True, **kw)
    assert p.decode_ms == pytest.approx(perfcast.predict("meta-llama/Llama-3.1-8B", "h100-sxm", **kw).decode_ms)
    cfg = make_config("meta-llama/Llama-3.1-8B", "h100-sxm", 1, 1, "bf16", runtime, "auto")
    ops, _, rt, prof = _phase(cfg, "decode", 8, 1024, 2048)
    gaps = _graph_gaps(cfg, prof, ops)
    charged = sum(float(np.asarray(s)) * o.count for o, s in zip(ops, rt.op_seconds)) * 1e3
    shown = sum(r["ms"] for r in p.breakdown if r["phase"] == "decode")
    gap_ms = sum(g * o.count for g, o in zip(gaps, ops)) * 1e3
    if runtime == "cuda-graph":
        g = prof.host("cuda-graph").graph_gap_s
        kernels = sum(o.count * o.meta.get("kernels", 1) for o in ops if o.kind != "host")
        assert gap_ms == pytest.approx(g * kernels * 1e3)
        assert gap_ms > 0.02 * p.decode_ms  # a few percent of a decode step at these sizes
    else:
        assert gap_ms == 0.0
    assert shown == pytest.approx(charged - gap_ms, rel=1e-9)


def test_no_gap_without_a_fitted_value():
    cfg = make_config("meta-llama/Llama-3.1-8B", "h100-sxm", 1, 1, "bf16", "cuda-graph", "auto")
    ops, _, _, prof = _phase(cfg, "decode", 1, 512, 512)
    bare = replace(prof.host("cuda-graph"), graph_gap_s=0.0)

    class P:  # the profile with a host model that has no gap
        def host(self, _key):
            return bare

    assert isinstance(cfg, StepConfig)
    assert all(g == 0.0 for g in _graph_gaps(cfg, P(), ops))
