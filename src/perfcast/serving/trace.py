"""Chrome trace (chrome://tracing, Perfetto) of every engine iteration, one process per replica."""

from __future__ import annotations

import json
from pathlib import Path


def chrome_trace(engines) -> dict:
    ev: list[dict] = []
    named = set()
    for e in engines:
        if e.trace is None:
            raise ValueError("the simulation did not record iterations; run it with trace=True")
        pid, tid = e.replica, e.id
        if pid not in named:
            named.add(pid)
            ev.append({"name": "process_name", "ph": "M", "pid": pid,
                       "args": {"name": f"replica {pid} ({e.role})"}})
        ev.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": f"engine {tid}"}})
        for t, d, n_dec, q_sum, n_chunks, used in e.trace:
            name = "prefill+decode" if n_dec and q_sum else ("decode" if n_dec else "prefill")
            ev.append({"name": name, "cat": "iteration", "ph": "X", "ts": t * 1e6, "dur": d * 1e6,
                       "pid": pid, "tid": tid, "args": {"decode_tokens": n_dec, "prefill_tokens": q_sum,
                                                        "prefill_chunks": n_chunks}})
            ev.append({"name": f"kv blocks (engine {tid})", "ph": "C", "ts": t * 1e6, "pid": pid,
                       "args": {"used": used}})
    return {"traceEvents": ev, "displayTimeUnit": "ms"}


def write_chrome_trace(engines, path: str | Path) -> None:
    Path(path).write_text(json.dumps(chrome_trace(engines)))
