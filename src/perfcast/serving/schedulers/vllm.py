"""Continuous batching with chunked prefill and a paged KV cache, as vLLM's (V1) scheduler does.

Each iteration, under a budget of ``max_batched_tokens`` tokens and ``max_num_seqs`` sequences:

1. every decoding request gets one token; when the KV blocks they need are not free, the most
   recently admitted running request is preempted (its blocks freed, it returns to the front of
   the queue and later recomputes its prompt and generated tokens as a prefill);
2. running requests still prefilling get their next chunk, in admission order;
3. waiting requests are admitted first come, first served while budget, sequence slots and free
   blocks last (a request's first chunk may be cut by the budget; the queue stops at the first
   request whose blocks are not free).

Decoding requests are never visited one by one: they are counted, and each request knows from
the engine's iteration counter when it needs its next block and when it emits its last token.
"""

from __future__ import annotations

import heapq

from perfcast.serving.request import DECODE, PREFILL, WAITING, Request
from perfcast.serving.schedulers.base import Engine, blocks_for


class ContinuousBatching(Engine):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.running: dict[int, Request] = {}  # admission order; the last is preempted first
        self.prefilling: list[Request] = []
        self.n_dec = 0  # decoding requests
        self.sum_ctx = 0  # KV tokens they hold
        self.need = [0] * self.bs  # need[k]: decoders that take a block at iterations i % bs == k
        self.ends: dict[int, list[Request]] = {}  # iteration -> decoders it finishes
        self.end_heap: list[int] = []  # the keys of ``ends``, as a heap
        self.joined: list[Request] = []  # decoders new this iteration whose last token is not recent
        self.chunks: list[tuple[Request, int]] = []
        self.dec_now = 0
        self._allocated = False  # this iteration's decode blocks are taken

    def load(self) -> int:
        return len(self.waiting) + len(self.running)

    # ------------------------------------------------------------------ schedule
    def schedule(self, now: float) -> float | None:
        i, bs = self.it, self.bs
        self._allocated = False
        need = self.need[i % bs]
        if need > self.free:
            need = self._preempt_for_decodes(need, now)
        self.free -= need
        self._allocated = True
        budget = self.max_tokens - self.n_dec
        if self.prefilling:
            budget = self._continue_prefills(now, budget)
        if self.waiting and budget > 0:
            self._admit(now, budget)
        n_dec = self.dec_now = self.n_dec
        chunks = self.chunks
        if chunks:
            q_sum = 0
            pairs = 0.0
            for r, q in chunks:
                q_sum += q
                pairs += q * (r.computed + q) - q * (q - 1) / 2.0
            dur = self._iteration(n_dec, q_sum, pairs)
        elif n_dec:
            q_sum = 0
            dur = self._decode_iteration(n_dec)
        else:
            return None
        self._record(now, dur, n_dec, q_sum, len(chunks))
        return dur

    def kv_read(self) -> float:
        """Cached tokens this iteration reads: every sequence's keys (its cache plus its new tokens)
        when any sequence has a cache, else 0 (fresh prefills attend to their own keys only)."""
        past = self.sum_ctx + sum(r.computed for r, _ in self.chunks)
        if not past:
            return 0.0
        return float(past + self.n_dec + sum(q for _, q in self.chunks))

    def _decode_iteration(self, n: int) -> float:
        """Seconds of an iteration of ``n`` decodes only."""
        dur = self.model.decode(n, self.sum_ctx + n)
        if self.overhead is not None:
            dur += self.extra_seconds(n, n, self.sum_ctx + n)
        return dur

    def _iteration(self, n_dec: int, q_sum: int, pairs: float) -> float:
        """Seconds of an iteration holding prefill chunks (and ``n_dec`` decodes)."""
        chunks = self.chunks
        dur = self.model.seconds(n_dec + q_sum, n_dec + len(chunks), n_dec, self.sum_ctx + n_dec,
                                 len(chunks), q_sum, pairs)
        if self.overhead is not None:
            dur += self.extra_seconds(n_dec + len(chunks), n_dec + q_sum, self.kv_read())
        return dur

    def _room(self) -> bool:
        """Whether more prefill work may join this iteration (always, here; see the hf-cb scheduler)."""
        return True

    def _preempt_for_decodes(self, need: int, now: float) -> int:
        k = self.it % self.bs
        while need > self.free:
            v = self._last_running()
            if v.state == DECODE and v.res == k:
                need -= 1
            self._preempt(v, now)
        return need

    def _continue_prefills(self, now: float, budget: int) -> int:
        """Next chunks of running requests that are still prefilling, in admission order."""
        bs = self.bs
        for r in list(self.prefilling):
            if budget <= 0 or not self._room():
                break
            if r.state != PREFILL:
                continue  # preempted to make room for an earlier one
            q = min(r.target - r.computed, budget)
            nb = blocks_for(r.computed + q, bs) - blocks_for(r.computed, bs)
            while nb > self.free and r.state == PREFILL:
                self._preempt(self._last_running(), now)
            if r.state != PREFILL:
                break
            self.free -= nb
            self.chunks.append((r, q))
            budget -= q
        return budget

    def _admit(self, now: float, budget: int) -> None:
        """Waiting requests, first come first served, while budget, slots and blocks last."""
        bs, waiting, running = self.bs, self.waiting, self.running
        while waiting and budget > 0 and len(running) < self.max_seqs and self._room():
            r = waiting[0]
            if r.computed:  # its KV cache came from a prefill pool: decode at once
                nb = blocks_for(r.computed + 1, bs)
                if nb > self.free:
                    break
                waiting.popleft()
                self.free -= nb
                running[r.id] = r
                self._join(r, self.it)
                self.joined.append(r)
                budget -= 1
            else:
                q = min(r.target, budget)
                nb = blocks_for(q, bs)
                if nb > self.free:
                    break
                waiting.popleft()
                self.free -= nb
                r.state = PREFILL
                running[r.id] = r
                self.prefilling.append(r)
                self.chunks.append((r, q))
                budget -= q
            if r.sched_t < 0:
                r.sched_t = now

    def _join(self, r: Request, j0: int) -> None:
        """``r`` decodes from iteration ``j0`` on, holding ``r.computed`` tokens of KV."""
        r.state = DECODE
        r.j0, r.l0, r.g0 = j0, r.computed, r.generated
        r.res = (j0 - r.computed) % self.bs
        r.end_it = j0 + (r.output - r.generated) - 1
        if r.end_it not in self.ends:
            self.ends[r.end_it] = []
            heapq.heappush(self.end_heap, r.end_it)
        self.ends[r.end_it].append(r)
        self.need[r.res] += 1
        self.n_dec += 1
        self.sum_ctx += r.computed

    def _last_running(self) -> Request:
        return next(reversed(self.running.values()))

    def _preempt(self, v: Request, now: float) -> None:
        """Free ``v``'s blocks and queue it again at the front; it will recompute from scratch."""
        if v.state == DECODE:
            steps = self.it - v.j0
            v.computed, v.generated = v.l0 + steps, v.g0 + steps
            extra = 1 if self._allocated and v.res == self.it % self.bs else 0
            self.free += blocks_for(v.computed + extra, self.bs)
            self.need[v.res] -= 1
            self.n_dec -= 1
            self.sum_ctx -= v.computed
            v.end_it = -1
            v.last_t = now  # its latest token came out as the previous iteration ended
        else:
            self.free += blocks_for(v.computed, self.bs)
            self.prefilling.remove(v)
            self.chunks = [(r, q) for r, q in self.chunks if r is not v]
        del self.running[v.id]
        v.computed = 0
        v.state = WAITING
        v.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(v)

    def fast_forward(self, now: float, horizon: float) -> float:
        """Decode-only iterations while nothing else can happen: nobody waits or prefills, no request
        finishes, the blocks the decoders take are free, and each ends before ``horizon``. Same
        arithmetic as one :meth:`schedule` + :meth:`finish` per iteration, without the event queue."""
        n = self.n_dec
        if self.waiting or self.prefilling or not n or self.overhead is not None:
            return now
        heap, ends, i, bs = self.end_heap, self.ends, self.it, self.bs
        while heap and heap[0] not in ends:
            heapq.heappop(heap)
        steps = (heap[0] - i) if heap else 0  # stop before the iteration that finishes someone
        if steps < 2:
            return now
        need, free = self.need, self.free
        if free < n * (steps // bs + 1):  # not surely enough blocks: count them step by step
            k = 0
            while k < steps and need[(i + k) % bs] <= free:
                free -= need[(i + k) % bs]
                k += 1
            steps = k
        durs, end = self.model.decode_steps(n, self.sum_ctx + n, now, horizon, steps)
        k = len(durs)
        if not k:
            return now
        full = k // bs
        taken = full * n + sum(need[(i + j) % bs] for j in range(full * bs, k))
        if self.trace is not None:
            t, used = now, self.total_blocks - self.free
            for j, d in enumerate(durs):
                used += need[(i + j) % bs]
                self.trace.append((t, d, n, 0, 0, used))
                t += d
        self.free -= taken
        self.kv_t.append(now)
        self.kv_used.append(self.total_blocks - self.free)
        self.itl_s.extend(durs)
        self.itl_n.extend([n] * k)
        self.sum_ctx += n * k
        self.it = i + k
        return end

    # ------------------------------------------------------------------ finish
    def finish(self, now: float) -> list[Request]:
        i, n = self.it, self.dec_now
        if n:
            if self.joined:
                self._gapped_tokens(now, n)
            else:
                self.itl_s.append(now - self.started)
                self.itl_n.append(n)
            self.sum_ctx += n
            ends = self.ends.pop(i, None)
            if ends:
                for r in ends:
                    if r.end_it == i and r.state == DECODE:
                        r.computed = r.l0 + i - r.j0 + 1
                        self.sum_ctx -= r.computed
                        self.need[r.res] -= 1
                        self.n_dec -= 1
                        self._release(r, now)
        out = self._finish_chunks(now, i) if self.chunks else []
        self.it = i + 1
        return out

    def _gapped_tokens(self, now: float, n: int) -> None:
        """Decoders new this iteration: their previous token came out long before."""
        if n > len(self.joined):
            self.itl_s.append(now - self.started)
            self.itl_n.append(n - len(self.joined))
        for r in self.joined:
            self.itl_s.append(now - r.last_t)
            self.itl_n.append(1)
        self.joined.clear()

    def _finish_chunks(self, now: float, i: int) -> list[Request]:
        out: list[Request] = []
        done_prefill = False
        for r, q in self.chunks:
            r.computed += q
            if r.computed < r.target:
                continue
            done_prefill = True
            r.generated += 1
            if r.first_t < 0:
                r.first_t = now
            else:  # recomputed after a preemption: one long gap
                self.itl_s.append(now - r.last_t)
                self.itl_n.append(1)
            if r.generated >= r.output:
                self._release(r, now)
            elif self.role == "prefill":  # the decode pool takes it from here
                self.free += blocks_for(r.computed, self.bs)
                del self.running[r.id]
                r.state = WAITING
                r.last_t = now
                out.append(r)
            else:
                self._join(r, i + 1)
        if done_prefill:
            self.prefilling = [r for r in self.prefilling if r.state == PREFILL]
        self.chunks = []
        return out

    def _release(self, r: Request, now: float) -> None:
        self.free += blocks_for(r.computed, self.bs)
        del self.running[r.id]
        self._complete(r, now)
