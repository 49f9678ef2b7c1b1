"""Timing primitives for kernel calibration.

GPU method (see docs/profile-format.md): warm up, estimate the kernel time from a few reps, then run
an adaptive number of reps (enough for ~25 ms of kernel time, at least 5, at most 200). Before each rep
the L2 cache is flushed by *reading* a buffer twice the L2 size (outside the timed region: a read
leaves no dirty lines whose write-back would land inside the next timed kernel); CUDA events are
recorded around the kernel(s) of the rep alone. Reps are queued in chunks of 25, each behind a spin
kernel (``torch.cuda._sleep``) as long as the host is expected to lag the GPU over the chunk, so host
dispatch gaps never enter the timed region (multi-kernel ops are timed back to back, as a CUDA graph
would run them). Reported: median, min and p90 of the reps.

CPU method (``device="cpu"``, for tests): ``time.perf_counter`` around each call, no flush.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

CHUNK = 25  # reps queued behind one spin kernel
SPIN_CYCLES_PER_MS = 2.0e6  # >= the SM clock of current GPUs, so a spin lasts at least as asked
GPU_HINT = "calibration needs PyTorch with CUDA: install perfcast[gpu] (pip install 'perfcast[gpu]') on a GPU host"


def import_torch():
    """Import torch or fail with an install hint."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SystemExit(f"perfcast: {GPU_HINT} ({e})") from None
    return torch


@dataclass(frozen=True)
class Stats:
    """Summary of one case's repetitions, in milliseconds."""

    median_ms: float
    min_ms: float
    p90_ms: float
    reps: int

    @classmethod
    def of(cls, times_ms: list[float]) -> Stats:
        a = np.asarray(times_ms, dtype=np.float64)
        return cls(float(np.median(a)), float(a.min()), float(np.percentile(a, 90)), len(a))


def clamp_reps(est_ms: float, target_ms: float, min_reps: int, max_reps: int) -> int:
    return int(min(max(math.ceil(target_ms / max(est_ms, 1e-6)), min_reps), max_reps))


SUSTAIN_MAX_CALLS = 4000  # kernels below ~25 us cannot load the GPU to its power cap anyway


