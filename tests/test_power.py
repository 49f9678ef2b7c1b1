"""The sustained-load power model: formula, where it applies, and its fit on the shipped H100 data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from perfcast.hardware import get_gpu
from perfcast.profiles import PowerModel
from perfcast.profiles.registry import resolve_profile

ROOT = Path(__file__).resolve().parents[1]


def test_factor_by_hand():
    pm = PowerModel(cap_frac=0.5, knee=2.0)
    # rate 1000 FLOP/s against a cap of 0.5 * 1000: (1 + 2^2)^(1/2)
    assert float(pm.factor(1000.0, 1.0, 1000.0)) == pytest.approx(5 ** 0.5, rel=1e-12)
    f = pm.factor(np.array([1.0, 1e6]), np.array([1.0, 1.0]), 1000.0)
    assert f[0] == pytest.approx(1.0, abs=1e-5)  # far below the cap: unchanged
    assert f[1] == pytest.approx(1e6 / 500.0, rel=1e-5)  # far above: runs at the cap
    assert PowerModel().factor(1e15, 1e-3, 1e15) == 1.0  # cap_frac 0: off
    assert float(pm.factor(1.0, 0.0, 1000.0)) == 1.0  # a zero-time op is left alone


def test_sustained_applies_to_busy_tensor_core_kernels_only():
    prof = resolve_profile(get_gpu("h100-sxm"), "auto")
    assert prof.power.cap_frac > 0
    big = prof.gemm(8192, 8192, 8192)
    r = float(prof.sustained(big, "bf16").seconds) / float(big.seconds)
    assert 1.08 < r < 1.30  # near the tensor-core peak alone: slowed by the 700 W cap
    small = prof.gemm(1, 4096, 4096)  # a decode GEMV reads weights at a few TFLOP/s
    assert float(prof.sustained(small, "bf16").seconds) == pytest.approx(float(small.seconds), rel=1e-6)
    fp8 = prof.gemm(8192, 8192, 8192, "fp8")  # FP8 near its own peak: under the FP8 cap (measured 1.18x)
    assert prof.power.fp8_cap_frac > 0
    assert 1.10 < float(prof.sustained(fp8, "fp8").seconds) / float(fp8.seconds) < 1.30
    fp8_small = prof.gemm(16, 4096, 4096, "fp8")
    assert float(prof.sustained(fp8_small, "fp8").seconds) == pytest.approx(float(fp8_small.seconds), rel=1e-4)
    w4 = prof.gemm(8192, 8192, 8192, "bf16", "int4")
    assert prof.sustained(w4, "bf16", "int4") is w4


def test_step_gemms_carry_the_power_cap():
    from perfcast.models import get_model
    from perfcast.models.builder import GRAPH_LAYOUT, StepShape, build_ops
    from perfcast.step.costs import step_costs

    gpu = get_gpu("h200")
    prof = resolve_profile(gpu, "auto")
    assert "h200-run13" in prof.power.source  # the H200's own fit (its settled grid against h200-run8's sample)
    ops = build_ops(get_model("meta-llama/Llama-3.1-8B"), StepShape("prefill", np.asarray(8), np.asarray(4096),
                                                                     np.asarray(4096)), 1, "bf16", GRAPH_LAYOUT)
    i = next(i for i, o in enumerate(ops) if o.kind == "gemm" and o.dims["n"] == 28672)
    alone = prof.gemm(ops[i].dims["m"], ops[i].dims["n"], ops[i].dims["k"])
    assert float(step_costs(ops, gpu, prof)[i].seconds) > 1.05 * float(alone.seconds)


def _step(kinds_rates, prof):
    """Ops with hand-set costs: (kind, dtype, count, seconds, flops) each."""
    from perfcast.ops.base import Op, OpCost

    ops, costs = [], []
    for kind, dt, count, sec, fl in kinds_rates:
        dims = {"m": 1, "n": 1, "k": 1} if kind == "gemm" else {"op": "add", "tokens": 1, "width": 1}
        ops.append(Op(kind, kind, dims, count, dt))
        costs.append(OpCost.of(np.asarray(sec), 0, 0, np.asarray(fl), 0.0))
    return ops, costs


def test_step_power_factor_by_hand():
    """The step's mean demand: FLOPs over the dtype's cap rate, per second of the layers' kernel time."""
    from perfcast.step.costs import step_power, step_power_factor

    prof = resolve_profile(get_gpu("h100-sxm"), "auto")
    pm, gpu = prof.power, prof.gpu
    c16, c8 = pm.cap_frac * gpu.flops("bf16"), pm.fp8_cap_frac * gpu.flops("fp8")
    # one GEMM at exactly the bf16 cap rate for 1 ms, 40 times: x = 1, factor 2^(1/knee)
    ops, costs = _step([("gemm", "bf16", 40, 1e-3, c16 * 1e-3)], prof)
    assert float(step_power_factor(ops, costs, prof)) == pytest.approx(2 ** (1 / pm.knee), rel=1e-12)
    # an elementwise kernel as long as the GEMM halves the mean demand; the GEMM runs f slower, the
    # elementwise kernel (timed alone at full clock) 1 + gamma (f - 1)
    ops, costs = _step([("gemm", "bf16", 40, 1e-3, c16 * 1e-3), ("elementwise", "bf16", 40, 1e-3, 0.0)], prof)
    f = (1 + 0.5 ** pm.knee) ** (1 / pm.knee)
    assert float(step_power_factor(ops, costs, prof)) == pytest.approx(f, rel=1e-12)
    got = step_power(ops, costs, prof)
    assert pm.clock_gamma == pytest.approx((1980 / 1605 - 1) / (1890 / 1605 - 1), abs=1e-3)  # 1.316, power.json
    assert [float(c.seconds) for c in got] == pytest.approx([1e-3 * f, 1e-3 * (1 + pm.clock_gamma * (f - 1))],
                                                            rel=1e-12)
    # FP8 GEMMs against the FP8 cap: half the FP8 cap's rate plus a bf16 GEMM at half the bf16 cap
    ops, costs = _step([("gemm", "fp8", 1, 1e-3, 0.5 * c8 * 1e-3), ("gemm", "bf16", 1, 1e-3, 0.5 * c16 * 1e-3)], prof)
    assert float(step_power_factor(ops, costs, prof)) == pytest.approx(f, rel=1e-12)
    # no power model (profile none on an unmeasured GPU keeps the learned one; the alone profile has none)
    assert step_power_factor(ops, costs, prof.alone()) == 1.0
    assert step_power(ops, costs, prof.alone()) is costs


