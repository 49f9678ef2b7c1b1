"""The simulator's events. Each one happens at a time and, handled, may schedule more.

- :class:`Arrival`: a request reaches the front end; the router picks an engine.
- :class:`BatchEnd`: an engine's iteration ends; tokens come out, requests finish or move on,
  and the engine starts its next iteration at once if it has work.
- :class:`KVTransferEnd`: (disaggregated) a request's KV cache reached the decode pool.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from perfcast.serving.request import Request

if TYPE_CHECKING:
    from perfcast.serving.schedulers.base import Engine
    from perfcast.serving.simulator import Simulator


class Event:
    __slots__ = ()

    def handle(self, sim: Simulator, now: float) -> None:
        raise NotImplementedError


class Arrival(Event):
    __slots__ = ("req",)

    def __init__(self, req: Request):
        self.req = req

    def handle(self, sim: Simulator, now: float) -> None:
        sim.enqueue(sim.router.pick(), self.req, now)


class BatchEnd(Event):
    __slots__ = ("engine",)

    def __init__(self, engine: Engine):
        self.engine = engine

    def handle(self, sim: Simulator, now: float) -> None:
        e = self.engine
        for r in e.finish(now):
            sim.push(now + sim.transfer_seconds(r), KVTransferEnd(r))
        now = e.fast_forward(now, sim.heap[0][0] if sim.heap else float("inf"))
        sim.start(e, now)


class KVTransferEnd(Event):
    __slots__ = ("req",)

    def __init__(self, req: Request):
        self.req = req

    def handle(self, sim: Simulator, now: float) -> None:
        sim.enqueue(sim.decode_router.pick(), self.req, now)
