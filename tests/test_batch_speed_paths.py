"""The fast batch paths give the very numbers (and bytes) of the plain ones.

- A mixed file (many deployments, error lines interleaved) predicted as one batch equals every line
  predicted alone, as dicts and as the JSON text the CLI prints, in one process and shared with a forked one.
- The runtimes on stacked (ops, points) arrays equal the op-by-op runtimes.
- GEMM tiling with split-K pruned where it cannot win equals trying every kernel.
- ``interp.unique`` equals ``np.unique``.
"""

import json
import random
import sys

import numpy as np
import pytest

from perfcast.batch import dumps, predict_lines, predict_lines_json

MODELS = ["meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.2-1B", "Qwen/Qwen2.5-14B", "google/gemma-2-9b",
          "mistralai/Mixtral-8x7B-v0.1", "deepseek-ai/DeepSeek-V2-Lite", "Qwen/Qwen3-8B"]
GPUS = ["h100-sxm", "h200", "a100-80gb", "l40s", "b200"]
BAD = ["", "not json", "[1, 2]", "{", "\ufeff{}", '{"model": NaN}', '{"gpu": "h100"}',
       '{"model": "meta-llama/Llama-3.1-8B", "gpu": "h100", "batch": 0}',
       '{"model": "meta-llama/Llama-3.1-8B", "gpu": "h100", "tp": true}',
       '{"model": "meta-llama/Llama-3.1-8B", "gpu": "h100", "tp": 3}',
       '{"model": "meta-llama/Llama-3.1-8B", "gpu": "nope"}',
       '{"model": "meta-llama/Llama-3.1-8B", "gpu": "h100", "prompt": 1000000}',
       '{"model": "meta-llama/Llama-3.1-8B", "gpu": "a100-80gb", "dtype": "fp8"}',
       '{"model": "meta-llama/Llama-3.1-8B", "gpu": "h100", "moe_imbalance": -0.0}',
       '{"model": "meta-llama/Llama-3.1-8B", "gpu": "h100", "moe_imbalance": 0}',
       '{"model": "meta-llama/Llama-3.1-8B", "gpu": "h100", "batch": 2.0, "tp": 2.0}']


def mixed_lines(n=400, seed=3):
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        if rng.random() < 0.15:
            lines.append(rng.choice(BAD))
            continue
        m = rng.choice(MODELS)
        d = {"model": m, "gpu": rng.choice(GPUS), "batch": rng.randint(1, 64), "prompt": rng.randint(1, 4096),
             "context": rng.randint(1, 8192), "tp": rng.choice([1, 2])}
        d["runtime"] = rng.choice(["cuda-graph", "eager"])  # MoE under eager too: host time is per point
        if rng.random() < 0.2:
            d["profile"] = "none"
        if rng.random() < 0.1:
            d["dtype"] = "fp16"
        if rng.random() < 0.05:
            d["breakdown"] = True
        lines.append(json.dumps(d))
    return lines


@pytest.fixture(scope="module")
def lines():
    return mixed_lines()


@pytest.fixture(scope="module")
def alone(lines):
    return [predict_lines([ln])[0][0] for ln in lines]


def test_batch_equals_each_line_alone(lines, alone):
    out, ok = predict_lines(lines)
    assert not ok
    assert out == alone
    assert [type(v) for o in out for v in o.values()] == [type(v) for o in alone for v in o.values()]
    assert sum("error" in o for o in out) > 20 and sum("error" not in o for o in out) > 200


@pytest.mark.parametrize("workers", [1, 2])
def test_json_text_is_dumps_of_each_line_alone(lines, alone, workers):
    texts, ok = predict_lines_json(lines, workers=workers)
    assert not ok
    assert texts == [dumps(o) for o in alone]


