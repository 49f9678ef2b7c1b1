"""GPU measurements for precision and MoE coverage: FP8 GEMMs and a captured MoE layer stack.

    PYTHONPATH=src python3 -m perfcast.measure.extras --out DIR [--parts fp8,moe,mla,mlatriton] [--quick] [--cpu]

- ``fp8``: ``torch._scaled_mm`` (e4m3 inputs, per-tensor scales, bf16 out) in F.linear layout
  (x[m,k] @ w[n,k]^T), on a calibration grid (``gemm_fp8.csv``) and on a seeded held-out set off that
  grid (``gemm_fp8_heldout.csv``); same columns and timing as ``perfcast calibrate``'s gemm.csv.
- ``fp8dense``: FP8 GEMMs on a dense M grid (every 32 to 1024, every 128 to 4096, every 512 to 16384)
  over the same (n, k) pairs (``gemm_fp8_dense.csv``), and a second held-out set (seed 11) whose M values
  avoid both grids (``gemm_fp8_heldout11.csv``).
- ``fp8same``: the dense FP8 grid and held-out set 11 interleaved in one seeded random order
  (``gemm_fp8_dense_same.csv``, ``gemm_fp8_heldout11_same.csv``).
- ``fp8held``: a fresh FP8 held-out set (seed 12, or ``--fp8-seed``; 150 shapes off both grids) in seeded
  random order, in a process of its own after ``fp8same`` (``gemm_fp8_heldout<seed>.csv``): the held-out
  check of a grid timed in random order.
- ``fp8sus``: a seeded fifth of the dense FP8 grid (``gemm_fp8_sustain.csv``), meant to run with
  ``--sustain-ms 100`` (each kernel first run back to back for 100 ms): paired with the same shapes of a
  settled grid, it fits the FP8 power cap (``benchmarks/fit_power.py --dtype fp8``).
- ``gemmstack``: the per-layer GEMMs of Llama-3.1-8B (TP 1) and Llama-3.1-70B (TP 4 shards), ``layers`` layers
  each with its own weights, captured back to back in one CUDA graph, in FP8 (``torch._scaled_mm``) and bf16
  (``F.linear``) at 16-8192 tokens (``gemm_stack.jsonl``). After a 0.1 s idle the graph is replayed back to
  back for at least 500 ms, each replay timed with events (``times_ms``); ``ms`` is the median of the second
  half (the power state a serving loop holds), ``first_ms`` the first replay: the GEMMs as a step runs them,
  against the tables' kernels alone and the power caps (``benchmarks/bench_gemm_stack.py``).
- ``moegemm``: bf16 GEMMs at the expert, shared-expert and router shapes of every shipped MoE config at
  TP 1/2/4/8, over the calibration M grid (``gemm_moe.csv``), and a held-out draw off that grid
  (``gemm_moe_heldout.csv``).
- ``int4``: weight-only INT4 GEMMs (bf16 activations, group size 128) through PyTorch's tinygemm kernel
  (``torch._weight_int4pack_mm``, what torchao's int4 weight-only path runs) on the calibration grid
  (``gemm_int4.csv``, dtype ``w4a16``) and a held-out set (``gemm_int4_heldout.csv``).
- ``index``: ``index_select`` (rows gathered from a [4n, w] tensor) and ``index_add_`` (rows added into
  one) over row counts 1-4096 and widths 1024-7168 (``elementwise_index.csv``, elementwise.csv's
  columns): PyTorch picks its small-index kernels at few rows, which the MoE gather/scatter hits.
- ``l2gemm``: prefill-sized bf16 GEMMs alone (L2 flushed) and inside a CUDA graph after a copy that
  writes their input, with L2 warm or flushed before each round (``l2gemm.jsonl``).
- ``moe``: a stack of MoE MLP layers (router GEMM, softmax/top-k, then per expert hit: gather its
  tokens, gate/up GEMM, SiLU*up, down GEMM, weighted scatter-add) with a fixed uniform random routing,
  captured in one CUDA graph and timed by replay (``moe_step.jsonl``: one line per case with the
  measured ms and the routing's active-expert count).
- ``mla``: a stack of DeepSeek multi-head latent attention blocks (attention only, no input norm or
  residual; random bf16 weights at the dims of the shipped DeepSeek-V2-Lite and DeepSeek-V3 configs,
  V3 at TP 8 (16 heads a GPU) and whole (128 heads, as data-parallel attention runs it)), each layer with
  its own weights and latent KV cache: q path, kv_a_proj, kv_a RMSNorm, RoPE on the rope dims, the latent
  and rope key written into the cache (``index_copy_``), then prefill in the non-absorbed form (kv_b_proj
  expands the latent, causal SDPA with 192-wide q/k and 128-wide v) or decode in the absorbed form
  (``torch.bmm`` of q_nope with W_UK per head, attention of every head over the shared latent cache as one
  576-wide KV head with 512-wide values, ``torch.bmm`` with W_UV, o_proj). Two attention implementations
  per phase (``attn_impl``): prefill ``sdpa`` (v left 128 wide: SDPA's flash kernel refuses unequal head
  dims, so it runs the memory-efficient or cuDNN kernel) and ``sdpa_vpad`` (v zero-padded to 192 so the
  flash kernel can run, as Hugging Face does for FlashAttention-2); decode ``sdpa`` (the heads folded into
  the query rows of one KV head: q [B, 1, H, 576] over k/v views of the cache) and ``matmul``
  (``baddbmm`` -> softmax -> ``bmm`` over the cache); the ``mlaflex`` part adds decode ``flex``
  (``torch.compile``'d FlexAttention: a split-KV decode kernel over the shared latent,
  ``mla_step_flex.jsonl``). The SDPA backend PyTorch picks is recorded
  (``sdpa_backend``). Each case is captured in one CUDA graph and timed by replay (``mla_step.jsonl``);
  ``--cpu`` runs it eagerly at tiny dims on the CPU (a smoke test).
- ``mlatriton``: the ``mla`` part's decode cases with the attention run by ``mla_triton``'s kernel (Triton,
  written for this: one split-KV kernel over the shared latent, read once, and a combine kernel; the
  FlashMLA-class kernel perfcast models), ``attn_impl`` ``triton`` (``mla_step_triton.jsonl``). Per case and
  config the kernel is first run alone outside any graph (its compile) and checked against the matmul form
  in float32 (``check_max_abs_err``; a case no config passes is written untimed), then timed alone in a graph
  of one layer's attention call (``attn_ms``, ``attn_GBps``: the latent's bytes over it); the stack runs the
  fastest config (``triton_config``, ``num_splits``). The triton version is recorded in the meta.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

from perfcast.measure import mla_triton
from perfcast.measure.env import collect, command_line, gpu_id_guess
from perfcast.measure.timing import CudaTimer, capture_graph, event_times_ms, import_torch, replay_times_ms

FP8_PAIRS = ((6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (3072, 4096), (14336, 4096),
             (4096, 7168), (10240, 8192), (8192, 8192), (57344, 8192), (8192, 28672), (7168, 5120),
             (5120, 5120), (27648, 5120), (5120, 13824), (1024, 8192), (8192, 2048), (2560, 5120))
FP8_M = (16, 32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384)
MOE_CASES = (  # (label, hidden, moe_intermediate, experts, top_k, layers)
    ("Qwen/Qwen3-30B-A3B", 2048, 768, 128, 8, 4),
    ("mistralai/Mixtral-8x7B-v0.1", 4096, 14336, 8, 2, 2),
)
MOE_TOKENS = (1, 8, 32, 128, 512, 2048)
FP8_M_DENSE = tuple(sorted(set(range(32, 1025, 32)) | set(range(1024, 4097, 128)) | set(range(4096, 16385, 512))))
INT4_PAIRS = ((6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (14336, 4096), (10240, 8192),
              (8192, 8192), (57344, 8192), (8192, 28672), (7168, 5120), (5120, 5120), (27648, 5120),
              (5120, 13824), (3072, 3072), (8192, 3072))
INT4_M = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
CSV_HEAD = "dtype,m,n,k,median_ms,min_ms,p90_ms,reps\n"
PARTS = ("fp8", "fp8dense", "fp8same", "fp8held", "fp8sus", "gemmstack", "moegemm", "int4", "int8", "int8c", "index", "l2gemm",
         "moe", "mla", "mlaflex", "mlatriton")


def _fp8_offgrid(grid, n_cases: int, seed: int):
    """A seeded draw of FP8 shapes whose M (a multiple of 16 up to 16,384) is off ``grid``: 60% on the
    calibration's (n, k) pairs, the rest random weights."""
    rng = random.Random(seed)
    out = set()
    while len(out) < n_cases:
        m = 16 * max(1, round(math.exp(rng.uniform(0, math.log(1024)))))
        if m in grid:
            continue
        n, k = rng.choice(FP8_PAIRS) if rng.random() < 0.6 else (rng.randrange(1024, 32768, 64),
                                                                  rng.randrange(1024, 16384, 64))
        if 2 * m * n * k <= 3e13:
            out.add((m, n, k))
    return sorted(out)


