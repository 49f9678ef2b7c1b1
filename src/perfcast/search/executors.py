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

    def map(self, fn: Callable, tasks: list) -> list:
        if not tasks:
            return []
        if self.executor == "ray":
            remote = self._ray.remote(fn)
            return self._ray.get([remote.remote(t) for t in tasks])
        if self._pool is None or len(tasks) == 1:
            return [fn(t) for t in tasks]
        return list(self._pool.map(fn, tasks))

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