def test_fork_is_used_only_where_it_can_help(monkeypatch):
    from perfcast import batch

    monkeypatch.setenv("PERFCAST_WORKERS", "1")
    assert batch.workers_for(10**6) == 1
    monkeypatch.delenv("PERFCAST_WORKERS")
    assert batch.workers_for(10) == 1


# ----------------------------------------------------------------------------- runtimes
def _random_step(rng, n):
    from perfcast.ops.base import Op, OpCost

    ops, costs = [], []
    for group, count in [("pre", 1)] + [("layer", int(rng.integers(1, 80)))] * int(rng.integers(1, 12)) + [
            ("post", 1)] * int(rng.integers(0, 3)):
        meta = {"kernels": int(rng.integers(1, 4)), "strided": bool(rng.random() < 0.3)}
        # host dispatch per op: a constant, or (MoE expert ops) one count per point
        host_ops = float(rng.integers(1, 15)) if rng.random() < 0.8 else rng.uniform(1, 40, n)
        ops.append(Op("op", "elementwise", {}, count, "bf16", None, group, host_ops=host_ops, meta=meta))
        sec = np.exp(rng.normal(-11, 2.5, n)) * rng.choice([1.0, 1e-3], n)
        costs.append(OpCost.of(sec, rng.integers(0, 5, n), rng.integers(0, 3, n), 1.0, 1.0))
    return ops, costs


@pytest.mark.parametrize("name", ["cuda-graph", "eager"])
def test_stacked_runtimes_equal_op_by_op(name, monkeypatch):
    from perfcast.ops.base import Op, OpCost
    from perfcast.profiles import HostModel
    from perfcast.step import runtime

    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.integers(1, 300))
        ops, costs = _random_step(rng, n)
        host = HostModel(per_op_s=float(rng.uniform(1e-6, 2e-5)), per_layer_s=float(rng.uniform(0, 3e-5)),
                         per_step_s=float(rng.uniform(0, 1e-3)), graph_launch_s=float(rng.uniform(0, 3e-5)),
                         graph_kernel_discount_s=float(rng.uniform(0, 3e-6)),
                         graph_kernel_min_s=float(rng.uniform(5e-7, 2e-6)),
                         strided_elem_factor=float(rng.uniform(1, 1.5)))
        fast = runtime.get_runtime(name)(ops, costs, host, None)
        assert fast.stacked is not None
        with monkeypatch.context() as m:
            m.setattr(runtime, "_points", lambda costs: None)
            slow = runtime.get_runtime(name)(ops, costs, host, None)
        assert slow.stacked is None
        for f in ("seconds", "gpu_seconds", "host_seconds", "host_bound"):
            assert np.array_equal(getattr(fast, f), getattr(slow, f)), (trial, f)
        if name == "eager":  # each point alone gives what the stacked run gives it
            for j in (0, n - 1):
                one = [OpCost.of(c.seconds[j:j + 1], c.bound[j:j + 1], c.source[j:j + 1], 1.0, 1.0) for c in costs]
                ops1 = [o if np.ndim(o.host_ops) == 0 else
                        Op(o.name, o.kind, o.dims, o.count, o.dtype, o.wdtype, o.group,
                           host_ops=float(o.host_ops[j]), meta=o.meta) for o in ops]
                alone = runtime.get_runtime(name)(ops1, one, host, None)
                assert np.allclose(alone.seconds, fast.seconds[j:j + 1], rtol=1e-12), (trial, j)
        for a, b in zip(fast.op_seconds, slow.op_seconds):
            assert np.array_equal(a, b)
        for a, b in zip(fast.op_bound, slow.op_bound):
            assert np.array_equal(a, np.broadcast_to(b, a.shape))


