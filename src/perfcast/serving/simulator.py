"""The discrete-event core: a heap of timed events handled in time order (Vidur's shape).

Build a :class:`Simulator` from a :class:`~perfcast.serving.config.ServingConfig`, call
:meth:`Simulator.run`, and read the :class:`~perfcast.serving.metrics.Report`. The same config
(and seed) always gives the same result: there is no other randomness.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

from perfcast.serving.capacity import capacity_for, describe_shortfall, kv_bytes_per_token
from perfcast.serving.config import ConfigError, ServingConfig
from perfcast.serving.events import Arrival, BatchEnd, Event
from perfcast.serving.metrics import Report, summarize
from perfcast.serving.request import DONE, Request
from perfcast.serving.schedulers import SCHEDULERS, Engine, make_router
from perfcast.serving.schedulers.base import blocks_for
from perfcast.serving.steptime import iteration_model
from perfcast.serving.workload import generate
from perfcast.step.predict import make_config


class Simulator:
    """One run: build it from a config (``trace=True`` keeps every iteration for a Chrome trace),
    then :meth:`run` it once."""

    def __init__(self, cfg: ServingConfig, trace: bool = False):
        self.cfg = cfg
        self.step = make_config(cfg.model, cfg.gpu, cfg.tp, cfg.pp, cfg.dtype, cfg.runtime, cfg.profile,
                                cfg.kv_dtype, cfg.wdtype)
        self.requests = generate(cfg.workload, self.step.model.max_positions)
        self.kv_capacity = capacity_for(cfg, self.step)
        blocks = cfg.kv_blocks or self.kv_capacity.blocks
        if blocks <= 0:
            raise ConfigError(describe_shortfall(self.kv_capacity, self.step, cfg.gpu_memory_utilization))
        self.blocks_per_engine = blocks // cfg.pp  # a pipeline's virtual engines share the cache
        self._check_requests_fit()
        max_tokens = cfg.max_batched_tokens
        if cfg.scheduler == "static":
            max_tokens = max(max_tokens, cfg.max_num_seqs * max(r.prompt for r in self.requests))
        self.model = iteration_model(self.step, max_tokens, cfg.max_num_seqs, cfg.eager_host_scale)
        self.engines: list[Engine] = []
        d = cfg.disaggregated
        if d is None:
            pool = self._pool(cfg.replicas, "mixed", trace)
            self.router = self.decode_router = make_router(cfg.router, pool)
        else:
            self.router = make_router(cfg.router, self._pool(d.prefill_replicas, "prefill", trace))
            self.decode_router = make_router(cfg.router, self._pool(d.decode_replicas, "decode", trace))
            self._xfer_s_per_token = kv_bytes_per_token(self.step) * 8.0 / (d.kv_link_gbps * 1e9)
        self.heap: list[tuple[float, int, Event]] = []
        self._seq = itertools.count()

    def _pool(self, replicas: int, role: str, trace: bool) -> list[Engine]:
        cls = SCHEDULERS[self.cfg.scheduler]
        first = len(self.engines)
        replica0 = self.engines[-1].replica + 1 if self.engines else 0
        for r in range(replicas):
            for _ in range(self.cfg.pp):
                self.engines.append(cls(len(self.engines), replica0 + r, role, self.model, self.blocks_per_engine,
                                        self.cfg.block_size, self.cfg.max_num_seqs,
                                        self.cfg.max_batched_tokens, trace))
        for e in self.engines[first:]:
            e.end_event = BatchEnd(e)  # one iteration in flight per engine: reuse its event
            e.overhead = self.cfg.iteration_overhead
            if self.cfg.safety_margin is not None:
                e.set_safety_margin(self.cfg.safety_margin)
        return self.engines[first:]

    def _check_requests_fit(self) -> None:
        cap = self.blocks_per_engine
        mp = self.step.model.max_positions
        for r in self.requests:
            if r.prompt + r.output > mp:
                raise ConfigError(f"request {r.id} needs {r.prompt + r.output} tokens, beyond the "
                                  f"{mp} positions of {self.step.model.name}")
            if blocks_for(r.prompt + r.output, self.cfg.block_size) > cap:
                raise ConfigError(f"request {r.id} ({r.prompt} + {r.output} tokens) needs more KV cache "
                                  f"than an engine holds ({cap} blocks of {self.cfg.block_size} tokens); "
                                  "raise gpu_memory_utilization, tp or kv_blocks, or shorten the requests")

    # ------------------------------------------------------------------ the loop
    def push(self, t: float, ev: Event) -> None:
        heapq.heappush(self.heap, (t, next(self._seq), ev))

    def enqueue(self, engine: Engine, r: Request, now: float) -> None:
        engine.add(r, now)
        if not engine.busy:
            self.start(engine, now)

    def start(self, engine: Engine, now: float) -> None:
        """Start ``engine``'s next iteration at ``now`` if it has work."""
        dur = engine.schedule(now)
        if dur is not None:
            engine.busy = True
            heapq.heappush(self.heap, (now + dur, next(self._seq), engine.end_event))
        elif engine.busy:  # going idle: note the cache as it is left
            engine.busy = False
            engine.kv_t.append(now)
            engine.kv_used.append(engine.total_blocks - engine.free)

    def transfer_seconds(self, r: Request) -> float:
        return r.computed * self._xfer_s_per_token

    def run(self, progress: Callable[[int, int], None] | None = None) -> Report:
        self.heap = [(r.arrival, next(self._seq), Arrival(r)) for r in self.requests]
        heapq.heapify(self.heap)
        heap, pop = self.heap, heapq.heappop
        if progress is None:
            while heap:
                t, _, ev = pop(heap)
                ev.handle(self, t)
        else:
            n = 0
            while heap:
                t, _, ev = pop(heap)
                ev.handle(self, t)
                n += 1
                if n % 4096 == 0:
                    progress(sum(e.completed for e in self.engines), len(self.requests))
        stuck = [r for r in self.requests if r.state != DONE]
        if stuck:
            raise RuntimeError(f"simulation ended with {len(stuck)} unfinished requests (first: {stuck[0]})")
        if progress is not None:
            progress(len(self.requests), len(self.requests))
        return summarize(self)