def test_step_power_state_properties():
    """Decode steps (memory-bound) stay at full clock; a prefill's GEMMs are slowed less than the per-kernel
    cap would (they share the budget with attention and memory-bound kernels), and the other kernels
    more; points of a sweep each get their own factor."""
    from perfcast.models import get_model
    from perfcast.models.builder import GRAPH_LAYOUT, StepShape, build_ops
    from perfcast.step.costs import op_cost, step_power_factor

    gpu = get_gpu("h100-sxm")
    prof = resolve_profile(gpu, "auto")
    spec = get_model("meta-llama/Llama-3.1-8B")
    dec = build_ops(spec, StepShape("decode", np.asarray([1, 64]), np.asarray(1), np.asarray(2049)), 1, "bf16",
                    GRAPH_LAYOUT)
    f = step_power_factor(dec, [op_cost(o, gpu, prof) for o in dec], prof)
    assert np.all(f < 1.005)
    pre = build_ops(spec, StepShape("prefill", np.asarray([1, 8]), np.asarray([128, 4096]), np.asarray([128, 4096])),
                    1, "bf16", GRAPH_LAYOUT)
    costs = [op_cost(o, gpu, prof) for o in pre]
    f = step_power_factor(pre, costs, prof)
    assert f.shape == (2,) and 1.0 < f[0] < f[1] < 1.2
    per_kernel = [float(np.ravel(prof.sustained(c, "bf16").seconds / c.seconds)[1]) for o, c in zip(pre, costs)
                  if o.kind == "gemm" and o.group == "layer"]
    assert f[1] < max(per_kernel)