# ----------------------------------------------------------------------------- GEMM tiling, unique
@pytest.mark.parametrize("gpu", ["h100-sxm", "a100-80gb", "l4", "b200"])
def test_gemm_tiling_pruned_equals_every_kernel(gpu):
    from perfcast.hardware import get_gpu
    from perfcast.ops import analytical as an

    g = get_gpu(gpu)
    rng = np.random.default_rng(1)
    per_sm = g.flops("bf16") * an.PRIOR.gemm_compute / g.sm_count
    for _ in range(200):
        n = int(rng.choice([8, 128, 1024, 4096, 14336, 128256, int(rng.integers(1, 200000))]))
        k = int(rng.choice([64, 256, 1000, 4096, 8192, int(rng.integers(1, 60000))]))
        m = np.concatenate([rng.integers(1, 512, 100), rng.integers(1, 4_000_000, 300), 2 ** np.arange(0, 30)])
        m = m.astype(float)
        got = an.gemm_compute_time(g, m, n, k, "bf16", an.PRIOR)
        want = an._best_tiling(m, n, k, g.sm_count, per_sm, an._candidates(k))
        assert np.array_equal(got, want), (n, k)


def test_unique_equals_numpy():
    from perfcast.profiles.interp import unique

    rng = np.random.default_rng(2)
    for a in (rng.integers(0, 50, 1000), rng.normal(size=500), np.array([3.0]), np.arange(10)[::-1],
              rng.integers(0, 5, (30, 40)), np.array([], dtype=float)):
        u, inv = unique(a, return_inverse=True)
        nu, ninv = np.unique(a, return_inverse=True)
        assert np.array_equal(u, nu) and np.array_equal(inv, np.ravel(ninv))


def test_no_numpy_ma_at_predict(tmp_path):
    """np.unique imports numpy.ma (a tenth of a second of start-up); the batch path must not need it."""
    import subprocess

    code = ("import sys, json; from perfcast.batch import predict_lines_json; "
            "predict_lines_json([json.dumps({'model': 'meta-llama/Llama-3.1-8B', 'gpu': 'h100-sxm'})] * 300); "
            "print('numpy.ma' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "False", r.stderr[-500:]


def test_read_csv_equals_dictreader(tmp_path):
    import csv

    from perfcast.profiles.measured import _read_csv

    rng = random.Random(4)
    for trial in range(300):
        rows = [",".join(str(rng.randint(0, 9)) for _ in range(rng.randint(0, 5))) for _ in range(rng.randint(0, 6))]
        p = tmp_path / f"t{trial}.csv"
        p.write_text("\n".join(rows) + rng.choice(["", "\n", "\n\n", "\r\n"]))
        with open(p, newline="") as f:
            assert _read_csv(p) == list(csv.DictReader(f)), p.read_text()


def test_forked_child_failing_is_redone_by_the_parent(lines):
    import os

    from perfcast import batch

    plan = batch._Plan()
    plan.add(lines)
    items = [(k, plan.configs[k], tuple(zip(*rows))) for k, rows in plan.groups.items() if rows]
    parent = os.getpid()

    def emit(cfg, res, cols):
        if os.getpid() != parent:
            os._exit(3)  # the child dies mid-way
        return batch._group_texts(cfg, res, cols)

    assert batch._emit_forked(items, emit) == batch._emit_groups(items, batch._group_texts)


def test_gemm_blends_kept_on_disk_give_the_same_numbers(tmp_path):
    """Unmeasured GEMM shapes are blended once and the blends kept next to the table cache: a second
    process loads them and predicts the very same bytes."""
    import os
    import subprocess

    code = ("import json, sys; from perfcast.batch import predict_lines_json; "
            "lines = [json.dumps({'model': m, 'gpu': g, 'batch': 3, 'prompt': 700, 'context': 900}) "
            "for m in ('google/gemma-2-9b', 'Qwen/Qwen2.5-14B') for g in ('h100-sxm', 'l40s')]; "
            "print('\\n'.join(predict_lines_json(lines)[0]))")
    env = {**os.environ, "PERFCAST_CACHE_DIR": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert list(tmp_path.glob("*-blends.pkl")), first.stderr[-500:]
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert first.stdout and first.stdout == second.stdout
