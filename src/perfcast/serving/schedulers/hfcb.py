"""Continuous batching as Hugging Face ``transformers`` runs it (``generate_batch`` /
``init_continuous_batching``, the ``fifo`` scheduler of transformers 5.x, synchronous loop).

Its scheduling is vLLM's (decoding requests first, then split prefills, then waiting requests first
come first served, each prompt chunked by what is left of ``max_batch_tokens``; at most
``max_requests_per_batch`` requests per iteration, here ``max_num_seqs``), with three differences
that the ``vllm`` scheduler does not have:

1. a *safety margin*: once fewer than ``safety_margin`` (0.15 by default) of the KV blocks are free,
   no prefill work joins an iteration that already holds a request;
2. without a flash-attention block-table kernel, the paged cache gathers the K/V of every sequence of
   an iteration into one contiguous buffer per layer (``index_select``) before the attention
   kernel, whenever any sequence has a cache: costed as a copy of those tokens
   (:meth:`IterationModel.kv_gather`);
3. its loop is synchronous: scheduling, building the batch's index tensors on the host and reading
   back the sampled tokens are not hidden behind the GPU. That host time is not modelled from first
   principles: it is the config's ``iteration_overhead``, measured on the engine
   (``perfcast.measure.serve_run`` records it per iteration).

When the cache is full, transformers offloads or re-queues requests; here they are preempted and
recomputed as in the ``vllm`` scheduler. Every iteration goes through the event queue (no
fast-forward).

Source: transformers 5.17.0, ``generation/continuous_batching/scheduler.py`` (``FIFOScheduler.
schedule_batch``, ``Scheduler._process_candidates``, ``_schedule_request``). Checked on the engine:
driven with the iteration boundaries of 12 measured runs (3 to 18 req/s, 4 hosts), this scheduler
fills every one of their 10,373 iterations as transformers did (``benchmarks/bench_serving_real.py``,
``replay``). Not modelled, and not binding in those runs: transformers' block allocation one token
ahead at a block boundary, and CPU offloading instead of recomputation.
"""

from __future__ import annotations

from perfcast.serving.schedulers.vllm import ContinuousBatching

DEFAULT_SAFETY_MARGIN = 0.15  # transformers' FIFOScheduler default


class HFContinuousBatching(ContinuousBatching):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.set_safety_margin(DEFAULT_SAFETY_MARGIN)

    def set_safety_margin(self, margin: float) -> None:
        self.safety_margin = float(margin)
        self._margin_blocks = self.safety_margin * self.total_blocks

    def _room(self) -> bool:
        # transformers: outside the margin, only decoding requests or the iteration's first request
        return self.free >= self._margin_blocks or not (self.n_dec or self.chunks)

    def _decode_iteration(self, n: int) -> float:
        kv = self.sum_ctx + n
        return self.model.seconds(n, n, n, kv, kv_read=kv) + self.extra_seconds(n, n, kv)

    def _iteration(self, n_dec: int, q_sum: int, pairs: float) -> float:
        chunks = self.chunks
        kv = self.kv_read()
        dur = self.model.seconds(n_dec + q_sum, n_dec + len(chunks), n_dec, self.sum_ctx + n_dec,
                                 len(chunks), q_sum, pairs, kv_read=kv)
        return dur + self.extra_seconds(n_dec + len(chunks), n_dec + q_sum, kv)

    def fast_forward(self, now: float, horizon: float) -> float:
        return now