def fp8_cases(heldout: bool, seed: int = 1):
    if not heldout:
        return [(m, n, k) for n, k in FP8_PAIRS for m in FP8_M if 2 * m * n * k <= 3e13]
    return _fp8_offgrid(set(FP8_M), 100, seed)


def fp8_dense_cases():
    return [(m, n, k) for n, k in FP8_PAIRS for m in FP8_M_DENSE if 2 * m * n * k <= 3e13]


def fp8_sustain_cases(frac: float = 0.2, seed: int = 0):
    """A seeded sample of the dense FP8 grid (``frac`` of it) in random order: the shapes timed sustained
    to pair with a settled grid's."""
    cases = fp8_dense_cases()
    return random.Random(seed).sample(cases, round(frac * len(cases)))


def fp8_heldout11(n_cases: int = 150, seed: int = 11):
    """Off both FP8 M grids (the first and the dense one): any multiple of 16 between them."""
    return _fp8_offgrid(set(FP8_M) | set(FP8_M_DENSE), n_cases, seed)


def gemm_table(torch, timer, path: Path, cases, dtype: str, build, label: str | None = None,
               errors: tuple = (RuntimeError,)) -> int:
    """One CSV of GEMM times (``CSV_HEAD`` columns, ``dtype`` in its first): ``build(m, n, k)`` makes the
    inputs and returns the callable to time. A shape that fails (``errors``, or out of memory) is skipped
    with a line on stderr, and the run goes on. Returns the rows written."""
    rows = 0
    with open(path, "w") as f:
        f.write(CSV_HEAD)
        for m, n, k in cases:
            line = _gemm_row(torch, timer, dtype, m, n, k, build, label, errors)
            if line:
                f.write(line)
                rows += 1
    return rows


def _gemm_row(torch, timer, dtype: str, m: int, n: int, k: int, build, label: str | None = None,
              errors: tuple = (RuntimeError,)) -> str | None:
    """One timed CSV row of ``gemm_table``, or None (with a line on stderr) for a shape that fails."""
    try:
        st = timer.bench(build(m, n, k))
    except (*errors, torch.cuda.OutOfMemoryError) as e:
        print(f"{label or dtype} skip {m}x{n}x{k}: {str(e).splitlines()[0][:120]}", file=sys.stderr)
        return None
    return f"{dtype},{m},{n},{k},{st.median_ms:.6g},{st.min_ms:.6g},{st.p90_ms:.6g},{st.reps}\n"


def _fp8_builder(torch):
    """``build(m, n, k)`` of an e4m3 GEMM through ``torch._scaled_mm`` (unit scales, bf16 out)."""
    def build(m, n, k):
        x = torch.randn(m, k, device="cuda").to(torch.float8_e4m3fn)
        w = torch.randn(n, k, device="cuda").to(torch.float8_e4m3fn)
        one = torch.ones((), device="cuda")
        return lambda: torch._scaled_mm(x, w.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

    return build


def run_fp8(torch, timer, path: Path, heldout, cases=None) -> int:
    return gemm_table(torch, timer, path, cases if cases is not None else fp8_cases(heldout), "fp8",
                      _fp8_builder(torch))


def moe_pairs() -> list[tuple[int, int]]:
    """(n, k) of the expert, shared-expert and router GEMMs of the shipped MoE configs at TP 1/2/4/8."""
    from perfcast.models import get_model, list_models
    from perfcast.models.builder import GRAPH_LAYOUT, StepShape, build_ops

    pairs = set()
    for mid in list_models():
        spec = get_model(mid)
        if not spec.is_moe:
            continue
        for tp in (1, 2, 4, 8):
            if spec.n_heads % tp:
                continue
            for o in build_ops(spec, StepShape("decode", 1, 1, 1024), tp, "bf16", GRAPH_LAYOUT):
                if o.kind == "gemm" and o.name.startswith(("expert_", "shared_", "router")):
                    pairs.add((int(o.dims["n"]), int(o.dims["k"])))
    return sorted(pairs)


def moe_gemm_cases(heldout: bool, seed: int = 5):
    from perfcast.measure.shapes import M_GRID

    pairs = moe_pairs()
    if not heldout:
        return [(m, n, k) for n, k in pairs for m in M_GRID if 2 * m * n * k <= 3e13]
    rng, grid, out = random.Random(seed), set(M_GRID), set()
    while len(out) < 120:
        m = max(1, round(math.exp(rng.uniform(0, math.log(16384)))))
        n, k = rng.choice(pairs)
        if m not in grid and 2 * m * n * k <= 3e13:
            out.add((m, n, k))
    return sorted(out)


def _bf16_builder(torch):
    """``build(m, n, k)`` of a bf16 GEMM in F.linear layout (x [m, k] times w [n, k] transposed)."""
    import torch.nn.functional as F

    def build(m, n, k):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        return lambda: F.linear(x, w)

    return build


def run_bf16(torch, timer, path: Path, cases) -> int:
    return gemm_table(torch, timer, path, cases, "bf16", _bf16_builder(torch))


def int4_cases(heldout: bool, seed: int = 3):
    if not heldout:
        return [(m, n, k) for n, k in INT4_PAIRS for m in INT4_M]
    rng, grid, out = random.Random(seed), set(INT4_M), set()
    while len(out) < 60:
        m = max(1, round(math.exp(rng.uniform(0, math.log(4096)))))
        n, k = rng.choice(INT4_PAIRS)
        if m not in grid:
            out.add((m, n, k))
    return sorted(out)


def run_int4(torch, timer, path: Path, cases, group: int = 128) -> tuple[int, dict]:
    """tinygemm int4 (uint8-packed nibbles, bf16 scales and zeros per group of 128 along k)."""
    info = {"kernel": "torch._weight_int4pack_mm", "group_size": group, "inner_k_tiles": {}}

    def build(m, n, k):
        wq = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device="cuda")
        packed, tiles = None, None
        for tiles in (8, 4, 2):
            try:
                packed = torch._convert_weight_to_int4pack(wq, tiles)
                break
            except RuntimeError:
                continue
        if packed is None:
            raise RuntimeError("no innerKTiles value accepted")
        sz = (torch.rand(k // group, n, 2, device="cuda") * 0.01).to(torch.bfloat16)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        info["inner_k_tiles"][f"{n}x{k}"] = tiles
        return lambda: torch._weight_int4pack_mm(x, packed, group, sz)

    rows = gemm_table(torch, timer, path, cases, "w4a16", build, label="int4",
                      errors=(RuntimeError, AttributeError))
    return rows, info


def run_int8(torch, timer, path: Path, cases) -> tuple[int, dict]:
    """Weight-only INT8 (bf16 activations, one bf16 scale per output channel) through PyTorch's own
    kernel, ``torch._weight_int8pack_mm``; where this build has no CUDA kernel for it, the table stays
    empty and ``info['error']`` says why (the dequantize-then-GEMM path is timed by ``run_int8_deq``)."""
    info = {"kernel": "torch._weight_int8pack_mm", "scales": "per output channel, bf16"}

    def build(m, n, k):
        w = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda")
        sc = (torch.rand(n, device="cuda") * 0.01).to(torch.bfloat16)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        torch._weight_int8pack_mm(x, w, sc)  # raises here if unsupported
        return lambda: torch._weight_int8pack_mm(x, w, sc)

    try:
        build(*cases[0])
    except (RuntimeError, AttributeError, NotImplementedError) as e:
        info["error"] = str(e).splitlines()[0][:300]
        return 0, info
    rows = gemm_table(torch, timer, path, cases, "w8a16", build, label="int8",
                      errors=(RuntimeError, AttributeError, NotImplementedError))
    return rows, info


def run_int8_deq(torch, timer, path: Path, cases) -> int:
    """Weight-only INT8 as a plain PyTorch module runs it without a fused kernel: convert the int8 weight
    to bf16, scale it per output channel, then ``F.linear`` (three kernels, timed together)."""
    import torch.nn.functional as F

    def build(m, n, k):
        w = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda")
        sc = (torch.rand(n, 1, device="cuda") * 0.01).to(torch.bfloat16)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        return lambda: F.linear(x, w.to(torch.bfloat16) * sc)

    return gemm_table(torch, timer, path, cases, "w8a16deq", build, label="int8deq")


def run_fp8_same(torch, timer, out: Path, seed: int = 0) -> tuple[int, int]:
    """The dense FP8 grid and held-out set 11 timed in ONE process, interleaved in a seeded random order
    (gemm_fp8_dense_same.csv, gemm_fp8_heldout11_same.csv): the shipped FP8 tables and their held-out
    sets came from different sessions, and held-out rows on measured weights ran 4-9% slower than the
    grid, so this separates a run-to-run difference from an interpolation error."""
    build = _fp8_builder(torch)
    cases = [(c, 0) for c in fp8_dense_cases()] + [(c, 1) for c in fp8_heldout11()]
    random.Random(seed).shuffle(cases)
    rows = [0, 0]
    with open(out / "gemm_fp8_dense_same.csv", "w") as fg, open(out / "gemm_fp8_heldout11_same.csv", "w") as fh:
        files = (fg, fh)
        for f in files:
            f.write(CSV_HEAD)
        for (m, n, k), which in cases:
            line = _gemm_row(torch, timer, "fp8", m, n, k, build)
            if line:
                files[which].write(line)
                rows[which] += 1
    return rows[0], rows[1]


L2GEMM_SHAPES = ((2048, 6144, 4096), (2048, 28672, 4096), (2048, 4096, 14336), (2048, 4096, 4096),
                 (2048, 3072, 2048), (2048, 16384, 2048), (2048, 2048, 8192), (8192, 28672, 4096))


def run_l2gemm(torch, timer, path: Path, reps: int = 20) -> int:
    """Why GEMMs inside a prefill step run faster than their alone time times the clock ratio: each
    prefill-sized bf16 GEMM timed three ways (``l2gemm.jsonl``): alone with L2 flushed (the tables'
    method), and by kernel profile inside a CUDA graph of ``reps`` rounds of [a copy that writes its
    input x, the GEMM] (x warm in L2, as a step's previous kernel leaves it), and of [an L2 flush, the
    copy, the GEMM] (the same graph with L2 cold before each round)."""
    import torch.nn.functional as F

    from perfcast.measure.step_profile import kernel_family
    from perfcast.measure.timing import kernel_profile

    n_out = 0
    l2 = int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20))
    flush = torch.empty(2 * l2 // 2, dtype=torch.bfloat16, device="cuda")
    with open(path, "w") as f:
        for m, n, k in L2GEMM_SHAPES:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            src = torch.randn_like(x)
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
            alone = timer.bench(lambda x=x, w=w: F.linear(x, w)).median_ms
            rec = {"m": m, "n": n, "k": k, "alone_ms": alone}
            for label, cold in (("warm", False), ("cold", True)):
                def rounds(x=x, src=src, w=w, cold=cold):
                    for _ in range(reps):
                        if cold:
                            flush.fill_(1.0)
                        x.copy_(src)
                        F.linear(x, w)

                g, _ = capture_and_time(torch, rounds, reps=5)
                kp = kernel_profile(torch, g, 3)
                gemm = sum(v[1] for name, v in kp["by_name"].items() if kernel_family(name) == "gemm")
                rec[f"{label}_ms"] = gemm / reps
                del g
            f.write(json.dumps(rec) + "\n")
            print(f"l2gemm {m}x{n}x{k}: alone {alone:.4f} ms, warm {rec['warm_ms']:.4f}, cold {rec['cold_ms']:.4f}")
            n_out += 1
    return n_out


INT8C_PAIRS = ((4096, 4096), (14336, 4096), (4096, 14336), (57344, 8192), (8192, 28672), (27648, 5120))
INT8C_M = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)


