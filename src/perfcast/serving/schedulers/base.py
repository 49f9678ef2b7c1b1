"""What every engine scheduler shares: a waiting queue, a paged KV cache counted in blocks, and
the records the metrics are built from.

An *engine* is what runs one iteration at a time: a replica, or one of the ``pp`` virtual
engines of a pipeline-parallel replica (as vLLM runs one scheduler per pipeline stage in flight).
The simulator asks an idle engine for its next iteration with :meth:`Engine.schedule` and tells it
when that iteration ended with :meth:`Engine.finish`.
"""

from __future__ import annotations

from collections import deque

from perfcast.serving.request import DONE, Request
from perfcast.serving.steptime import IterationModel


def blocks_for(tokens: int, block_size: int) -> int:
    """KV blocks that hold ``tokens`` tokens."""
    return -(-tokens // block_size)


class Engine:
    """Base scheduler. ``role``: ``"mixed"`` (prefill and decode), ``"prefill"`` or ``"decode"``
    (disaggregated pools)."""

    def __init__(self, eid: int, replica: int, role: str, model: IterationModel, blocks: int,
                 block_size: int, max_num_seqs: int, max_batched_tokens: int, trace: bool = False):
        self.id = eid
        self.replica = replica
        self.role = role
        self.model = model
        self.total_blocks = blocks
        self.free = blocks
        self.bs = block_size
        self.max_seqs = max_num_seqs
        self.max_tokens = max_batched_tokens
        self.waiting: deque[Request] = deque()
        self.busy = False
        self.end_event = None  # the simulator's BatchEnd for this engine (one in flight at a time)
        self.it = 0  # iterations run so far
        self.started = 0.0  # start of the iteration in flight
        self.preemptions = 0
        self.completed = 0
        # records: KV blocks in use at each iteration start; inter-token gaps as (seconds, count)
        self.kv_t: list[float] = []
        self.kv_used: list[int] = []
        self.itl_s: list[float] = []
        self.itl_n: list[int] = []
        # iterations for a Chrome trace: (start s, seconds, decode tokens, prefill tokens, chunks, blocks)
        self.trace: list[tuple] | None = [] if trace else None
        # host time per iteration outside the forward (a measured engine's calibration), or None
        self.overhead = None

    # -- the interface the simulator drives ------------------------------------------------
    def add(self, r: Request, now: float) -> None:
        """A request arrives (or its KV cache does, from a prefill pool)."""
        r.engine = self.id
        self.waiting.append(r)

    def load(self) -> int:
        """Requests waiting or running here (what a least-loaded router compares)."""
        raise NotImplementedError

    def schedule(self, now: float) -> float | None:
        """Start the next iteration at ``now``; return its seconds, or None when there is no work."""
        raise NotImplementedError

    def finish(self, now: float) -> list[Request]:
        """The iteration in flight ended at ``now``. Returns requests that leave for another pool."""
        raise NotImplementedError

    def fast_forward(self, now: float, horizon: float) -> float:
        """Optionally run iterations that nothing can interrupt before ``horizon`` (the next event
        anywhere) without going through the event queue; returns when the last one ended."""
        return now

    def extra_seconds(self, seqs: int, tokens: int, kv_tokens: float) -> float:
        """The configured per-iteration host overhead (0 without one)."""
        return 0.0 if self.overhead is None else self.overhead.seconds(seqs, tokens, kv_tokens)

    # -- helpers ------------------------------------------------------------------------------
    def _record(self, now: float, seconds: float, n_dec: int, q_sum: int, n_chunks: int) -> None:
        self.started = now
        self.kv_t.append(now)
        used = self.total_blocks - self.free
        self.kv_used.append(used)
        if self.trace is not None:
            self.trace.append((now, seconds, n_dec, q_sum, n_chunks, used))

    def _complete(self, r: Request, now: float) -> None:
        r.finish_t = now
        r.generated = r.output
        r.state = DONE
        self.completed += 1
