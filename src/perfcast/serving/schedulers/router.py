"""Global scheduling: which engine of a pool gets a request (Vidur's "global scheduler")."""

from __future__ import annotations

from perfcast.serving.schedulers.base import Engine

ROUTERS: dict[str, type] = {}


def router(name: str):
    def deco(cls):
        ROUTERS[name] = cls
        return cls

    return deco


@router("round_robin")
class RoundRobin:
    def __init__(self, engines: list[Engine]):
        self.engines = engines
        self.next = 0

    def pick(self) -> Engine:
        e = self.engines[self.next]
        self.next = (self.next + 1) % len(self.engines)
        return e


@router("least_loaded")
class LeastLoaded:
    """The engine with the fewest outstanding requests; ties go to the lowest index."""

    def __init__(self, engines: list[Engine]):
        self.engines = engines

    def pick(self) -> Engine:
        if len(self.engines) == 1:
            return self.engines[0]
        return min(self.engines, key=lambda e: e.load())


def make_router(name: str, engines: list[Engine]):
    return ROUTERS[name](engines)