# alone: the settled grid each shipped GEMM table is; sustained: a 10% sample run back to back
# (gpu, alone grid, sustained sample, fitted (cap, knee), bound on the residual with the model, floor without)
SHIPPED_FITS = [
    ("h100-sxm", "h100-run21/calib_gemm_settle", "h100-run8/gemm_sustain", (0.94, 3.0), 0.04, 0.075),  # 3.4 vs 8.3%
    ("h200", "h200-run13/calib_gemm_settle", "h200-run8/gemm_sustain", (0.885, 3.0), 0.035, 0.09),  # 2.9 vs 10.2%
]


@pytest.mark.parametrize("gpu_id,alone,sustained,cap_knee,with_max,without_min", SHIPPED_FITS)
def test_fit_reproduces_the_shipped_power_model(gpu_id, alone, sustained, cap_knee, with_max, without_min):
    from perfcast.profiles import power_fit

    d = ROOT / "benchmarks" / "data"
    pairs = power_fit.pairs(d / alone / "gemm.csv", d / sustained / "gemm.csv", 0.02)
    gpu = get_gpu(gpu_id)
    cap, knee, _ = power_fit.fit(pairs, gpu.flops("bf16"))
    shipped = json.loads((ROOT / "src/perfcast/profiles/data" / gpu_id / "power.json").read_text())
    assert (cap, knee) == pytest.approx((shipped["cap_frac"], shipped["knee"]))
    assert (cap, knee) == pytest.approx(cap_knee)
    flops, ta, ts = pairs.T
    f = PowerModel(cap_frac=cap, knee=knee).factor(flops, ta, gpu.flops("bf16"))
    assert np.mean(np.abs(ta * f / ts - 1)) < with_max and np.mean(np.abs(ta / ts - 1)) > without_min


# FP8: the settled grid and a fifth of it sustained, on the same GPU (extras fp8same / fp8sus)
FP8_FITS = [("h100-sxm", "h100-run23", (0.80, 3.0)), ("h200", "h200-run15", (0.775, 3.0))]  # 4.0 vs 12.4%, 3.5 vs 14.4%


@pytest.mark.parametrize("gpu_id,run,cap_knee", FP8_FITS)
def test_fp8_fit_reproduces_the_shipped_fp8_cap(gpu_id, run, cap_knee):
    from perfcast.profiles import power_fit

    d = ROOT / "benchmarks" / "data" / run
    gpu = get_gpu(gpu_id)
    pairs = power_fit.pairs(d / "extras_fp8same_settle" / "gemm_fp8_dense_same.csv",
                            d / "extras_fp8sus" / "gemm_fp8_sustain.csv", 0.02, ("fp8",))
    assert len(pairs) >= 250
    cap, knee, _ = power_fit.fit(pairs, gpu.flops("fp8"))
    shipped = json.loads((ROOT / "src/perfcast/profiles/data" / gpu_id / "power.json").read_text())["fp8"]
    assert (cap, knee) == pytest.approx((shipped["cap_frac"], shipped["knee"]))
    assert (cap, knee) == pytest.approx(cap_knee)
    flops, ta, ts = pairs.T
    f = PowerModel(fp8_cap_frac=cap, fp8_knee=knee).factor(flops, ta, gpu.flops("fp8"), "fp8")
    assert np.mean(np.abs(ta * f / ts - 1)) < 0.045 and np.mean(np.abs(ta / ts - 1)) > 0.11
    # the bf16 cap leaves FP8 alone and the FP8 cap leaves bf16 alone
    assert PowerModel(cap_frac=0.9, knee=3.0).factor(flops, ta, gpu.flops("fp8"), "fp8") == 1.0
    assert PowerModel(fp8_cap_frac=0.8, fp8_knee=3.0).factor(flops, ta, gpu.flops("bf16")) == 1.0