def simulate(cfg: ServingConfig, trace: bool = False,
             progress: Callable[[int, int], None] | None = None) -> Report:
    """Run one serving simulation and summarize it."""
    return Simulator(cfg, trace=trace).run(progress)


SENSITIVE = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "queue_ms")


def sensitivity(cfg: ServingConfig, pct: float) -> dict:
    """How the latencies move if every iteration took ``pct`` % less or more time than the step model says.

    Near capacity a queue's waiting time swings with a few % of service time (the validation runs at 18
    requests/s: p90 TTFT 38-57% off with TPOT within 1-7%), so a p90 TTFT there means little without
    this band. No scheduler is touched: service times multiplied by ``s`` with arrival times t are the
    same run, time-dilated by ``s``, as arrival times t / s with service times unchanged. So each side
    re-runs the simulation with arrivals sped up by ``s`` (the same requests and draws) and multiplies
    its latencies by ``s``. Returns, for ``faster`` (s = 1 - pct/100) and ``slower`` (1 + pct/100), each
    latency metric's ``{mean, p50, p90, p99}`` and whether that run was ``overloaded``."""
    from dataclasses import replace

    if not 0.0 < pct < 100.0:
        raise ValueError(f"sensitivity must be a percentage between 0 and 100 (exclusive), got {pct}")
    out: dict = {"service_time_pct": pct}
    for side, s in (("faster", 1.0 - pct / 100.0), ("slower", 1.0 + pct / 100.0)):
        run = replace(cfg, workload=replace(cfg.workload, arrival_speedup=cfg.workload.arrival_speedup * s))
        rep = Simulator(run).run().summary
        out[side] = {m: {k: (None if v is None else v * s) for k, v in rep[m].items()} for m in SENSITIVE}
        out[side]["overloaded"] = rep["overloaded"]
    return out
