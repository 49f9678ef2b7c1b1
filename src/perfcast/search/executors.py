"""Run a function over tasks: in this process, on local processes, or on a Ray cluster."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Self

EXECUTORS = ("local", "ray")


class Pool:
    """``map(fn, tasks)`` on ``workers`` processes (``local``) or Ray (``ray``), kept open across
    calls so that workers keep their cached iteration-time tables."""

    def __init__(self, executor: str = "local", workers: int | None = None):
        if executor not in EXECUTORS:
            raise ValueError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
        self.executor = executor
        self.workers = max(1, workers or os.cpu_count() or 1)
        self._pool = None
        if executor == "ray":
            try:
                import ray
            except ImportError:
                raise ValueError("--executor ray needs Ray: pip install ray (or use --executor local)") from None
            self._own_ray = not ray.is_initialized()  # started here: stopped in close()
            if self._own_ray:
                ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False)
            self._ray = ray
        elif self.workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(self.workers)

    def map(self, fn: Callable, tasks: list, progress: Callable[[int, int], None] | None = None) -> list:
        """``[fn(t) for t in tasks]`` on the pool, in order; ``progress(done, total)`` as tasks finish."""
        if not tasks:
            return []
        n = len(tasks)
        tick = progress or (lambda done, total: None)
        if self.executor == "ray":
            remote = self._ray.remote(fn)
            refs = [remote.remote(t) for t in tasks]
            pending, done = list(refs), 0
            while pending:
                ready, pending = self._ray.wait(pending, num_returns=1)
                done += len(ready)
                tick(done, n)
            return self._ray.get(refs)
        if self._pool is None or n == 1:
            out = []
            for i, t in enumerate(tasks):
                out.append(fn(t))
                tick(i + 1, n)
            return out
        from concurrent.futures import as_completed

        futures = [self._pool.submit(fn, t) for t in tasks]
        for i, _ in enumerate(as_completed(futures)):
            tick(i + 1, n)
        return [f.result() for f in futures]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self.executor == "ray" and self._own_ray:
            self._ray.shutdown()
            self._own_ray = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