class CudaTimer:
    """Times ``fn()`` on the current CUDA stream with events, flushing L2 between reps."""

    def __init__(self, torch, target_ms: float = 25.0, min_reps: int = 5, max_reps: int = 200,
                 warmup: int = 2, flush: bool = True, sustain_ms: float = 0.0, settle_ms: float = 0.0):
        self.torch = torch
        # settle_ms: before each kernel, leave the GPU idle this long, so that it starts from the same
        # power state whatever ran before it (in a random order, a kernel after heavy neighbours is timed
        # at lower clocks than after light ones)
        self.settle_ms = float(settle_ms)
        # sustain_ms: before the timed reps, run the kernel back to back for this long, so that a heavy
        # kernel is timed in the power/clock state it settles to under sustained load (an H100 at its
        # 700 W cap drops from 1980 MHz towards 1350 MHz within tens of ms of large GEMMs).
        self.sustain_ms = float(sustain_ms)
        self.target_ms, self.min_reps, self.max_reps, self.warmup = target_ms, min_reps, max_reps, warmup
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        l2 = int(getattr(props, "L2_cache_size", 0) or 50 * 2**20)
        self.flush_buf = torch.randn(2 * l2 // 4, dtype=torch.float32, device="cuda") if flush else None
        self.flush_out = torch.empty((), dtype=torch.float32, device="cuda")
        self.flush_graph = self._capture_flush() if flush else None
        self.has_sleep = hasattr(torch.cuda, "_sleep")
        self.stream = torch.cuda.current_stream()
        self.flush_ms = self._time_flush() if flush else 0.0

    def _capture_flush(self):
        """The flush as a CUDA graph: one replay costs the host a few us instead of a reduction's ~30."""
        t = self.torch
        try:
            s = t.cuda.Stream()
            s.wait_stream(t.cuda.current_stream())
            with t.cuda.stream(s):
                t.sum(self.flush_buf, dim=0, out=self.flush_out)
            t.cuda.current_stream().wait_stream(s)
            g = t.cuda.CUDAGraph()
            with t.cuda.graph(g):
                t.sum(self.flush_buf, dim=0, out=self.flush_out)
            return g
        except RuntimeError:  # capture unsupported here: flush eagerly
            return None

    def _flush(self) -> None:
        if self.flush_graph is not None:
            self.flush_graph.replay()
        elif self.flush_buf is not None:
            self.torch.sum(self.flush_buf, dim=0, out=self.flush_out)

    def _time_flush(self) -> float:
        t = self.torch
        for _ in range(3):
            self._flush()
        s, e = t.cuda.Event(enable_timing=True), t.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(10):
            self._flush()
        e.record()
        e.synchronize()
        return s.elapsed_time(e) / 10

    def _reps(self, fn: Callable[[], object], reps: int, host_s: float, gpu_ms: float
              ) -> tuple[list[float], float]:
        """Per-rep event times (ms) and the host seconds spent queueing one rep.

        Reps are queued in chunks; ahead of each chunk a spin kernel covers the time by which the
        host is expected to lag the GPU over that chunk, so the GPU never waits on the host inside a
        timed region (and is not held back when the host keeps up).
        """
        ev, stream = self.torch.cuda.Event, self.stream
        starts = [ev(enable_timing=True) for _ in range(reps)]
        ends = [ev(enable_timing=True) for _ in range(reps)]
        lag_ms = max(1.3 * host_s * 1e3 - 0.7 * (gpu_ms + self.flush_ms), 0.0)
        t0 = time.perf_counter()
        for c0 in range(0, reps, CHUNK):
            n = min(CHUNK, reps - c0)
            if self.has_sleep:
                self.torch.cuda._sleep(int((n * lag_ms + 0.01) * SPIN_CYCLES_PER_MS))
            for s, e in zip(starts[c0:c0 + n], ends[c0:c0 + n]):
                self._flush()
                s.record(stream)
                fn()
                e.record(stream)
        host = (time.perf_counter() - t0) / reps
        ends[-1].synchronize()
        return [s.elapsed_time(e) for s, e in zip(starts, ends)], host

    def bench(self, fn: Callable[[], object]) -> Stats:
        if self.settle_ms > 0:
            self.torch.cuda.synchronize()
            time.sleep(self.settle_ms / 1e3)
        for _ in range(self.warmup):
            fn()
        est, host = self._reps(fn, 3, host_s=100e-6, gpu_ms=0.0)
        g = float(np.median(est))
        reps = clamp_reps(g, self.target_ms, self.min_reps, self.max_reps)
        if self.sustain_ms > 0:
            for _ in range(int(min(math.ceil(self.sustain_ms / max(g, 1e-3)), SUSTAIN_MAX_CALLS))):
                fn()
        times, _ = self._reps(fn, reps, host_s=host, gpu_ms=g)
        return Stats.of(times)


class CpuTimer:
    """Times ``fn()`` with ``time.perf_counter`` (CPU tensors; used by the tests)."""

    def __init__(self, target_ms: float = 2.0, min_reps: int = 5, max_reps: int = 50, warmup: int = 1):
        self.target_ms, self.min_reps, self.max_reps, self.warmup = target_ms, min_reps, max_reps, warmup

    def bench(self, fn: Callable[[], object]) -> Stats:
        for _ in range(self.warmup):
            fn()
        t0 = time.perf_counter()
        fn()
        reps = clamp_reps((time.perf_counter() - t0) * 1e3, self.target_ms, self.min_reps, self.max_reps)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return Stats.of(times)


def capture_graph(torch, fn: Callable[[], object], n: int = 1, warmup: int = 3, error_mode: str = "global"):
    """``fn`` run ``warmup`` times on a side stream, then ``n`` calls of it captured in one CUDA graph,
    replayed once; returns the graph (``error_mode``: ``thread_local`` under torch.distributed)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, capture_error_mode=error_mode):
        for _ in range(n):
            fn()
    g.replay()
    torch.cuda.synchronize()
    return g


def event_times_ms(torch, fn: Callable[[], object], reps: int) -> list[float]:
    """``reps`` calls of ``fn``, each timed alone with CUDA events and waited on (ms)."""
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return times


def replay_times_ms(torch, g, reps: int) -> list[float]:
    """``reps`` replays of graph ``g``, each timed alone with CUDA events and waited on (ms)."""
    return event_times_ms(torch, g.replay, reps)


def host_loop_us(fn: Callable[[], object], sync: Callable[[], object], inner: int = 1000,
                 reps: int = 7) -> Stats:
    """Host wall time per call (microseconds, in the Stats fields) of ``inner`` calls then ``sync``."""
    fn()
    sync()
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e6 / inner)
    return Stats.of(times)


class Progress:
    """A one-line progress bar on stderr; silent unless enabled and stderr is a terminal."""

    def __init__(self, label: str, total: int, enabled: bool = True):
        self.label, self.total, self.n = label, max(total, 1), 0
        self.enabled = enabled and sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
        self.t0 = self.last = time.perf_counter()

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.perf_counter()
        if self.enabled and (now - self.last > 0.1 or self.n >= self.total):
            self.last = now
            frac = self.n / self.total
            bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
            sys.stderr.write(f"\r{self.label:<12} [{bar}] {self.n}/{self.total} {now - self.t0:6.1f}s")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 79 + "\r")
            sys.stderr.flush()


def kernel_profile(torch, g, reps: int = 10) -> dict:
    """Replay CUDA graph ``g`` ``reps`` times under ``torch.profiler`` (CUDA activity) and sum the GPU
    time by kernel name: ``{"kernels_per_step", "kernel_time_ms", "by_name": {name: [count, ms]}}``, all
    per replay. Graph replay time minus ``kernel_time_ms`` is the gap between kernels."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            g.replay()
        torch.cuda.synchronize()
    by: dict[str, list] = {}
    for e in prof.key_averages():
        d = float(getattr(e, "self_device_time_total", 0.0) or getattr(e, "self_cuda_time_total", 0.0) or 0.0)
        if d <= 0.0 or "CUDA" not in str(getattr(e, "device_type", "CUDA")):
            continue
        by[e.key] = [int(e.count) / reps, d / reps / 1e3]  # per replay: calls, ms
    return {"kernels_per_step": sum(v[0] for v in by.values()),
            "kernel_time_ms": sum(v[1] for v in by.values()), "by_name": by}


def kernel_names(torch, fn) -> list[str]:
    """Names of the CUDA kernels one call of ``fn`` launches, in launch order (by name when the
    profiler's events carry no start times)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    evs = [e for e in prof.events() if getattr(e, "device_type", None) == DeviceType.CUDA]
    if evs:
        evs.sort(key=lambda e: float(getattr(getattr(e, "time_range", None), "start", 0.0) or 0.0))
        return [e.name for e in evs]
    # the same rule as kernel_profile (known to work on the GPU hosts' torch)
    return sorted(e.key for e in prof.key_averages()
                  if float(getattr(e, "self_device_time_total", 0.0) or 0.0) > 0.0)