def run_int8_compiled(torch, timer, path: Path, cases) -> tuple[int, dict]:
    """Weight-only INT8 as gpt-fast and torchao's int8 weight-only run it: ``F.linear(x, w.to(bf16)) *
    scales`` under ``torch.compile``, where Inductor fuses the int8-to-bf16 conversion into the kernel
    (at small M a memory-bound read of int8 weights). One compile per shape."""
    import torch.nn.functional as F

    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 100000)
    info = {"kernel": "torch.compile(F.linear(x, w_int8.to(bf16)) * scales)", "compile_s": 0.0}

    def lin(x, w, sc):
        return F.linear(x, w.to(x.dtype)) * sc

    def build(m, n, k):
        w = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda")
        sc = (torch.rand(n, device="cuda") * 0.01).to(torch.bfloat16)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        f = torch.compile(lin, dynamic=False)
        t0 = time.time()
        f(x, w, sc)
        torch.cuda.synchronize()
        info["compile_s"] = round(info["compile_s"] + time.time() - t0, 1)
        return lambda: f(x, w, sc)

    rows = gemm_table(torch, timer, path, cases, "w8a16c", build, label="int8c", errors=(Exception,))
    return rows, info


INDEX_ROWS = (1, 2, 3, 4, 6, 8, 12, 16, 20, 24, 32, 48, 64, 128, 256, 512, 1024, 2048, 4096)
INDEX_WIDTHS = (1024, 2048, 4096, 7168)


def run_index(torch, timer, path: Path) -> int:
    rows = 0
    gen = torch.Generator(device="cuda").manual_seed(0)
    with open(path, "w") as f:
        f.write("op,dtype,tokens,width,elements,bytes,median_ms,min_ms,p90_ms,reps\n")
        for w in INDEX_WIDTHS:
            for n in INDEX_ROWS:
                big = max(4 * n, 64)
                src = torch.randn(big, w, device="cuda", dtype=torch.bfloat16)
                part = torch.randn(n, w, device="cuda", dtype=torch.bfloat16)
                idx = torch.randperm(big, device="cuda", generator=gen)[:n].sort().values
                for op, fn, traffic in (("index_select", lambda src=src, idx=idx: src.index_select(0, idx), 2),
                                        ("index_add", lambda src=src, idx=idx, part=part: src.index_add_(0, idx, part),
                                         3)):
                    try:
                        st = timer.bench(fn)
                    except RuntimeError as e:
                        print(f"index skip {op} {n}x{w}: {str(e).splitlines()[0][:120]}", file=sys.stderr)
                        continue
                    f.write(f"{op},bf16,{n},{w},{n * w},{traffic * n * w * 2},{st.median_ms:.6g},{st.min_ms:.6g},"
                            f"{st.p90_ms:.6g},{st.reps}\n")
                    rows += 1
    return rows


def moe_layer(torch, F, h, inter, experts, top_k, tokens, gen):
    """Weights and a fixed routing of one MoE layer; returns a closure running the layer."""
    w_r = torch.randn(experts, h, device="cuda", dtype=torch.bfloat16) * 0.02
    w1 = torch.randn(experts, 2 * inter, h, device="cuda", dtype=torch.bfloat16) * 0.02
    w2 = torch.randn(experts, h, inter, device="cuda", dtype=torch.bfloat16) * 0.02
    choice = torch.stack([torch.randperm(experts, generator=gen)[:top_k] for _ in range(tokens)])  # uniform
    hits = {}
    for e in range(experts):
        idx = (choice == e).any(dim=1).nonzero().flatten()
        if idx.numel():
            hits[e] = idx.to("cuda")
    weight = torch.rand(tokens, device="cuda", dtype=torch.bfloat16)

    def run(x, out):
        logits = F.linear(x, w_r)
        torch.topk(torch.softmax(logits.float(), dim=-1), top_k, dim=-1)
        for e, idx in hits.items():
            xe = x.index_select(0, idx)
            g, u = F.linear(xe, w1[e]).chunk(2, dim=-1)
            ye = F.linear(F.silu(g) * u, w2[e])
            out.index_add_(0, idx, ye * weight.index_select(0, idx)[:, None])

    return run, len(hits)


def capture_and_time(torch, step, reps: int = 20):
    """``step`` warmed up twice on a side stream, captured in one CUDA graph, replayed 5 times, then
    ``reps`` replays timed one by one with CUDA events; returns the graph and the sorted times (ms)."""
    g = capture_graph(torch, step, warmup=2)  # replays once
    for _ in range(4):
        g.replay()
    torch.cuda.synchronize()
    return g, sorted(replay_times_ms(torch, g, reps))


