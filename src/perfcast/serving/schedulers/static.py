"""Static batching, the baseline continuous batching replaced.

When the engine is idle it takes up to ``max_num_seqs`` waiting requests (first come, first
served, no waiting for the batch to fill), reserves KV for each padded to the batch's longest
prompt plus longest output, runs one prefill over the padded batch, and then decodes the whole
batch until its longest output is done. Requests that finish early keep their slot; nobody joins
a batch in flight. ``max_batched_tokens`` does not apply (the prefill is never chunked).
"""

from __future__ import annotations

from perfcast.serving.request import DECODE, PREFILL, Request
from perfcast.serving.schedulers.base import Engine, blocks_for


class StaticBatching(Engine):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.batch: list[Request] = []
        self.step = 0  # 0: the prefill; k >= 1: the k-th decode step
        self.pmax = self.omax = 0
        self.ends: dict[int, list[Request]] = {}
        self.active = 0

    def load(self) -> int:
        return len(self.waiting) + len(self.batch)

    def schedule(self, now: float) -> float | None:
        if not self.batch and not self._form(now):
            return None
        b, p, k = len(self.batch), self.pmax, self.step
        if k == 0:
            pairs = b * (p * p - p * (p - 1) / 2.0)
            dur = self.model.seconds(b * p, b, 0, 0.0, b, b * p, pairs) + self.extra_seconds(b, b * p, 0.0)
            self._record(now, dur, 0, b * p, b)
        else:  # padded: every slot decodes at the longest context
            dur = self.model.seconds(b, b, b, float(b * (p + k))) + self.extra_seconds(b, b, float(b * (p + k)))
            self._record(now, dur, b, 0, 0)
        return dur

    def _form(self, now: float) -> bool:
        pmax = omax = 0
        while self.waiting and len(self.batch) < self.max_seqs:
            r = self.waiting[0]
            p, o = max(pmax, r.prompt), max(omax, r.output)
            if (len(self.batch) + 1) * blocks_for(p + o, self.bs) > self.total_blocks:
                break
            self.waiting.popleft()
            self.batch.append(r)
            pmax, omax = p, o
            r.state = PREFILL
            r.sched_t = now
        if not self.batch:
            return False
        self.pmax, self.omax, self.step = pmax, omax, 0
        self.free = self.total_blocks - len(self.batch) * blocks_for(pmax + omax, self.bs)
        self.ends = {}
        for r in self.batch:
            self.ends.setdefault(r.output - 1, []).append(r)  # decode step of its last token
        self.active = len(self.batch)
        return True

    def finish(self, now: float) -> list[Request]:
        k = self.step
        if k == 0:
            for r in self.batch:
                r.first_t = now
                r.computed = r.prompt
                r.state = DECODE
        else:
            self.itl_s.append(now - self.started)
            self.itl_n.append(self.active)
        for r in self.ends.pop(k, ()):
            r.computed = r.prompt + r.output - 1
            self._complete(r, now)
            self.active -= 1
        self.step = k + 1
        self.it += 1
        if self.step >= self.omax:  # the longest output is done: the batch leaves
            self.batch = []
            self.free = self.total_blocks
        return []