def test_power_json_sections_are_written_apart(tmp_path):
    from perfcast.profiles import power_fit
    from perfcast.profiles.measured import load_power

    p = tmp_path / "power.json"
    with pytest.raises(ValueError, match="no main"):
        power_fit.write({"cap_frac": 0.8, "knee": 3.0}, p, "fp8")
    power_fit.write({"cap_frac": 0.9, "knee": 4.0}, p)
    power_fit.write({"cap_frac": 0.8, "knee": 3.0}, p, "fp8")
    power_fit.write({"cap_frac": 0.95, "knee": 4.0}, p)  # a bf16 refit keeps the fp8 section
    pm = load_power(tmp_path)
    assert (pm.cap_frac, pm.knee, pm.fp8_cap_frac, pm.fp8_knee) == (0.95, 4.0, 0.8, 3.0)
    with pytest.raises(ValueError, match=r"bf16 .* or fp8"):
        power_fit.fit_files(p, p, get_gpu("h100-sxm"), dtype="int8")


def test_fit_refuses_too_few_pairs(tmp_path):
    from perfcast.profiles import power_fit

    head = "dtype,m,n,k,median_ms,min_ms,p90_ms,reps\n"
    (tmp_path / "a.csv").write_text(head + "bf16,4096,4096,4096,0.2,0.2,0.2,5\n")
    (tmp_path / "s.csv").write_text(head + "bf16,4096,4096,4096,0.22,0.22,0.22,5\n")
    with pytest.raises(ValueError, match="only 1 bf16 GEMMs"):
        power_fit.fit_files(tmp_path / "a.csv", tmp_path / "s.csv", get_gpu("h100-sxm"))


def test_calibrate_power_fits_power_json_from_the_two_timings(tmp_path, monkeypatch):
    """`calibrate --power` wiring, without a GPU: the sustained sample's calibration is replaced by the
    shipped H100 measurements, and the fit lands in the profile's power.json as shipped."""
    import shutil

    from perfcast.measure import calibrate as cal

    run = ROOT / "benchmarks" / "data" / "h100-run8"
    shutil.copyfile(ROOT / "benchmarks" / "data" / "h100-run21" / "calib_gemm_settle" / "gemm.csv", tmp_path / "gemm.csv")
    seen = {}

    def fake(out, **kw):
        seen.update(kw)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / "gemm_sustain" / "gemm.csv", out / "gemm.csv")
        return {"gpu_id": "h100-sxm"}

    monkeypatch.setattr(cal, "calibrate", fake)
    got = cal._calibrate_power(tmp_path, seed=0, progress=False)
    assert seen["sustain_ms"] == 100.0 and seen["subset"] == 0.1 and seen["only"] == "gemm"
    written = json.loads((tmp_path / "power.json").read_text())
    shipped = json.loads((ROOT / "src/perfcast/profiles/data/h100-sxm/power.json").read_text())
    assert got == {"cap_frac": shipped["cap_frac"], "knee": shipped["knee"]}
    assert written["cap_frac"] == shipped["cap_frac"]
    prof = resolve_profile(get_gpu("h100-sxm"), str(ROOT / "src/perfcast/profiles/data/h100-sxm"))
    assert prof.power.cap_frac == shipped["cap_frac"]