GEMM_STACK_MODELS = (("meta-llama/Llama-3.1-8B", 1, 8), ("meta-llama/Llama-3.1-70B", 4, 8))  # (model, tp, layers)
GEMM_STACK_TOKENS = (16, 128, 512, 2048, 8192)
GEMM_STACK_IDLE_S = 0.1  # idle before a case's timed replays
GEMM_STACK_HOT_MS = 500.0  # replays back to back for at least this long; "ms" is the median of the second half


def gemm_stack_shapes(model: str, tp: int) -> list[tuple[str, int, int]]:
    """(name, n, k) of one decoder layer's GEMMs at ``tp``, as perfcast's step builder has them."""
    import numpy as np

    from perfcast.models import get_model
    from perfcast.models.builder import GRAPH_LAYOUT, StepShape, build_ops

    ops = build_ops(get_model(model), StepShape("prefill", np.asarray(1), np.asarray(16), np.asarray(16)), tp, "fp8",
                    GRAPH_LAYOUT)
    return [(o.name, int(o.dims["n"]), int(o.dims["k"])) for o in ops if o.kind == "gemm" and o.group == "layer"]


def _record(f, rec: dict, line: str) -> int:
    """Write one case's record as a JSON line, print its one-line summary; returns 1 (a case written)."""
    f.write(json.dumps(rec) + "\n")
    print(line)
    return 1


