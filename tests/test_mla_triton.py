"""The fused MLA decode kernel of the ``mlatriton`` extras part (perfcast.measure.mla_triton): its split and
combine arithmetic in torch against plain attention, the split count's properties, and the Triton kernel
itself, run by the Triton interpreter on CPU tensors and compiled for sm_90 without a GPU (those two skipped
where triton is not installed)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from perfcast.measure import mla_triton as mt

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("B", "H", "S", "R", "P", "splits", "block_n"), [
    (2, 4, 50, 64, 16, 3, 16),  # S not a multiple of the block; the last split short
    (1, 16, 7, 64, 16, 4, 16),  # fewer keys than one block: one split whatever is asked
    (3, 16, 300, 512, 64, 5, 32),
    (2, 128, 129, 512, 64, 64, 32),  # more splits asked than key blocks
    (1, 4, 200, 32, 16, 1, 64),
])
def test_split_reference_equals_plain_attention(B, H, S, R, P, splits, block_n):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    q, cache = torch.randn(B, H, R + P) * 2, torch.randn(B, S, R + P)
    scale = (R + P) ** -0.5
    ref = mt.attention_reference(q, cache, scale, R)
    out = mt.split_reference(q, cache, scale, splits, block_n, R)
    assert out.shape == (B, H, R)
    assert torch.allclose(out, ref, atol=2e-6, rtol=1e-5)
    # and the reference itself: plain softmax attention, the cache's first R channels as values
    p = torch.softmax(torch.einsum("bhd,bsd->bhs", q, cache) * scale, -1)
    assert torch.allclose(ref, torch.einsum("bhs,bsr->bhr", p, cache[..., :R]), atol=2e-6)


@pytest.mark.parametrize("keys", [1, 31, 32, 33, 100, 1025, 4097, 16385])
@pytest.mark.parametrize("asked", [1, 2, 7, 64, 1000])
def test_split_plan_leaves_no_split_empty(keys, asked):
    for block_n in (16, 32, 64):
        per, splits = mt.split_plan(keys, asked, block_n)
        assert per % block_n == 0 and 1 <= splits <= asked
        assert (splits - 1) * per < keys <= splits * per  # every split has keys, together all of them


@pytest.mark.parametrize("heads", [4, 16, 128])
@pytest.mark.parametrize("batch", [1, 3, 8, 32, 128])
@pytest.mark.parametrize("keys", [1, 40, 100, 1025, 4097, 16385])
def test_pick_splits(heads, batch, keys):
    for sm in (108, 132):
        for cfg in mt.configs_for(heads):
            n = mt.pick_splits(batch, heads, keys, sm, cfg)
            blocks = math.ceil(keys / cfg.block_n)
            programs = batch * math.ceil(heads / cfg.block_h)
            assert 1 <= n <= blocks
            assert mt.split_plan(keys, n, cfg.block_n)[1] == n  # already normalized: the kernel runs n splits
            if blocks < 2 * mt.MIN_SPLIT_BLOCKS:
                assert n == 1  # a short context is not split
            elif blocks >= mt.MIN_SPLIT_BLOCKS * math.ceil(mt.WAVES * sm / programs):
                assert programs * n >= sm  # enough keys: at least one full wave of programs
            if n > 1:  # every split keeps a few key blocks (the last may be short)
                assert mt.split_plan(keys, n, cfg.block_n)[0] >= mt.MIN_SPLIT_BLOCKS * cfg.block_n
            if programs >= mt.WAVES * sm:
                assert n == 1  # the grid is full without splitting


def test_configs_fit_the_shared_memory_and_cover_the_heads():
    for heads in (1, 16, 128):
        cfgs = mt.configs_for(heads)
        assert cfgs and cfgs[0] == mt.default_config(heads)
        assert all(c.block_h <= max(16, heads) for c in cfgs)
    assert mt.default_config(16).block_h == 16 and mt.default_config(128).block_h == 64
    for c in mt.CONFIGS:  # key blocks (per stage), query tile, p tile: bytes at 576-wide bf16 keys
        smem = c.num_stages * c.block_n * 576 * 2 + c.block_h * 576 * 2 + c.block_h * c.block_n * 2
        assert max(smem, c.block_h * 512 * 4) <= 227 * 1024, c.name


def test_module_imports_without_triton_and_says_so(monkeypatch):
    import builtins
    import importlib

    real = builtins.__import__

    def no_triton(name, *a, **k):
        if name == "triton" or name.startswith("triton."):
            raise ImportError("No module named 'triton'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_triton)
    importlib.reload(mt)  # the module imports (and its kernel cache starts empty)
    with pytest.raises(RuntimeError, match="needs triton"):
        mt.require_triton()
    torch = pytest.importorskip("torch")
    with pytest.raises(RuntimeError, match="needs triton"):
        mt.mla_decode(torch.zeros(1, 16, 576), torch.zeros(1, 8, 576), 0.1)


@pytest.fixture(scope="module")
def interpreted():
    """tests/mla_triton_interp.py's results: the kernel run by Triton's CPU interpreter in a process of its own
    (TRITON_INTERPRET must be set before triton is first imported)."""
    pytest.importorskip("triton")
    pytest.importorskip("torch")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "mla_triton_interp.py")], capture_output=True,
                       text=True, env=env, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_triton_kernel_under_the_interpreter(interpreted):
    """bf16 q and cache at unit scale, the real widths (latent 512, rope 64) at H = 16 and 128, and small ones;
    every config, one split and several, against float32 attention."""
    got = interpreted["kernel"]
    assert {r["config"] for r in got.values()} == {c.name for c in mt.CONFIGS}
    assert {r["splits"] == 1 for r in got.values()} == {True, False}
    for name, r in got.items():
        assert r["shape_ok"], name
        # within 2 units in the last place of the output's largest value (bf16 p and output rounding: observed
        # one ulp, 0.0156 at outputs near 2.5 over 37 keys, 0.004 over 300 keys)
        ulp = 2.0 ** (math.floor(math.log2(r["ref_max"])) - {"bf16": 7, "fp16": 10}[r["dtype"]])
        assert r["err"] <= 2 * ulp, (name, r)


def test_harness_triton_impl_matches_matmul_under_the_interpreter(interpreted):
    """extras.mla_block with impl ``triton`` (the mlatriton part's stack) equals the ``matmul`` impl."""
    assert interpreted["harness"] < 1e-5


def test_triton_kernels_compile_for_the_h100():
    """Every config's split kernel (with splits and without) and the combine kernel compile for sm_90 without a
    GPU (Triton's bundled ptxas), with the 16-divisibility the runtime specializes pointers and strides to, and
    need no more shared memory than an H100 gives a block: what the interpreter cannot check."""
    triton = pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET", "0") != "0":
        pytest.skip("TRITON_INTERPRET is set: the kernels are interpreted functions in this process")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    split, combine = mt._kernels()
    target = GPUTarget("cuda", 90, 32)

    def compile_(fn, sig, constexprs, divisible, **options):
        sig = {**sig, **dict.fromkeys(constexprs, "constexpr")}
        attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in divisible}
        return triton.compile(ASTSource(fn, sig, constexprs, attrs), target=target, options=options)

    ints = ("S", "keys_per_split", "H", "stride_qb", "stride_qh", "stride_kb", "stride_ks", "stride_ob", "stride_oh",
            "stride_os", "stride_lb", "stride_lh")
    for cfg in mt.CONFIGS:
        for one in (False, True):
            out = "*bf16" if one else "*fp32"
            sig = {"Q": "*bf16", "KV": "*bf16", "O": out, "LSE": out, "qk_scale": "fp32", **dict.fromkeys(ints, "i32")}
            k = compile_(split, sig, {"R": 512, "P": 64, "BLOCK_H": cfg.block_h, "BLOCK_N": cfg.block_n,
                                      "ONE_SPLIT": one},
                         ["Q", "KV", "O", "LSE", *ints[1:-1]], num_warps=cfg.num_warps, num_stages=cfg.num_stages)
            assert 0 < k.metadata.shared <= 227 * 1024, (cfg.name, one, k.metadata.shared)
    sig = {"PART": "*fp32", "LSE": "*fp32", "O": "*bf16", "splits": "i32",
           **dict.fromkeys(("stride_pb", "stride_ph", "stride_ps", "stride_lb", "stride_lh", "stride_ob", "stride_oh"),
                           "i32")}
    compile_(combine, sig, {"R": 512}, ["PART", "LSE", "O", "stride_pb", "stride_ph", "stride_ps"], num_warps=4)
