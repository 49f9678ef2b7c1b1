"""Kernel calibration harness: time GEMM, attention, elementwise and launch costs on this GPU.

    python -m perfcast.measure.calibrate --out DIR [--quick] [--heldout]
        [--only gemm,attention,elementwise,launch] [--device cuda|cpu] [--seed N] [--quiet]

Writes a profile directory (meta.json, gemm.csv, attention.csv, elementwise.csv, launch.csv) whose
layout docs/profile-format.md describes. Nothing is written outside that directory.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

from perfcast.measure import env, shapes
from perfcast.measure.timing import (
    GPU_HINT,
    CpuTimer,
    CudaTimer,
    Progress,
    Stats,
    capture_graph,
    host_loop_us,
    import_torch,
    replay_times_ms,
)

FAMILIES = ("gemm", "attention", "elementwise", "launch")
TIMES = ["median_ms", "min_ms", "p90_ms", "reps"]
COLUMNS = {
    "gemm": ["dtype", "m", "n", "k", *TIMES],
    "attention": ["dtype", "batch", "heads", "kv_heads", "head_dim", "q_len", "kv_len", "causal", *TIMES],
    "elementwise": ["op", "dtype", "tokens", "width", "elements", "bytes", *TIMES],
    "launch": ["mode", "op", "median_us", "min_us", "p90_us", "reps"],
}
FORMAT_VERSION = 1
EPS = 1e-5


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


class _Csv:
    """A CSV file written row by row (flushed, so a crashed run keeps what it measured)."""

    def __init__(self, path: Path, columns: list[str]):
        self.f = open(path, "w", newline="")
        self.w = csv.writer(self.f, lineterminator="\n")
        self.w.writerow(columns)
        self.rows = 0

    def row(self, case: dict, st: Stats, scale: float = 1.0) -> None:
        vals = list(case.values()) + [st.median_ms * scale, st.min_ms * scale, st.p90_ms * scale, st.reps]
        self.w.writerow([_fmt(v) for v in vals])
        self.f.flush()
        self.rows += 1

    def close(self) -> None:
        self.f.close()


class _Run:
    """State shared by the family runners: torch, device, timer, counters."""

    def __init__(self, torch, device: str, timer, progress: bool):
        import torch.nn.functional as F

        self.torch, self.F, self.device, self.timer, self.progress = torch, F, device, timer, progress
        self.dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
        self.skipped = 0
        self.errors: list[str] = []
        self.oom = getattr(torch.cuda, "OutOfMemoryError", MemoryError)
        self.pool: dict = {}
        self.shuffle_seed: int | None = None
        self.timeline = None  # csv.writer of (family, row, start, end) wall times, with --timeline
        self.family = ""

    def order(self, cases: list) -> list:
        """The cases as given, or in a seeded random order (``--shuffle``: each kernel follows unrelated
        ones, as in a held-out run, instead of its neighbours on the grid)."""
        if self.shuffle_seed is None:
            return cases
        import random

        out = list(cases)
        random.Random(self.shuffle_seed).shuffle(out)
        return out

    def randn(self, *shape, dtype="bf16"):
        return self.torch.randn(*shape, dtype=self.dtypes[dtype], device=self.device)

    def set_pool(self, sizes: dict[tuple[str, str], int]) -> None:
        """Allocate one random-normal buffer per (name, dtype) for a family: cases take views of it,
        so thousands of cases do not each allocate and fill gigabytes (allocator churn, ~60 ms a case)."""
        self.pool = {}
        for key, numel in sizes.items():
            try:
                self.pool[key] = self.randn(numel, dtype=key[1])
            except self.oom:  # no room: those cases allocate their own inputs
                pass

    def rand(self, name: str, *shape, dtype="bf16"):
        """A contiguous random-normal tensor of ``shape``: a view of the pool buffer ``name`` if it fits."""
        buf = self.pool.get((name, dtype))
        numel = math.prod(shape)
        if buf is None or numel > buf.numel():
            return self.randn(*shape, dtype=dtype)
        return buf[:numel].view(*shape)

    def measure(self, out: _Csv, case: dict, build) -> None:
        """Build the inputs (``build()`` returns the callable to time), time it, write one row."""
        fn = None
        try:
            fn = build()
            t0 = time.time()
            st = self.timer.bench(fn)
            if self.timeline is not None:  # which kernel ran when, to join with a clock log afterwards
                self.timeline.writerow([self.family, out.rows, f"{t0:.3f}", f"{time.time():.3f}"])
            out.row(case, st)
        except self.oom:
            self.skipped += 1
        except RuntimeError as e:  # an unsupported shape must not end a long run
            self.skipped += 1
            if len(self.errors) < 20:
                self.errors.append(f"{case}: {str(e).splitlines()[0][:200]}")
        finally:
            del fn


# ---- families ----------------------------------------------------------------------------------
def _max_sizes(cases: list[dict], **shapes_of) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for c in cases:
        for name, f in shapes_of.items():
            key = (name, c.get("dtype", "bf16"))
            out[key] = max(out.get(key, 0), f(c))
    return out


def run_gemm(r: _Run, cases: list[dict], out: _Csv, bar: Progress) -> None:
    r.set_pool(_max_sizes(cases, w=lambda c: c["n"] * c["k"], x=lambda c: c["m"] * c["k"]))
    for c in r.order(sorted(cases, key=lambda c: (c["dtype"], c["n"], c["k"], c["m"]))):
        def build(c=c):
            x = r.rand("x", c["m"], c["k"], dtype=c["dtype"])
            w = r.rand("w", c["n"], c["k"], dtype=c["dtype"])
            return lambda: r.F.linear(x, w)

        r.measure(out, c, build)
        bar.update()


def run_attention(r: _Run, cases: list[dict], out: _Csv, bar: Progress) -> None:
    def kv(c):
        return c["batch"] * c["kv_heads"] * c["kv_len"] * c["head_dim"]

    r.set_pool(_max_sizes(cases, q=lambda c: c["batch"] * c["heads"] * c["q_len"] * c["head_dim"], k=kv, v=kv))
    for c in r.order(cases):
        def build(c=c):
            q = r.rand("q", c["batch"], c["heads"], c["q_len"], c["head_dim"])
            k = r.rand("k", c["batch"], c["kv_heads"], c["kv_len"], c["head_dim"])
            v = r.rand("v", c["batch"], c["kv_heads"], c["kv_len"], c["head_dim"])
            gqa = c["kv_heads"] < c["heads"]
            return lambda: r.F.scaled_dot_product_attention(q, k, v, is_causal=c["causal"], enable_gqa=gqa)

        r.measure(out, c, build)
        bar.update()


def _head_dim(width: int) -> int:
    return shapes.HEAD_DIM if width >= 4 * shapes.HEAD_DIM else 32  # 32: the tiny CPU grid


def ew_builder(r: _Run, op: str, t: int, width: int, tables: dict):
    """The callable that runs elementwise ``op`` on ``t`` tokens of ``width`` (see the docs)."""
    torch, F, bf = r.torch, r.F, r.torch.bfloat16
    if op == "rmsnorm":
        x, w = r.rand("a", t, width), r.randn(width)
        return lambda: F.rms_norm(x, (width,), w, EPS)
    if op == "rmsnorm_eager":  # Hugging Face LlamaRMSNorm.forward
        x, w = r.rand("a", t, width), r.randn(width)

        def eager():
            h = x.to(torch.float32)
            var = h.pow(2).mean(-1, keepdim=True)
            h = h * torch.rsqrt(var + EPS)
            return w * h.to(bf)
        return eager
    if op in ("silu_mul", "gelu_mul"):
        g, u = r.rand("a", t, width), r.rand("b", t, width)
        if op == "silu_mul":
            return lambda: F.silu(g) * u
        return lambda: F.gelu(g, approximate="tanh") * u
    if op == "rope":  # Hugging Face apply_rotary_pos_emb, q [t, heads, d], k [t, kv_heads, d]
        d = _head_dim(width)
        heads = (width // d) * 4 // 5
        q, k = r.rand("a", t, heads, d), r.rand("b", t, width // d - heads, d)
        cos, sin = r.randn(t, d), r.randn(t, d)

        def rot(x):
            return torch.cat((-x[..., d // 2:], x[..., : d // 2]), dim=-1)

        def rope():
            c, s = cos.unsqueeze(1), sin.unsqueeze(1)
            return q * c + rot(q) * s, k * c + rot(k) * s
        return rope
    if op == "add":
        x, y = r.rand("a", t, width), r.rand("b", t, width)
        return lambda: x + y
    if op in ("kv_write", "kv_write_decode"):
        d = _head_dim(width)
        kvh = width // (2 * d)
        batch, new, max_len = (1, t, 2 * t) if op == "kv_write" else (t, 1, 256)
        kc, vc = r.randn(batch, kvh, max_len, d), r.randn(batch, kvh, max_len, d)
        nk, nv = r.rand("a", batch, kvh, new, d), r.rand("b", batch, kvh, new, d)
        pos = torch.arange(max_len - new, max_len, device=r.device)
        return lambda: (kc.index_copy_(2, pos, nk), vc.index_copy_(2, pos, nv))
    if op == "embedding":
        vocab = shapes.VOCAB if r.device == "cuda" else 1000
        if ("emb", width) not in tables:
            tables.clear()
            tables[("emb", width)] = r.randn(vocab, width)
        table = tables[("emb", width)]
        ids = torch.randint(0, vocab, (t,), device=r.device)
        return lambda: F.embedding(ids, table)
    if op == "copy":
        x, y = r.rand("a", t, width), torch.empty(t, width, dtype=bf, device=r.device)
        return lambda: y.copy_(x)
    raise ValueError(f"unknown elementwise op {op!r}")


def run_elementwise(r: _Run, cases: list[dict], out: _Csv, bar: Progress) -> None:
    tables: dict = {}
    n = max((c["elements"] for c in cases), default=0)
    r.set_pool({("a", "bf16"): n, ("b", "bf16"): n})
    for c in sorted(cases, key=lambda c: (c["op"], c["width"], c["tokens"])):
        r.measure(out, c, lambda c=c: ew_builder(r, c["op"], c["tokens"], c["width"], tables))
        bar.update()
    tables.clear()


def _tiny_ops(r: _Run) -> dict:
    """Tiny-tensor ops whose cost is all launch / dispatch overhead."""
    torch, F = r.torch, r.F
    a, b = r.randn(1), r.randn(1)
    x, w, nw = r.randn(1, 64), r.randn(64, 64), r.randn(64)
    q = r.randn(1, 4, 1, 64)
    kv = r.randn(1, 4, 16, 64)
    cache, new = r.randn(1, 4, 16, 64), r.randn(1, 4, 1, 64)
    pos = torch.tensor([3], device=r.device)
    return {
        "add": lambda: torch.add(a, b),
        "linear": lambda: F.linear(x, w),
        "rms_norm": lambda: F.rms_norm(x, (64,), nw, EPS),
        "sdpa": lambda: F.scaled_dot_product_attention(q, kv, kv),
        "index_copy": lambda: cache.index_copy_(2, pos, new),
        "cat": lambda: torch.cat((x, x), dim=-1),
    }


def run_launch(r: _Run, cases: list[dict], out: _Csv, bar: Progress) -> None:
    torch = r.torch
    cuda = r.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    inner = 1000 if cuda else 50

    def put(mode, op, st: Stats):
        out.row({"mode": mode, "op": op}, st, scale=1.0)  # host_loop_us and graph stats are in us
        bar.update()

    for op, fn in _tiny_ops(r).items():
        try:
            put("eager", op, host_loop_us(fn, sync, inner=inner, reps=7 if cuda else 3))
        except RuntimeError as e:
            r.skipped += 1
            r.errors.append(f"launch eager {op}: {str(e).splitlines()[0][:200]}")
    if not cuda:
        return
    a, x, w = r.randn(1), r.randn(1, 64), r.randn(64, 64)
    for op, fn in (("add", lambda: a.add_(1.0)), ("linear", lambda: r.F.linear(x, w))):
        put("graph", op, _graph_per_kernel_us(torch, fn, 1000))
    put("sync", "idle", host_loop_us(torch.cuda.synchronize, lambda: None, inner=1000, reps=7))
    put("sync", "after_kernel", host_loop_us(lambda: (a.add_(1.0), torch.cuda.synchronize()), lambda: None,
                                             inner=1000, reps=7))
    g = capture_graph(torch, lambda: a.add_(1.0), 1)
    put("graph_launch", "replay_1", host_loop_us(lambda: (g.replay(), torch.cuda.synchronize()), lambda: None,
                                                  inner=1000, reps=7))


def _graph_per_kernel_us(torch, fn, n: int, reps: int = 20) -> Stats:
    g = capture_graph(torch, fn, n)
    return Stats.of([t * 1e3 / n for t in replay_times_ms(torch, g, reps)])


RUNNERS = {"gemm": run_gemm, "attention": run_attention, "elementwise": run_elementwise, "launch": run_launch}


# ---- driver ------------------------------------------------------------------------------------
def _families(only) -> list[str]:
    if only is None or only == "" or only == []:
        return list(FAMILIES)
    names = [s.strip() for s in (only.split(",") if isinstance(only, str) else only) if s.strip()]
    bad = [n for n in names if n not in FAMILIES]
    if bad:
        raise ValueError(f"unknown famil{'ies' if len(bad) > 1 else 'y'} {', '.join(bad)}; "
                         f"choose from {', '.join(FAMILIES)}")
    return [f for f in FAMILIES if f in names]


def _warm_gpu(torch, seconds: float = 1.0) -> None:
    """Bring the clocks up before the first measurement."""
    a = torch.randn(8192 if seconds > 5 else 4096, 8192 if seconds > 5 else 4096, dtype=torch.bfloat16,
                    device="cuda")
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()


# idle before each timed GEMM: in a random order a GEMM after heavy neighbours starts from a hotter power
# state; the same 10% of the grid in two orders on one H100 differed by 4.4% per shape without it and
# 1.3% with 30 ms (benchmarks/data/h100-run20); the shipped tables use 20 ms (h100-run21, h200-run13)
SETTLE_MS = 20.0

def calibrate(out_dir, quick: bool = False, heldout: bool = False, only=None, device: str = "cuda",
              progress: bool = True, seed: int = 0, tiny: bool | None = None, preheat_s: float = 1.0,
              sustain_ms: float = 0.0, subset: float = 1.0, shuffle: bool = True, power: bool = False,
              timeline: bool = False, settle_ms: float = SETTLE_MS, order_seed: int | None = None,
              fp8: bool = False) -> dict:
    """Measure kernels on ``device`` and write a profile directory; returns its meta.json dict.

    ``preheat_s``: seconds of large GEMMs before the first measurement (clocks up; a long pre-heat
    brings the GPU to the thermal/power state of a long run, to compare runs of different lengths).
    ``sustain_ms``: run each kernel back to back this long before timing it (the sustained-load power
    state; 0 = as the grid order leaves the GPU). ``subset``: a seeded random fraction of the grid, to
    re-measure grid points under another protocol or on another GPU of the same kind. ``shuffle`` (on by
    default): time GEMM and attention cases in a seeded random order, so that each kernel is timed at the
    clocks it meets alone, not part-throttled by its larger grid neighbours run just before it (the
    shipped profiles' GEMM tables are timed this way). ``power``: then time 10% of the GEMM grid
    sustained (``sustain_ms`` 100) and fit ``power.json``, the power cap that steps apply.
    ``settle_ms`` (default ``SETTLE_MS``): leave the GPU idle this long before each GEMM (a power state
    independent of the kernels before it; the shipped GEMM tables are timed so; 0 = each GEMM straight
    after the one before). Other families are timed without it: attention reproduces across orders
    within about 1% without it. ``order_seed``: the seed of the random order (default ``seed``; another order of
    the same cases tells how much a kernel's time depends on what ran before it).
    ``only``: a comma-separated string or list of families. ``tiny`` (default: on for the CPU) runs a
    few small shapes only, for tests. Times in the CSV files are milliseconds (launch.csv: microseconds).
    """
    fams = _families(only)
    if power and (quick or heldout):
        # the cap is fitted on pairs of the grid's GEMMs timed alone and sustained: a quick or held-out
        # run times too few of the sustained sample's shapes (5 of 698 with --quick) to fit it
        raise ValueError("--power fits the cap on the GEMM grid itself; drop --quick/--heldout (a subset "
                         "works: --subset 0.1 --power)")
    torch = import_torch()
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"no CUDA device visible to torch {torch.__version__}; {GPU_HINT}")
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', not {device!r}")
    tiny = device == "cpu" if tiny is None else tiny
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    meta = env.collect(torch, device)
    cuda = device == "cuda"
    if not 0.0 < subset <= 1.0:
        raise ValueError(f"subset must be in (0, 1], not {subset}")
    if sustain_ms < 0 or settle_ms < 0:
        raise ValueError(f"sustain_ms and settle_ms must be >= 0, not {sustain_ms}, {settle_ms}")
    timer = CudaTimer(torch, sustain_ms=sustain_ms, settle_ms=settle_ms) if cuda else CpuTimer()
    meta.update(
        format_version=FORMAT_VERSION, seed=seed, heldout=heldout, quick=quick, tiny=tiny, families=fams,
        timing={
            "clock": "cuda-events" if cuda else "perf_counter",
            "l2_flush": "read of a 2x L2 buffer before each rep, outside the timed region" if cuda else "none",
            "flush_ms": getattr(timer, "flush_ms", 0.0),
            "target_ms": timer.target_ms, "min_reps": timer.min_reps, "max_reps": timer.max_reps,
            "warmup_calls": timer.warmup, "statistic": "median of reps; min and p90 also given",
            "sustain_ms": sustain_ms if cuda else 0.0,
            "settle_ms": settle_ms if cuda else 0.0,
            "settle_families": ["gemm"] if cuda and settle_ms > 0 else [],
        },
        subset=subset, shuffle=shuffle, elapsed_s={}, cases={}, skipped={}, errors=[], complete=False,
    )
    if cuda and "attention" in fams:
        import torch.nn.functional as F

        meta["sdpa_backend"] = env.sdpa_backend(torch, F)
    _write_meta(out, meta)
    grids = shapes.grids(quick=quick, heldout=heldout, tiny=tiny, seed=seed, sm_count=meta["sm_count"] or 132)
    if subset < 1.0:
        grids = {f: (cs if f == "launch" else _sample(cs, subset, seed)) for f, cs in grids.items()}
    if cuda:
        _warm_gpu(torch, 0.3 if quick else preheat_s)
        meta["timing"]["preheat_s"] = 0.3 if quick else preheat_s
        meta["clocks_after_preheat"] = env.clocks_now(torch)
    r = _Run(torch, device, timer, progress)
    r.shuffle_seed = (seed if order_seed is None else order_seed) if shuffle else None
    meta["order_seed"] = r.shuffle_seed
    tl = None
    if timeline:
        tl = open(out / "timeline.csv", "w", newline="")
        r.timeline = csv.writer(tl, lineterminator="\n")
        r.timeline.writerow(["family", "row", "start_unix_s", "end_unix_s"])
        meta["timeline"] = "timeline.csv: each timed case's wall-clock start and end (row = its index in <family>.csv)"
    t_all = time.perf_counter()
    for fam in fams:
        cases = grids.get(fam, [])
        t0 = time.perf_counter()
        f = _Csv(out / f"{fam}.csv", COLUMNS[fam])
        bar = Progress(fam, len(cases) if fam != "launch" else 11, enabled=progress)
        r.skipped, r.errors, r.family = 0, [], fam
        if cuda:
            timer.settle_ms = settle_ms if fam == "gemm" else 0.0
        try:
            RUNNERS[fam](r, cases, f, bar)
        finally:
            f.close()
            bar.close()
        meta["elapsed_s"][fam] = round(time.perf_counter() - t0, 2)
        meta["cases"][fam] = f.rows
        meta["skipped"][fam] = r.skipped
        meta["errors"] += r.errors
        r.pool = {}
        if cuda:
            torch.cuda.empty_cache()
        if progress:
            print(f"perfcast calibrate: {fam}: {f.rows} cases, {r.skipped} skipped, "
                  f"{meta['elapsed_s'][fam]:.1f} s", file=sys.stderr)
        _write_meta(out, meta)
    if tl is not None:
        tl.close()
    meta["elapsed_s"]["total"] = round(time.perf_counter() - t_all, 2)
    if cuda:
        meta["clocks_end"] = env.clocks_now(torch)
    if power and cuda and "gemm" in fams:
        meta["power"] = _calibrate_power(out, seed, progress)
    if fp8 and cuda:
        meta["fp8"] = _calibrate_fp8(out, power and "gemm" in fams, settle_ms, progress, meta.get("gpu_id", ""))
    meta["complete"] = True
    _write_meta(out, meta)
    return meta


def _calibrate_power(out: Path, seed: int, progress: bool) -> dict:
    """Time a 10% sample of the GEMM grid sustained (each kernel run back to back 100 ms first) into
    ``out/power_sustained/`` and fit ``out/power.json`` from it and ``out/gemm.csv``."""
    from perfcast.hardware import get_gpu
    from perfcast.profiles import power_fit

    sub = out / "power_sustained"
    m = calibrate(sub, only="gemm", seed=seed, progress=progress, preheat_s=0.0, sustain_ms=100.0,
                  subset=0.1, shuffle=True)
    try:
        fitted = power_fit.fit_files(out / "gemm.csv", sub / "gemm.csv", get_gpu(m["gpu_id"]))
    except ValueError as e:  # a GPU missing from the catalog, or too few large GEMMs
        return {"error": str(e).splitlines()[0]}
    power_fit.write(fitted, out / "power.json")
    if progress:
        print(f"perfcast calibrate: power cap {fitted['cap_tflops']:.0f} TFLOP/s (knee {fitted['knee']:g}) "
              f"-> {out / 'power.json'}", file=sys.stderr)
    return {"cap_frac": fitted["cap_frac"], "knee": fitted["knee"]}


def _measure_fp8(out: Path, settle_ms: float, sustained: bool) -> dict:
    """The FP8 tables on this GPU (perfcast.measure.extras' harness): the dense FP8 grid, each GEMM after
    ``settle_ms`` idle, into ``out/gemm_fp8_dense.csv``; with ``sustained``, a fifth of it run back to back
    100 ms before timing into ``out/power_sustained/gemm_fp8_sustain.csv``. Returns the rows written."""
    from perfcast.measure import extras
    from perfcast.measure.timing import CudaTimer, import_torch

    torch = import_torch()
    props = torch.cuda.get_device_properties(0)
    if (props.major, props.minor) < (8, 9):
        raise RuntimeError(f"no FP8 tensor cores on {props.name} (sm_{props.major}{props.minor}; FP8 needs sm_89+)")
    rows = {"grid": extras.run_fp8(torch, CudaTimer(torch, settle_ms=settle_ms), out / "gemm_fp8_dense.csv", None,
                                   extras.fp8_dense_cases())}
    if sustained:
        (out / "power_sustained").mkdir(exist_ok=True)
        rows["sustained"] = extras.run_fp8(torch, CudaTimer(torch, sustain_ms=100.0),
                                           out / "power_sustained" / "gemm_fp8_sustain.csv", None,
                                           extras.fp8_sustain_cases())
    return rows


def _calibrate_fp8(out: Path, power: bool, settle_ms: float, progress: bool, gpu_id: str, measure=None) -> dict:
    """``calibrate --fp8``: FP8 GEMM tables (``_measure_fp8``, about 90 s on an H100), and with ``--power``
    the FP8 cap fitted into power.json's ``fp8`` section (about 40 s more)."""
    from perfcast.hardware import get_gpu
    from perfcast.profiles import power_fit

    try:
        rows = (measure or _measure_fp8)(out, settle_ms, power and (out / "power.json").is_file())
    except RuntimeError as e:
        return {"error": str(e).splitlines()[0]}
    res: dict = {"rows": rows}
    if "sustained" in rows:
        try:
            fitted = power_fit.fit_files(out / "gemm_fp8_dense.csv", out / "power_sustained" / "gemm_fp8_sustain.csv",
                                         get_gpu(gpu_id), dtype="fp8")
            power_fit.write(fitted, out / "power.json", "fp8")
            res.update(cap_frac=fitted["cap_frac"], knee=fitted["knee"])
        except (ValueError, KeyError) as e:  # a GPU missing from the catalog, or too few large GEMMs
            res["power_error"] = str(e).splitlines()[0]
    if progress:
        print(f"perfcast calibrate: fp8: {rows} -> {out / 'gemm_fp8_dense.csv'}", file=sys.stderr)
    return res


def _sample(cases: list, frac: float, seed: int) -> list:
    """A seeded random ``frac`` of ``cases`` (at least one), in their original order."""
    import random

    k = max(1, round(len(cases) * frac))
    keep = set(random.Random(seed).sample(range(len(cases)), min(k, len(cases))))
    return [c for i, c in enumerate(cases) if i in keep]


def _write_meta(out: Path, meta: dict) -> None:
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    tmp.replace(out / "meta.json")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="perfcast calibrate", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="profile directory to write (created if missing)")
    p.add_argument("--quick", action="store_true", help="a ~20 s subset of the grid")
    p.add_argument("--heldout", action="store_true", help="a seeded random set off the grid, for accuracy checks")
    p.add_argument("--only", default=None, help=f"comma-separated families: {','.join(FAMILIES)}")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-family lines")
    p.add_argument("--preheat-s", type=float, default=1.0,
                   help="seconds of large GEMMs before measuring (default 1: clocks up; 60+: a long run's thermal state)")
    p.add_argument("--sustain-ms", type=float, default=0.0,
                   help="run each kernel back to back this long before timing it (sustained-load clocks; default 0)")
    p.add_argument("--subset", type=float, default=1.0,
                   help="measure a seeded random fraction of the grid (default 1: all of it)")
    p.add_argument("--grid-order", action="store_true",
                   help="time GEMM/attention cases in the grid's sorted order (default: seeded random order)")
    p.add_argument("--shuffle", action="store_true", help=argparse.SUPPRESS)  # the default since run 8
    p.add_argument("--power", action="store_true",
                   help="also time 10%% of the GEMM grid sustained and fit power.json (about 90 s more)")
    p.add_argument("--fp8", action="store_true",
                   help="also time the FP8 GEMM grid (gemm_fp8_dense.csv, about 90 s on an H100); with --power, "
                        "fit the FP8 power cap too (power.json's fp8 section, about 40 s more)")
    p.add_argument("--timeline", action="store_true",
                   help="also write timeline.csv: each case's wall-clock start and end, to join with a clock log")
    p.add_argument("--settle-ms", type=float, default=SETTLE_MS,
                   help=f"leave the GPU idle this long before each GEMM (default {SETTLE_MS:g}, as the shipped "
                        "tables; 0: each GEMM straight after the one before)")
    p.add_argument("--order-seed", type=int, default=None,
                   help="seed of the random order (default: --seed); the cases stay those of --seed")
    p.add_argument("--tiny", action="store_true", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    try:
        meta = calibrate(a.out, quick=a.quick, heldout=a.heldout, only=a.only, device=a.device,
                         progress=not a.quiet, seed=a.seed, tiny=a.tiny, preheat_s=a.preheat_s,
                         sustain_ms=a.sustain_ms, subset=a.subset, shuffle=not a.grid_order, power=a.power,
                         timeline=a.timeline, settle_ms=a.settle_ms, order_seed=a.order_seed, fp8=a.fp8)
    except (ValueError, RuntimeError) as e:
        print(f"perfcast calibrate: {e}", file=sys.stderr)
        return 2
    if not a.quiet:
        total = meta["elapsed_s"].get("total", 0.0)
        print(f"perfcast calibrate: wrote {a.out} ({meta.get('gpu_name')}, {total:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