def run_gemm_stack(torch, path: Path, quick: bool) -> int:
    props = torch.cuda.get_device_properties(0)
    gid = gpu_id_guess(props.name, props.total_memory)
    builders = {"fp8": _fp8_builder(torch), "bf16": _bf16_builder(torch)}
    n = 0
    with open(path, "w") as f:
        for model, tp, layers in GEMM_STACK_MODELS:
            shapes = gemm_stack_shapes(model, tp)
            for tokens in GEMM_STACK_TOKENS[:2] if quick else GEMM_STACK_TOKENS:
                for dtype, build in builders.items():
                    fns = [build(tokens, nn, kk) for _ in range(layers) for _, nn, kk in shapes]

                    def step(fns=fns):
                        for fn in fns:
                            fn()

                    g = capture_graph(torch, step, warmup=2)
                    est = sorted(replay_times_ms(torch, g, 3))[1]
                    torch.cuda.synchronize()
                    time.sleep(GEMM_STACK_IDLE_S)  # from a settled GPU: the ramp into the power cap is in the record
                    reps = int(min(max(math.ceil(GEMM_STACK_HOT_MS / max(est, 1e-3)), 20), 4000))
                    seq = replay_times_ms(torch, g, reps)
                    hot = sorted(seq[reps // 2:])
                    rec = {"gpu_id": gid, "gpu": props.name, "torch": torch.__version__, "model": model, "tp": tp,
                           "layers": layers, "tokens": tokens, "dtype": dtype, "runtime": "cuda-graph",
                           "gemms": [[name, tokens, nn, kk] for name, nn, kk in shapes], "ms": hot[len(hot) // 2],
                           "min_ms": hot[0], "max_ms": hot[-1], "first_ms": seq[0],
                           "first10_ms": sorted(seq[:10])[5], "reps": reps, "idle_before_s": GEMM_STACK_IDLE_S,
                           "times_ms": [round(t, 5) for t in seq]}
                    n += _record(f, rec, f"gemmstack {model} tp={tp} tokens={tokens} {dtype}: {rec['ms']:.3f} ms")
                    del fns, g
                    torch.cuda.empty_cache()
    return n


def run_moe(torch, path: Path, quick: bool) -> int:
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    gid = gpu_id_guess(props.name, props.total_memory)
    n = 0
    with open(path, "w") as f:
        for label, h, inter, experts, top_k, layers in MOE_CASES:
            for tokens in MOE_TOKENS[:3] if quick else MOE_TOKENS:
                layer_fns = [moe_layer(torch, F, h, inter, experts, top_k, tokens, gen) for _ in range(layers)]
                x = torch.randn(tokens, h, device="cuda", dtype=torch.bfloat16)
                out = torch.zeros_like(x)

                def step(layer_fns=layer_fns, x=x, out=out):
                    for fn, _ in layer_fns:
                        fn(x, out)

                g, times = capture_and_time(torch, step)
                rec = {"gpu_id": gid, "gpu": props.name, "torch": torch.__version__, "model": label, "hidden": h, "moe_intermediate": inter, "experts": experts, "top_k": top_k,
                       "layers": layers, "tokens": tokens, "runtime": "cuda-graph",
                       "active_experts": [a for _, a in layer_fns], "ms": times[len(times) // 2],
                       "min_ms": times[0], "reps": len(times)}
                n += _record(f, rec, f"moe {label} tokens={tokens}: {rec['ms']:.3f} ms, active {rec['active_experts']}")
                del layer_fns, g
                torch.cuda.empty_cache()
    return n


# ---------------------------------------------------------------------------------------------- MLA
MLA_MODELS = (  # (model, tp, layers): V3 at TP 8 (16 heads a GPU) and whole (128 heads: data-parallel attention)
    ("deepseek-ai/DeepSeek-V2-Lite", 1, 4),
    ("deepseek-ai/DeepSeek-V3", 8, 4),
    ("deepseek-ai/DeepSeek-V3", 1, 2),
)
MLA_DECODE_BATCH = (1, 8, 32, 128)
MLA_DECODE_CONTEXT = (1024, 4096, 16384)
MLA_PREFILL_TOKENS = (512, 2048, 8192)
MLA_IMPLS = {"decode": ("sdpa", "matmul"), "prefill": ("sdpa", "sdpa_vpad")}
MLA_MEM_LIMIT = 70e9  # bytes a case may need (weights, caches, activations)
MLA_BUDGET_S = 110.0  # cases left when this much time has passed are skipped (the part must end in 120 s)
MLA_EPS = 1e-6
# kernels the measured stack runs that the builder's _mla op list has no op for (glue around the costed ops)
MLA_GLUE = {
    "prefill": ["cat(latent, k_pe) before the cache write", "cat(k_nope, k_pe expanded)", "cat(q_nope, q_pe)",
                "attention output transpose+reshape copy"],
    "decode": ["cat(latent, k_pe) before the cache write", "cat(q_nope absorbed, q_pe)",
               "out_absorb output transpose+reshape copy"],
}
SDP_BACKENDS = {-1: "error", 0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}


MLA_FLEX = {"models": ("deepseek-ai/DeepSeek-V2-Lite", "deepseek-ai/DeepSeek-V3"), "batches": (1, 32, 128),
            "contexts": (1024, 16384), "budget_s": 240.0}
# the mlatriton part: max abs error allowed against the float32 matmul form (unit-scale inputs: bf16 rounding
# leaves about one unit in the last place of the largest output, 0.004 for outputs under 1, 0.008 under 2), its
# time budget, and the seconds one Triton compile is estimated at (a config's split kernel, with and without
# splits; the combine kernel)
MLA_TRITON = {"tol": 2e-2, "budget_s": 75.0, "compile_s": 3.0}
# decode and prefill attention implementations of each MLA part, and the seconds after which cases are skipped
MLA_PARTS = {"mla": (MLA_IMPLS, MLA_BUDGET_S),
             "mlaflex": ({"decode": ("flex",), "prefill": ()}, MLA_FLEX["budget_s"]),
             "mlatriton": ({"decode": ("triton",), "prefill": ()}, MLA_TRITON["budget_s"])}
_FLEX = {}
_TRITON = {}  # the mla_triton config the ``triton`` impl runs (the case's fastest, set by _triton_check)


def _flex_attention(torch):
    """torch.compile'd flex_attention (one compiled callable per process; its decode path is a split-KV
    Triton kernel, what FlashMLA-style engines run), or plain flex_attention on the CPU (the smoke test)."""
    if "fn" not in _FLEX:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX["fn"] = torch.compile(flex_attention) if torch.cuda.is_available() else flex_attention
    return _FLEX["fn"]


# Triton block options tried in turn: the defaults need more shared memory than an H100 has at 576-wide
# keys (360 KB against 227 KB), so smaller key blocks and fewer pipeline stages follow
FLEX_OPTIONS = (None, {"num_stages": 1}, {"num_stages": 1, "BLOCK_N": 32}, {"num_stages": 1, "BLOCK_N": 16})


def mla_dims(spec, tp: int) -> dict:
    """The dims of one GPU's MLA block (heads split over ``tp``; q_a/kv_a projections are replicated)."""
    return {"hidden": spec.hidden, "heads": spec.n_heads // tp, "tp": tp, "q_lora_rank": spec.q_lora_rank,
            "kv_lora_rank": spec.kv_lora_rank, "qk_nope_head_dim": spec.qk_nope_head_dim,
            "qk_rope_head_dim": spec.qk_rope_head_dim, "v_head_dim": spec.v_head_dim}


def mla_tiny_dims(spec) -> dict:
    """CPU smoke-test dims: the config's structure (q_lora or not) at a few dozen channels."""
    return {"hidden": 64, "heads": 4, "tp": 1, "q_lora_rank": 24 if spec.q_lora_rank else 0, "kv_lora_rank": 32,
            "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16}


def mla_cases(quick: bool, cpu: bool, flex: bool = False) -> list[dict]:
    """(model, dims, layers, phase, batch, q_len, context) of every case, grouped by model then cache.
    ``flex``: the decode cases of the ``mlaflex`` part only (``MLA_FLEX``)."""
    from perfcast.models import get_model

    out = []
    for model, tp, layers in MLA_MODELS[:2] if cpu else MLA_MODELS:
        if flex and model not in MLA_FLEX["models"]:
            continue
        spec = get_model(model)
        d = mla_tiny_dims(spec) if cpu else mla_dims(spec, tp)
        if cpu:
            layers, batches, ctxs, toks = 2, (1, 2), (8,), (8,)
        elif quick:
            batches, ctxs, toks = (1, 32), (1024,), (512,)
        elif flex:
            batches, ctxs, toks = MLA_FLEX["batches"], MLA_FLEX["contexts"], ()
        else:
            batches, ctxs, toks = MLA_DECODE_BATCH, MLA_DECODE_CONTEXT, MLA_PREFILL_TOKENS
        if flex:
            toks = ()
        for t in toks:
            out.append({"model": model, "dims": d, "layers": layers, "phase": "prefill", "batch": 1, "q_len": t,
                        "context": 0})
        for b in batches:
            for c in ctxs:
                out.append({"model": model, "dims": d, "layers": layers, "phase": "decode", "batch": b, "q_len": 1,
                            "context": c})
    return out


def mla_case_bytes(case: dict) -> float:
    """Bytes a case holds on the device (bf16): weights, latent caches and the largest activations."""
    d, L = case["dims"], case["layers"]
    h, H, ql, r = d["hidden"], d["heads"], d["q_lora_rank"], d["kv_lora_rank"]
    nope, rope, vd = d["qk_nope_head_dim"], d["qk_rope_head_dim"], d["v_head_dim"]
    qk = nope + rope
    w = (ql * h + ql * H * qk) if ql else h * H * qk
    w += h * (r + rope) + 2 * r * H * (nope + vd) + H * vd * h  # kv_b twice: F.linear form and per-head W_UK/W_UV
    b, t, s = case["batch"], case["q_len"], case["context"] + case["q_len"]
    cache = b * s * (r + rope)
    if case["phase"] == "prefill":
        act = b * t * H * (3 * qk + nope + vd + qk)  # q, k, padded v, kv_b output, output
    else:
        act = 2 * b * H * s * 2 + b * H * (r + rope) * 3  # matmul scores and probabilities, q, outputs
    return 2.0 * (L * (w + cache) + 2 * act)


def mla_case_est_ms(case: dict) -> float:
    """A rough step time on an H100 (for the time estimate only): FLOPs at 300 TFLOP/s, weights and caches
    at 2 TB/s (the folded decode SDPA's cache stream at its few CTAs' share of it), 5 us a kernel."""
    d, L = case["dims"], case["layers"]
    h, H, ql, r = d["hidden"], d["heads"], d["q_lora_rank"], d["kv_lora_rank"]
    nope, rope, vd = d["qk_nope_head_dim"], d["qk_rope_head_dim"], d["v_head_dim"]
    b, t, s = case["batch"], case["q_len"], case["context"] + case["q_len"]
    tok = b * t
    qk = nope + rope
    w = ((ql * h + ql * H * qk) if ql else h * H * qk) + h * (r + rope) + H * vd * h + r * H * (nope + vd)
    if case["phase"] == "prefill":
        flops = 2 * tok * w + 2 * b * H * t * t / 2 * (qk + vd)
        t_mem = 2 * (w + tok * H * qk * 6) / 2e12
    else:
        flops = 2 * tok * w + 2 * b * H * s * (2 * r + rope)
        t_mem = 2 * w / 2e12 + 2 * b * s * (2 * r + rope) / (2e12 * min(1.0, b * max(1, H // 32) / 132))
    return L * (max(flops / 300e12, t_mem) * 1e3 + 25 * 5e-3)


def _rot(torch, x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def mla_weights(torch, d: dict, device: str) -> dict:
    """Random bf16 weights of one MLA block (F.linear layout, [out, in])."""
    bf = torch.bfloat16
    h, H, ql, r = d["hidden"], d["heads"], d["q_lora_rank"], d["kv_lora_rank"]
    nope, rope, vd = d["qk_nope_head_dim"], d["qk_rope_head_dim"], d["v_head_dim"]

    def w(*shape):
        return torch.randn(*shape, device=device, dtype=bf) * 0.02

    W = {}
    if ql:
        W["q_a"], W["q_a_norm"], W["q_b"] = w(ql, h), torch.ones(ql, device=device, dtype=bf), w(H * (nope + rope), ql)
    else:
        W["q"] = w(H * (nope + rope), h)
    W["kv_a"], W["kv_a_norm"] = w(r + rope, h), torch.ones(r, device=device, dtype=bf)
    W["kv_b"] = w(H * (nope + vd), r)
    kv_b = W["kv_b"].view(H, nope + vd, r)
    W["uk"] = kv_b[:, :nope, :].contiguous()  # [H, nope, r]: q_nope @ W_UK -> the query in latent space
    W["uv"] = kv_b[:, nope:, :].transpose(1, 2).contiguous()  # [H, r, v]: latent output -> per-head values
    W["o"] = w(h, H * vd)
    return W


def mla_block(torch, F, d: dict, W: dict, x, cache, pos, cos, sin, phase: str, impl: str, batch: int):
    """One MLA attention block on ``x`` [tokens, hidden]; writes the new latents into ``cache``
    [batch, positions, kv_lora_rank + rope] at ``pos`` and attends over every cached position."""
    H, ql, r = d["heads"], d["q_lora_rank"], d["kv_lora_rank"]
    nope, rope, vd = d["qk_nope_head_dim"], d["qk_rope_head_dim"], d["v_head_dim"]
    T = x.shape[0]
    scale = (nope + rope) ** -0.5
    if ql:
        q = F.linear(F.rms_norm(F.linear(x, W["q_a"]), (ql,), W["q_a_norm"], MLA_EPS), W["q_b"])
    else:
        q = F.linear(x, W["q"])
    q = q.view(T, H, nope + rope)
    q_nope, q_pe = q[..., :nope], q[..., nope:]
    kv_a = F.linear(x, W["kv_a"])
    latent = F.rms_norm(kv_a[:, :r], (r,), W["kv_a_norm"], MLA_EPS)
    k_pe = kv_a[:, r:].unsqueeze(1)  # [T, 1, rope]
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)  # rotate_half RoPE (Hugging Face apply_rotary_pos_emb)
    q_pe = q_pe * c + _rot(torch, q_pe) * s
    k_pe = k_pe * c + _rot(torch, k_pe) * s
    cache.index_copy_(1, pos, torch.cat((latent, k_pe.squeeze(1)), dim=-1).view(batch, T // batch, r + rope))
    if phase == "prefill":  # non-absorbed: expand the latent into per-head keys and values
        kv = F.linear(latent, W["kv_b"]).view(T, H, nope + vd)
        k = torch.cat((kv[..., :nope], k_pe.expand(T, H, rope)), dim=-1)
        v = kv[..., nope:]
        qf = torch.cat((q_nope, q_pe), dim=-1)
        if impl == "sdpa_vpad":
            v = F.pad(v, (0, nope + rope - vd))

        def bhsd(t):
            return t.view(batch, T // batch, H, t.shape[-1]).transpose(1, 2)

        o = F.scaled_dot_product_attention(bhsd(qf), bhsd(k), bhsd(v), is_causal=True, scale=scale)
        o = o[..., :vd].transpose(1, 2).reshape(T, H * vd)
    else:  # absorbed: W_UK into the query, attention over the latent cache, W_UV into the output
        ql_nope = torch.bmm(q_nope.transpose(0, 1), W["uk"])  # [H, B, r]
        qf = torch.cat((ql_nope.transpose(0, 1), q_pe), dim=-1)  # [B, H, r + rope]
        kc = cache  # [B, S, r + rope]: the key; its first r channels the value
        if impl == "sdpa":  # the heads as the query rows of one KV head
            o = F.scaled_dot_product_attention(qf.unsqueeze(1), kc.unsqueeze(1), kc[..., :r].unsqueeze(1),
                                               scale=scale).squeeze(1)
        elif impl == "flex":  # FlexAttention's compiled decode kernel: split over keys, all heads on one KV head
            o = _flex_attention(torch)(qf.unsqueeze(2), kc.unsqueeze(1), kc[..., :r].unsqueeze(1), scale=scale,
                                       enable_gqa=True, kernel_options=_FLEX.get("options")).squeeze(2)
        elif impl == "triton":  # our fused split-KV kernel (mla_triton): FlashMLA-class, the latent read once
            o = mla_triton.mla_decode(qf, kc, scale, None, _TRITON.get("config"), kv_lora_rank=r)
        else:
            scores = torch.baddbmm(qf.new_empty(T, H, kc.shape[1]), qf, kc.transpose(1, 2), beta=0.0, alpha=scale)
            o = torch.bmm(torch.softmax(scores, dim=-1), kc[..., :r])  # [B, H, r]
        o = torch.bmm(o.transpose(0, 1), W["uv"]).transpose(0, 1).reshape(T, H * vd)  # [H, B, v] -> [B, H*v]
    return F.linear(o, W["o"])


def mla_stack(torch, F, d: dict, Ws: list, caches: list, x, pos, cos, sin, phase: str, impl: str, batch: int):
    """A closure running the layers one after another (each layer's output is the next one's input)."""
    def step():
        y = x
        for W, cache in zip(Ws, caches):
            y = mla_block(torch, F, d, W, y, cache, pos, cos, sin, phase, impl, batch)
        return y

    return step


def _rope_tables(torch, positions, rope: int, device: str):
    inv = 1.0 / (10000.0 ** (torch.arange(0, rope, 2, dtype=torch.float32) / rope))
    ang = positions.to(torch.float32)[:, None] * inv[None, :]
    emb = torch.cat((ang, ang), dim=-1)
    return emb.cos().to(device, torch.bfloat16), emb.sin().to(device, torch.bfloat16)


def sdpa_choice(torch, q, k, v, causal: bool, scale: float) -> str:
    """The backend SDPA dispatches these inputs to (torch._fused_sdp_choice), by name."""
    try:
        return SDP_BACKENDS.get(int(torch._fused_sdp_choice(q, k, v, None, 0.0, causal, scale=scale)), "unknown")
    except Exception as e:  # a private API: record why it failed rather than stop the part
        return f"unknown ({type(e).__name__})"


def mla_sdpa_backend(torch, d: dict, phase: str, impl: str, batch: int, t: int, cache) -> str:
    """The SDPA backend of a case's attention call, asked on inputs of the case's shapes and strides
    (decode: views of the case's latent ``cache`` [batch, positions, kv_lora_rank + rope])."""
    if impl == "matmul":
        return "none"
    if impl == "flex":
        return "flex (torch.compile)"
    if impl == "triton":
        return "triton"
    bf, dev = torch.bfloat16, cache.device
    H, r = d["heads"], d["kv_lora_rank"]
    nope, rope, vd = d["qk_nope_head_dim"], d["qk_rope_head_dim"], d["v_head_dim"]
    scale = (nope + rope) ** -0.5
    if phase == "decode":
        q = torch.empty(batch, 1, H, r + rope, device=dev, dtype=bf)
        return sdpa_choice(torch, q, cache.unsqueeze(1), cache[..., :r].unsqueeze(1), False, scale)
    q = torch.empty(batch, t, H, nope + rope, device=dev, dtype=bf).transpose(1, 2)
    kv = torch.empty(batch, t, H, nope + vd, device=dev, dtype=bf)
    v = kv[..., nope:] if impl == "sdpa" else torch.empty(batch, t, H, nope + rope, device=dev, dtype=bf)
    return sdpa_choice(torch, q, q, v.transpose(1, 2), True, scale)


def _cpu_times_ms(step, reps: int = 3) -> list[float]:
    step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)


def run_mla(torch, path: Path, quick: bool = False, device: str = "cuda", part: str = "mla") -> tuple[int, dict]:
    """The ``mla`` part, or ``mlaflex`` / ``mlatriton`` (decode through FlexAttention / through mla_triton's
    kernel only): one jsonl line per (case, attention implementation); returns (lines, info)."""
    t_start = time.time()
    torch.manual_seed(0)
    if device != "cpu":
        props = torch.cuda.get_device_properties(0)
        cap = min(MLA_MEM_LIMIT, 0.9 * props.total_memory)
        return _run_mla(torch, path, quick, device, t_start, props.name,
                        gpu_id_guess(props.name, props.total_memory), cap, part)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny dims: one thread is fastest, and immune to a busy host
    try:
        return _run_mla(torch, path, quick, device, t_start, "cpu", "cpu", float("inf"), part)
    finally:
        torch.set_num_threads(threads)


def _eager_times_ms(torch, step, reps: int = 20) -> list[float]:
    """``step`` run eagerly, each rep between CUDA events (the fallback when graph capture fails)."""
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    return sorted(event_times_ms(torch, step, reps))


def _flex_times(torch, step):
    """(graph, sorted times, runtime, error) of a flex case: each of ``FLEX_OPTIONS`` in turn until one
    compiles (kept for the following cases), captured in a CUDA graph, else timed eagerly; (None, None,
    None, error) when no option compiles."""
    error = None
    start = FLEX_OPTIONS.index(_FLEX["options"]) if _FLEX.get("options", 0) in FLEX_OPTIONS else 0
    options = list(FLEX_OPTIONS[start:])
    for opt in options:
        _FLEX["options"] = opt
        try:
            step()
            torch.cuda.synchronize()
        except Exception as e:  # out of shared memory for these blocks: try smaller ones
            error = f"{type(e).__name__}: {e}"[-300:]
            _FLEX.pop("options", None)
            continue
        try:
            g, times = capture_and_time(torch, step)
            return g, times, "cuda-graph", None
        except Exception as e:
            error = f"{type(e).__name__}: {e}"[:300]
            torch.cuda.synchronize()
            return None, _eager_times_ms(torch, step), "eager", error
    return None, None, None, error


def _mla_case_est_s(case: dict, impls: dict) -> float:
    """Seconds a case is estimated to take: per implementation a capture and 27 replays of the stack, and for
    ``triton`` the check and alone timing of each config (compiles counted once per part, in _run_mla)."""
    n = len(impls[case["phase"]])
    est = n * (0.3 + 27 * mla_case_est_ms(case) / 1e3)
    if "triton" in impls[case["phase"]]:
        est += 0.3 * len(mla_triton.configs_for(case["dims"]["heads"]))
    return est


def _run_mla(torch, path: Path, quick: bool, device: str, t_start: float, name: str, gid: str, cap: float,
             part: str = "mla"):
    import torch.nn.functional as F

    cpu = device == "cpu"
    impls, budget = MLA_PARTS[part]
    cases = [c for c in mla_cases(quick, cpu, part == "mlaflex") if impls[c["phase"]]]
    fits = [c for c in cases if mla_case_bytes(c) <= cap]
    info = {"skipped_memory": [_mla_label(c) for c in cases if mla_case_bytes(c) > cap], "skipped_time": []}
    runs = sum(len(impls[c["phase"]]) for c in fits)
    est = sum(_mla_case_est_s(c, impls) for c in fits)
    if part == "mlatriton":  # each config's split kernel with and without splits, and the combine kernel
        n_cfg = len({cfg for c in fits for cfg in mla_triton.configs_for(c["dims"]["heads"])})
        est += MLA_TRITON["compile_s"] * (2 * n_cfg + 1)
    print(f"{part}: {runs} runs ({len(fits)} cases x attention implementations), estimated {est:.0f} s on an H100"
          + (f"; {len(info['skipped_memory'])} cases over {cap / 1e9:.0f} GB skipped" if info["skipped_memory"] else ""))
    info["estimate_s"] = round(est, 1)
    cudnn = torch.backends.cudnn.version() if not cpu else None
    n = 0
    weights: dict = {}
    with open(path, "w") as f:
        for case in fits:
            d, L, phase, b = case["dims"], case["layers"], case["phase"], case["batch"]
            t, ctx = case["q_len"], case["context"]
            s = ctx + t
            if not cpu and time.time() - t_start + _mla_case_est_s(case, impls) > budget:
                info["skipped_time"].append(_mla_label(case))
                print(f"mla {_mla_label(case)}: skipped (time budget)")
                continue
            key = (case["model"], d["heads"], L)
            if key not in weights:
                weights.clear()
                if not cpu:
                    torch.cuda.empty_cache()
                weights[key] = [mla_weights(torch, d, device) for _ in range(L)]
            Ws = weights[key]
            r, rope = d["kv_lora_rank"], d["qk_rope_head_dim"]
            caches = [torch.randn(b, s, r + rope, device=device, dtype=torch.bfloat16) for _ in range(L)]
            x = torch.randn(b * t, d["hidden"], device=device, dtype=torch.bfloat16)
            positions = torch.arange(ctx, ctx + t).repeat(b)
            cos, sin = _rope_tables(torch, positions, rope, device)
            pos = torch.arange(ctx, ctx + t, device=device)
            for impl in impls[phase]:
                step = mla_stack(torch, F, d, Ws, caches, x, pos, cos, sin, phase, impl, b)
                backend = mla_sdpa_backend(torch, d, phase, impl, b, t, caches[0])
                line = {"gpu_id": gid, "gpu": name, "torch": torch.__version__, "cudnn": cudnn, "device": device,
                        "model": case["model"], **d, "layers": L, "phase": phase, "batch": b, "q_len": t,
                        "tokens": b * t, "context": ctx, "kv_len": s,
                        "form": "non-absorbed" if phase == "prefill" else "absorbed", "attn_impl": impl,
                        "sdpa_backend": backend, "glue": MLA_GLUE[phase]}
                g, error = None, None
                if impl == "triton":
                    cfg, checked = _triton_check(torch, d, b, s, caches[0])
                    line.update(checked)
                    if cfg is None:  # no config ran within the tolerance: the line says so, untimed
                        f.write(json.dumps({**line, "runtime": None, "ms": None, "min_ms": None, "reps": 0}) + "\n")
                        f.flush()
                        info.setdefault("triton_failed", []).append(_mla_label(case))
                        print(f"mla {_mla_label(case)} triton: not timed ({_triton_failure(checked)})")
                        if n == 0 and all("error" in e for e in checked["triton_configs"].values()):
                            info["aborted"] = f"no config of the Triton kernel ran: {_triton_failure(checked)}"
                            info["elapsed_s"] = round(time.time() - t_start, 1)
                            return n, info
                        continue
                    _TRITON["config"] = cfg
                if cpu:
                    times, runtime = _cpu_times_ms(step), "eager-cpu"
                elif impl == "flex":
                    g, times, runtime, error = _flex_times(torch, step)
                    if g is None and times is None:
                        print(f"mla {_mla_label(case)} flex: no block options compiled ({error})")
                        info.setdefault("flex_failed", []).append(_mla_label(case))
                        continue
                else:
                    try:
                        g, times = capture_and_time(torch, step)
                        runtime = "cuda-graph"
                    except Exception as e:  # keep the part going: time it eagerly, and say why
                        error = f"{type(e).__name__}: {e}"[:300]
                        print(f"mla {_mla_label(case)} {impl}: graph capture failed ({error}); timed eagerly")
                        torch.cuda.synchronize()
                        times, runtime = _eager_times_ms(torch, step), "eager"
                if impl == "flex":
                    info["flex_options"] = _FLEX.get("options")
                rec = {**line, "runtime": runtime, "ms": times[len(times) // 2], "min_ms": times[0],
                       "reps": len(times)}
                if error:
                    rec["capture_error"] = error
                f.write(json.dumps(rec) + "\n")
                f.flush()
                what = (f"; {cfg.name}, {rec['num_splits']} splits, attention alone {rec['attn_ms']:.4f} ms = "
                        f"{rec['attn_GBps']:.0f} GB/s, max abs err {rec['check_max_abs_err']:.1e}"
                        if impl == "triton" else "")
                print(f"mla {_mla_label(case)} {impl} ({backend}): {rec['ms']:.3f} ms{what}")
                n += 1
                del g, step
            del caches, x
            if not cpu:
                torch.cuda.empty_cache()
    info["elapsed_s"] = round(time.time() - t_start, 1)
    return n, info


def _triton_check(torch, d: dict, batch: int, keys: int, cache):
    """The ``mlatriton`` part's runs of the kernel alone on one case, for each config ``mla_triton.configs_for``
    gives the case's heads: run once outside any graph (its JIT compile), its output checked against the
    matmul form in float32 (``mla_triton.attention_reference``) for a unit-scale random query over the case's
    first latent cache, then, within ``MLA_TRITON["tol"]``, timed alone: a CUDA graph holding one layer's
    attention call (the split kernel, and the combine kernel when there are splits), median of 20 replays.
    L2 is not flushed: a layer's cache (B x S x 1152 bytes) is mostly larger than the H100's 50 MB L2, and
    the smaller ones are partly served from it, as they would be in a step. Returns the config with the
    fastest alone time among those that passed (None if none did) and the line's fields: per config its
    splits, error and alone ms or exception (``triton_configs``); for the chosen one ``triton_config``,
    ``num_splits``, ``check_max_abs_err``, ``attn_ms`` and the latent bandwidth ``attn_GBps`` (B x S x 576 x 2
    bytes over attn_ms)."""
    H, r, rope = d["heads"], d["kv_lora_rank"], d["qk_rope_head_dim"]
    scale = (d["qk_nope_head_dim"] + rope) ** -0.5
    q = torch.randn(batch, H, r + rope, device=cache.device, dtype=torch.bfloat16)
    ref = mla_triton.attention_reference(q, cache, scale, r)
    sm = torch.cuda.get_device_properties(cache.device).multi_processor_count
    per = {}
    for cfg in mla_triton.configs_for(H):
        splits = mla_triton.pick_splits(batch, H, keys, sm, cfg)
        e = per[cfg.name] = {"num_splits": splits}

        def attn(cfg=cfg, splits=splits):
            return mla_triton.mla_decode(q, cache, scale, splits, cfg, kv_lora_rank=r)

        try:
            o = attn()
            torch.cuda.synchronize()
            e["check_max_abs_err"] = (o.float() - ref).abs().max().item()
            if e["check_max_abs_err"] <= MLA_TRITON["tol"]:
                g, times = capture_and_time(torch, attn)
                e.update(attn_ms=times[len(times) // 2], attn_min_ms=times[0], attn_reps=len(times))
                del g
        except Exception as ex:  # out of shared memory or registers, a compile error: the next config
            e["error"] = f"{type(ex).__name__}: {ex}"[:300]
    passed = [c for c in mla_triton.configs_for(H) if "attn_ms" in per[c.name]]
    fields = {"triton_configs": per, "check_tol": MLA_TRITON["tol"]}
    if not passed:
        errs = [e["check_max_abs_err"] for e in per.values() if "check_max_abs_err" in e]
        return None, {**fields, "triton_config": None, "num_splits": None,
                      "check_max_abs_err": min(errs) if errs else None}
    best = min(passed, key=lambda c: per[c.name]["attn_ms"])
    e = per[best.name]
    latent = batch * keys * (r + rope) * 2.0
    return best, {**fields, "triton_config": best.as_dict(), "num_splits": e["num_splits"],
                  "check_max_abs_err": e["check_max_abs_err"], "attn_ms": e["attn_ms"],
                  "attn_min_ms": e["attn_min_ms"], "attn_reps": e["attn_reps"],
                  "attn_GBps": latent / (e["attn_ms"] * 1e-3) / 1e9}


def _triton_failure(checked: dict) -> str:
    """Why no config of a case was timed, in one line: each config's exception or check error."""
    return "; ".join(f"{n}: " + (e["error"] if "error" in e else f"max abs err {e['check_max_abs_err']:.3g} over "
                                 f"{MLA_TRITON['tol']}") for n, e in checked["triton_configs"].items())


def _mla_label(c: dict) -> str:
    d = c["dims"]
    what = f"tokens={c['q_len']}" if c["phase"] == "prefill" else f"batch={c['batch']} context={c['context']}"
    return f"{c['model']} heads={d['heads']} {c['phase']} {what}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perfcast.measure.extras", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--parts", default="fp8,moe")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cpu", action="store_true", help="run the mla part eagerly on the CPU at tiny dims (a smoke test)")
    ap.add_argument("--fp8-seed", type=int, default=12, help="the fp8held part's draw (default 12)")
    ap.add_argument("--sustain-ms", type=float, default=0.0,
                    help="run each timed kernel of the table parts back to back this long first (the power "
                         "state inside a busy step; calibrate --sustain-ms), default 0")
    ap.add_argument("--settle-ms", type=float, default=0.0,
                    help="leave the GPU idle this long before each timed kernel of the table parts (fp8, fp8dense, "
                         "fp8same, fp8held, moegemm, int4, int8, int8c), as calibrate does for GEMMs (default 0)")
    a = ap.parse_args(argv)
    torch = import_torch()
    parts = a.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"perfcast: unknown part(s) {', '.join(unknown)} (parts: {', '.join(PARTS)})")
    if a.cpu and parts != ["mla"]:
        raise SystemExit("perfcast: --cpu runs the mla part only (--parts mla)")
    if "mlatriton" in parts:
        try:
            triton = mla_triton.require_triton()
        except RuntimeError as e:
            raise SystemExit(str(e)) from None
    if not a.cpu and not torch.cuda.is_available():
        raise SystemExit("perfcast: the extras need a CUDA GPU")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = collect(torch, "cpu" if a.cpu else "cuda")
    meta.update({"command": command_line(), "parts": a.parts, "elapsed_s": {}, "settle_ms": a.settle_ms,
                 "sustain_ms": a.sustain_ms})
    if a.settle_ms < 0 or a.sustain_ms < 0:
        raise SystemExit("perfcast: --settle-ms and --sustain-ms must be >= 0")
    timer = CudaTimer(torch, settle_ms=a.settle_ms, sustain_ms=a.sustain_ms) if not a.cpu else None
    if "fp8" in parts:
        t0 = time.time()
        meta["fp8_rows"] = run_fp8(torch, timer, out / "gemm_fp8.csv", heldout=False)
        meta["fp8_heldout_rows"] = run_fp8(torch, timer, out / "gemm_fp8_heldout.csv", heldout=True)
        meta["elapsed_s"]["fp8"] = round(time.time() - t0, 1)
    if "fp8dense" in parts:
        t0 = time.time()
        meta["fp8_dense_rows"] = run_fp8(torch, timer, out / "gemm_fp8_dense.csv", None, fp8_dense_cases())
        meta["fp8_heldout11_rows"] = run_fp8(torch, timer, out / "gemm_fp8_heldout11.csv", None, fp8_heldout11())
        meta["elapsed_s"]["fp8dense"] = round(time.time() - t0, 1)
    if "gemmstack" in parts:
        t0 = time.time()
        meta["gemmstack_cases"] = run_gemm_stack(torch, out / "gemm_stack.jsonl", a.quick)
        meta["elapsed_s"]["gemmstack"] = round(time.time() - t0, 1)
    if "moegemm" in parts:
        t0 = time.time()
        meta["moe_gemm_rows"] = run_bf16(torch, timer, out / "gemm_moe.csv", moe_gemm_cases(False))
        meta["moe_gemm_heldout_rows"] = run_bf16(torch, timer, out / "gemm_moe_heldout.csv", moe_gemm_cases(True))
        meta["elapsed_s"]["moegemm"] = round(time.time() - t0, 1)
    if "int4" in parts:
        t0 = time.time()
        meta["int4_rows"], meta["int4"] = run_int4(torch, timer, out / "gemm_int4.csv", int4_cases(False))
        meta["int4_heldout_rows"], _ = run_int4(torch, timer, out / "gemm_int4_heldout.csv", int4_cases(True))
        meta["elapsed_s"]["int4"] = round(time.time() - t0, 1)
    if "int8" in parts:
        t0 = time.time()
        meta["int8_rows"], meta["int8"] = run_int8(torch, timer, out / "gemm_int8.csv", int4_cases(False))
        meta["int8_heldout_rows"], _ = run_int8(torch, timer, out / "gemm_int8_heldout.csv", int4_cases(True, seed=8))
        meta["int8deq_rows"] = run_int8_deq(torch, timer, out / "gemm_int8deq.csv", int4_cases(False))
        meta["int8deq_heldout_rows"] = run_int8_deq(torch, timer, out / "gemm_int8deq_heldout.csv",
                                                    int4_cases(True, seed=8))
        meta["elapsed_s"]["int8"] = round(time.time() - t0, 1)
    if "fp8same" in parts:
        t0 = time.time()
        meta["fp8same_rows"] = run_fp8_same(torch, timer, out)
        meta["elapsed_s"]["fp8same"] = round(time.time() - t0, 1)
    if "fp8held" in parts:
        t0 = time.time()
        cases = fp8_heldout11(seed=a.fp8_seed)
        random.Random(a.fp8_seed).shuffle(cases)
        meta[f"fp8_heldout{a.fp8_seed}_rows"] = run_fp8(torch, timer, out / f"gemm_fp8_heldout{a.fp8_seed}.csv",
                                                        None, cases)
        meta["elapsed_s"]["fp8held"] = round(time.time() - t0, 1)
    if "fp8sus" in parts:
        t0 = time.time()
        meta["fp8_sustain_rows"] = run_fp8(torch, timer, out / "gemm_fp8_sustain.csv", None, fp8_sustain_cases())
        meta["elapsed_s"]["fp8sus"] = round(time.time() - t0, 1)
    if "int8c" in parts:
        t0 = time.time()
        cases = [(m, n, k) for n, k in INT8C_PAIRS for m in INT8C_M]
        meta["int8c_rows"], meta["int8c"] = run_int8_compiled(torch, timer, out / "gemm_int8c.csv", cases)
        meta["elapsed_s"]["int8c"] = round(time.time() - t0, 1)
    if "l2gemm" in parts:
        t0 = time.time()
        meta["l2gemm_rows"] = run_l2gemm(torch, timer, out / "l2gemm.jsonl")
        meta["elapsed_s"]["l2gemm"] = round(time.time() - t0, 1)
    if "index" in parts:
        t0 = time.time()
        meta["index_rows"] = run_index(torch, timer, out / "elementwise_index.csv")
        meta["elapsed_s"]["index"] = round(time.time() - t0, 1)
    if "moe" in parts:
        t0 = time.time()
        meta["moe_rows"] = run_moe(torch, out / "moe_step.jsonl", a.quick)
        meta["elapsed_s"]["moe"] = round(time.time() - t0, 1)
    if "mlaflex" in parts:
        t0 = time.time()
        meta["mlaflex_rows"], meta["mlaflex"] = run_mla(torch, out / "mla_step_flex.jsonl", a.quick,
                                                        "cpu" if a.cpu else "cuda", part="mlaflex")
        meta["elapsed_s"]["mlaflex"] = round(time.time() - t0, 1)
    if "mlatriton" in parts:
        t0 = time.time()
        meta["triton_version"] = triton.__version__
        meta["mlatriton_configs"] = [c.as_dict() for c in mla_triton.CONFIGS]
        meta["mlatriton_rows"], meta["mlatriton"] = run_mla(torch, out / "mla_step_triton.jsonl", a.quick,
                                                            part="mlatriton")
        meta["elapsed_s"]["mlatriton"] = round(time.time() - t0, 1)
    if "mla" in parts:
        t0 = time.time()
        meta["mla_rows"], meta["mla"] = run_mla(torch, out / "mla_step.jsonl", a.quick, "cpu" if a.cpu else "cuda")
        meta["elapsed_s"]["mla"] = round(time.time() - t0, 1)
    (out / "extras_meta.json").write_text(json.dumps(meta, indent=1, default=str))
    print(json.dumps({k: meta[k] for k in meta if k.endswith("rows") or k == "elapsed_s"}))
    if "aborted" in meta.get("mlatriton", {}):
        print(f"perfcast: mlatriton stopped: {meta['mlatriton']['aborted']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