def test_op_answers_the_kernel_alone_and_steps_the_capped_one():
    """`perfcast op` gives a measured shape its measured (alone) time; inside a step the same GEMM is
    slower under the power cap; the alone profile keeps its identity (batch mode groups by it)."""
    import csv

    import perfcast
    from perfcast.ops.base import Op
    from perfcast.step.costs import op_cost, step_costs

    row = next(r for r in csv.DictReader(open(ROOT / "src/perfcast/profiles/data/h100-sxm/gemm.csv"))
               if (r["dtype"], r["m"], r["n"], r["k"]) == ("bf16", "4096", "4096", "4096"))
    got = perfcast.predict_op("gemm", "h100-sxm", m=4096, n=4096, k=4096)
    assert got.ms == pytest.approx(float(row["median_ms"]), rel=1e-9) and got.source == "measured"
    gpu = get_gpu("h100-sxm")
    prof = resolve_profile(gpu, "auto")
    op = Op("gemm", "gemm", {"m": 4096, "n": 4096, "k": 4096})
    assert float(op_cost(op, gpu, prof).seconds) * 1e3 == pytest.approx(got.ms, rel=1e-9)  # op_cost: alone
    (in_step,) = step_costs([op], gpu, prof)  # a step of this GEMM alone: under the cap
    assert float(in_step.seconds) * 1e3 > 1.03 * got.ms
    assert prof.alone() is prof.alone() and prof.alone().power.cap_frac == 0


def test_calibrate_fp8_writes_the_table_and_fits_the_fp8_cap(tmp_path):
    """`calibrate --fp8 --power` wiring, without a GPU: the FP8 measurement is replaced by the shipped H100
    settled grid and its sustained sample (h100-run23); the table lands as gemm_fp8_dense.csv and the fit
    in power.json's fp8 section beside the main cap, as shipped."""
    import shutil

    from perfcast.measure import calibrate as cal
    from perfcast.profiles.measured import load_power

    run = ROOT / "benchmarks" / "data" / "h100-run23"
    (tmp_path / "power.json").write_text(json.dumps({"cap_frac": 0.94, "knee": 3.0}))
    seen = {}

    def fake(out, settle_ms, sustained):
        seen.update(settle_ms=settle_ms, sustained=sustained)
        shutil.copyfile(run / "extras_fp8same_settle" / "gemm_fp8_dense_same.csv", out / "gemm_fp8_dense.csv")
        (out / "power_sustained").mkdir()
        shutil.copyfile(run / "extras_fp8sus" / "gemm_fp8_sustain.csv", out / "power_sustained" / "gemm_fp8_sustain.csv")
        return {"grid": 1440, "sustained": 288}

    got = cal._calibrate_fp8(tmp_path, True, 20.0, False, "h100-sxm", measure=fake)
    assert seen == {"settle_ms": 20.0, "sustained": True}
    shipped = json.loads((ROOT / "src/perfcast/profiles/data/h100-sxm/power.json").read_text())["fp8"]
    assert (got["cap_frac"], got["knee"]) == (shipped["cap_frac"], shipped["knee"])
    pm = load_power(tmp_path)
    assert (pm.cap_frac, pm.fp8_cap_frac) == (0.94, shipped["cap_frac"])
    # no FP8 tensor cores: the error is recorded, nothing written
    def no_fp8(out, settle_ms, sustained):
        raise RuntimeError("no FP8 tensor cores on A100 (sm_80; FP8 needs sm_89+)")
    assert cal._calibrate_fp8(tmp_path, True, 20.0, False, "a100", measure=no_fp8) == {
        "error": "no FP8 tensor cores on A100 (sm_80; FP8 needs sm_89+)"}


def test_calibrate_power_refuses_grids_it_cannot_fit():
    """--power with --quick timed 5 of the 698 sustained shapes on an H100 (h100-run28: no fit); it is
    refused up front, with the way out in the message."""
    from perfcast.measure import calibrate as cal

    for kw in ({"quick": True}, {"heldout": True}):
        with pytest.raises(ValueError, match="drop --quick/--heldout"):
            cal.calibrate("/tmp/perfcast-never-written", power=True, **kw)
    assert cal.main(["--out", "/tmp/perfcast-never-written", "--quick", "--power"]) == 2
