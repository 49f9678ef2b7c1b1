"""Replay a request trace against a real serving engine on one GPU; record every request's tokens.

    PYTHONPATH=src python3 -m perfcast.measure.serve_run --model meta-llama/Llama-3.1-8B \\
        --engines hf-cb,static --rates hf-cb=2,8,16 --rates static=2,5,8 --duration-s 25 --out out/serve

The requests come from perfcast's own workload generator (Poisson arrivals at ``--rate``, token
counts from ``--input-tokens`` / ``--output-tokens``, JSON as in a ``perfcast simulate`` config, and
``--seed``), or from ``--trace FILE`` (perfcast's CSV/JSONL trace: ``arrival_s``, ``input_tokens``,
``output_tokens``). Models are built from perfcast's shipped ``config.json`` with random weights
(nothing is downloaded); prompts are random token ids; every request generates exactly its
``output_tokens`` (end-of-sequence is disabled).

Engines:

- ``hf-cb``: ``transformers`` continuous batching (``model.init_continuous_batching``, the ``fifo``
  scheduler, the synchronous loop in its background thread), with ``--max-num-seqs`` as
  ``max_requests_per_batch``, ``--max-batched-tokens`` as ``max_batch_tokens``, ``--block-size`` and
  a KV cache of ``--num-blocks`` blocks (default: room for ``--max-num-seqs`` of the trace's longest
  requests, 1.5 times over). A submitter thread calls ``add_request`` at each arrival time (wall
  clock); transformers stamps every generated token (``record_timestamps``). Attention
  (``--attn``): ``varlen`` (default) registers, through transformers' ``AttentionInterface``, the
  paged attention of its ``flash_attention_2`` path (the cache's K/V gathered with ``index_select``,
  then one causal varlen launch) run on torch's own flash kernel, as no flash-attn package is
  installed; it is checked against a per-sequence SDPA reference on the GPU first and falls back to
  ``paged|sdpa`` if it fails. ``sdpa`` uses transformers' stock ``paged|sdpa``, which attends every
  packed query to every key of the iteration through a dense mask. Either way transformers picks no
  CUDA graphs, no compile and no async batching (its defaults for an attention it does not know as
  flash), and every iteration is timed: host time to prepare the batch, to issue the forward, the
  wait for the GPU, and the host time to hand out the tokens (``steps.jsonl``: the calibration of
  the engine's host overhead).
- ``static``: a static-batching server loop on perfcast's plain decoder (``decoder.py``, the
  ``cuda-graph`` reference of the step model): when idle it takes up to ``--static-batch`` arrived
  requests, pads prompts to the longest, runs one prefill, then decodes every slot to the longest
  output. Decode steps replay CUDA graphs captured before the trace, one per (batch size, KV length
  rounded up to ``--kv-bucket`` tokens): a step attends over at most ``kv-bucket - 1`` more keys
  than it needs. Prefill runs eagerly (GPU-bound).

Each engine is warmed up before its first run (hf-cb: a burst of requests whose iterations are
recorded as the ``warmup`` phase; static: graph capture and two prefills). ``--wall-limit-s``
bounds the whole process: a run that would not finish in time is skipped, one that overruns is cut
(its unfinished requests are marked).

Output under ``--out``: ``<model>/<engine>-<label>/requests.jsonl`` (one line per request),
``summary.json`` (TTFT / TPOT / ITL / E2E mean, p50, p90, p99, throughput, the engine's exact
settings, software and GPU), ``steps.jsonl`` (iterations), and ``index.json`` over all runs.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_INPUT = {"dist": "lognormal", "mean": 320, "sigma": 0.7, "min": 16, "max": 1024}
DEFAULT_OUTPUT = {"dist": "lognormal", "mean": 64, "sigma": 0.6, "min": 8, "max": 256}
ATTN_VARLEN = "paged|perfcast_varlen"
ENGINES = ("hf-cb", "static")


# =========================================================================== requests and traces
@dataclass
class Req:
    """One request of a run. Times are seconds from the run's start (its first scheduled arrival is 0)."""

    id: int
    arrival_s: float
    input_tokens: int
    output_tokens: int
    submit_s: float = math.nan  # when the engine got it (hf-cb: add_request; static: its arrival)
    sched_s: float = math.nan  # when the engine first scheduled it
    tokens_s: list = field(default_factory=list)  # the time of every output token
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.error is None and len(self.tokens_s) == self.output_tokens

    def row(self) -> dict:
        t = self.tokens_s
        first = t[0] if t else None
        last = t[-1] if t else None
        ok = self.complete
        return {"id": self.id, "arrival_s": self.arrival_s, "submit_s": self.submit_s, "sched_s": self.sched_s,
                "input_tokens": self.input_tokens, "output_tokens": self.output_tokens, "generated": len(t),
                "first_token_s": first, "last_token_s": last,
                "ttft_ms": (first - self.submit_s) * 1e3 if ok else None,
                "tpot_ms": (last - first) * 1e3 / (len(t) - 1) if ok and len(t) > 1 else None,
                "e2e_ms": (last - self.submit_s) * 1e3 if ok else None,
                "error": self.error, "tokens_s": [round(x, 6) for x in t]}


def make_trace(rate_per_s: float, requests: int, input_tokens=None, output_tokens=None, seed: int = 0,
               model: str = "meta-llama/Llama-3.1-8B") -> list[Req]:
    """Poisson arrivals and token counts from perfcast's workload generator (the requests ``perfcast
    simulate`` draws for the same workload and seed)."""
    from perfcast.models import get_model
    from perfcast.serving.config import Workload
    from perfcast.serving.workload import generate

    w = Workload.parse({"arrival": "poisson", "rate_per_s": rate_per_s, "requests": int(requests),
                        "input_tokens": input_tokens or DEFAULT_INPUT,
                        "output_tokens": output_tokens or DEFAULT_OUTPUT, "seed": int(seed)})
    return [Req(r.id, r.arrival, r.prompt, r.output) for r in generate(w, get_model(model).max_positions)]


def load_trace(path: str) -> list[Req]:
    """A perfcast trace file (CSV or JSONL with arrival_s, input_tokens, output_tokens), by arrival."""
    from perfcast.serving.workload import read_trace

    t, p, o = read_trace(path)
    order = np.argsort(t, kind="stable")
    t0 = float(t[order[0]])
    return [Req(i, float(t[j]) - t0, int(p[j]), int(o[j])) for i, j in enumerate(order)]


# =========================================================================== timing logic (pure Python)
def _sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.perf_counter()))


def replay(reqs: list[Req], submit, t0: float, clock=time.perf_counter, sleep_until=_sleep_until,
           stop: threading.Event | None = None, deadline: float = math.inf, tick: float = 0.05) -> int:
    """Call ``submit(r)`` for each request at ``t0 + r.arrival_s`` on ``clock`` (never early; late
    when the process is busy), stamping ``r.submit_s``. Stops at ``deadline`` or when ``stop`` is
    set (checked every ``tick`` seconds while waiting); returns how many were submitted."""
    n = 0
    for r in sorted(reqs, key=lambda r: r.arrival_s):
        due = t0 + r.arrival_s
        while True:
            now = clock()
            if (stop is not None and stop.is_set()) or now >= deadline:
                return n
            if now >= due:
                break
            sleep_until(min(due, now + tick))
        r.submit_s = clock() - t0
        submit(r)
        n += 1
    return n


class StaticServer:
    """Static batching, as perfcast's ``static`` scheduler defines it: when idle, take up to
    ``max_batch`` requests that have arrived (first come, first served; no waiting for the batch to
    fill), run one prefill over prompts padded to the longest (every request's first token), then
    decode every slot until the longest output is done (decode step ``k`` attends over ``pmax + k``
    keys and gives token ``k + 1`` to the requests that want it). ``prefill(b, pmax)`` and
    ``decode(b, kv_len)`` run one step and return once its tokens exist."""

    def __init__(self, reqs: list[Req], max_batch: int, prefill, decode, clock=time.perf_counter,
                 sleep_until=_sleep_until):
        self.reqs = sorted(reqs, key=lambda r: r.arrival_s)
        self.max_batch = int(max_batch)
        self.prefill, self.decode, self.clock, self.sleep_until = prefill, decode, clock, sleep_until
        self.batches: list[dict] = []

    def run(self, t0: float, deadline: float = math.inf) -> None:
        pending, queue = deque(self.reqs), deque()
        clock = self.clock
        while pending or queue:
            now = clock()
            if now >= deadline:
                break
            while pending and t0 + pending[0].arrival_s <= now:
                r = pending.popleft()
                r.submit_s = r.arrival_s
                queue.append(r)
            if not queue:
                self.sleep_until(min(t0 + pending[0].arrival_s, deadline))
                continue
            batch = [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]
            b = len(batch)
            pmax = max(r.input_tokens for r in batch)
            omax = max(r.output_tokens for r in batch)
            start = clock() - t0
            for r in batch:
                r.sched_s = start
            self.prefill(b, pmax)
            t = clock() - t0
            for r in batch:
                r.tokens_s.append(t)
            steps = [t]
            for k in range(1, omax):
                if clock() >= deadline:
                    break
                self.decode(b, pmax + k)
                t = clock() - t0
                steps.append(t)
                for r in batch:
                    if len(r.tokens_s) < r.output_tokens:
                        r.tokens_s.append(t)
            self.batches.append({"start_s": start, "batch": b, "pmax": pmax, "omax": omax, "steps_s": steps})
        for r in list(pending) + list(queue):
            r.error = r.error or "not served before the wall limit"
        for r in self.reqs:
            if r.error is None and len(r.tokens_s) < r.output_tokens:
                r.error = "cut by the wall limit"


# =========================================================================== summary statistics
def summarize(reqs: list[Req]) -> dict:
    """TTFT, TPOT, ITL, E2E and queueing ``{mean, p50, p90, p99}`` in ms (perfcast's definitions and
    percentile rule: TTFT = first token - arrival at the engine, TPOT per request = (last - first) /
    (output - 1), ITL = every gap between a request's consecutive tokens, E2E = last token - arrival),
    throughput over first arrival to last token, and how late requests reached the engine."""
    from perfcast.serving.metrics import stats, weighted_stats

    done = [r for r in reqs if r.complete]
    sub = np.array([r.submit_s for r in done], dtype=float)
    first = np.array([r.tokens_s[0] for r in done], dtype=float)
    last = np.array([r.tokens_s[-1] for r in done], dtype=float)
    out = np.array([r.output_tokens for r in done], dtype=float)
    inp = np.array([r.input_tokens for r in done], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(out > 1, (last - first) * 1e3 / np.maximum(out - 1, 1), np.nan)
    gaps = np.concatenate([np.diff(np.asarray(r.tokens_s, dtype=float)) for r in done]) if done else np.array([])
    late = np.array([r.submit_s - r.arrival_s for r in reqs if not math.isnan(r.submit_s)], dtype=float)
    sched = np.array([r.sched_s - r.submit_s for r in done if not math.isnan(r.sched_s)], dtype=float)
    s = {"requests": len(reqs), "completed": len(done), "incomplete": len(reqs) - len(done),
         "ttft_ms": stats((first - sub) * 1e3), "tpot_ms": stats(tpot),
         "itl_ms": weighted_stats(gaps * 1e3, np.ones(gaps.shape)), "e2e_ms": stats((last - sub) * 1e3),
         "queue_ms": stats(sched * 1e3)}
    if done:
        duration = max(float(last.max() - sub.min()), 1e-12)
        s.update(duration_s=duration, output_tokens_per_s=float(out.sum()) / duration,
                 input_tokens_per_s=float(inp.sum()) / duration, requests_per_s=len(done) / duration)
    else:
        s.update(duration_s=None, output_tokens_per_s=None, input_tokens_per_s=None, requests_per_s=None)
    s["submit_late_ms"] = {"mean": float(late.mean() * 1e3) if late.size else None,
                           "p99": float(np.percentile(late, 99) * 1e3) if late.size else None,
                           "max": float(late.max() * 1e3) if late.size else None}
    return s


def kv_bucket(kv_len: int, bucket: int) -> int:
    """The KV length a static decode step attends over: ``kv_len`` rounded up to ``bucket``."""
    return -(-int(kv_len) // bucket) * bucket


def default_num_blocks(reqs_max_len: int, max_num_seqs: int, block_size: int) -> int:
    """KV blocks for ``max_num_seqs`` of the longest requests, 1.5x over (transformers allocates up to
    two blocks ahead) and never under 16: the cache never binds."""
    per = -(-reqs_max_len // block_size) + 2
    return max(16, int(math.ceil(1.5 * max_num_seqs * per)))


# =========================================================================== the hf-cb engine
class StepRecorder:
    """Times every iteration of transformers' continuous-batching loop by wrapping, at class level,
    ``ContinuousBatchProcessor.prepare_next_batch`` / ``_generation_step`` / ``update_batch`` and
    ``ModelRunner.compute_batch``. Per iteration: start, batch prepared, forward issued (the host
    returned from the forward, logits processing and sampling), GPU done (the compute stream
    synchronized), tokens handed out; and what the batch held."""

    def __init__(self):
        self.steps: list[tuple] = []
        self.phase = "idle"
        self._cur: list | None = None
        self._saved: list = []

    def install(self) -> None:
        from transformers.generation.continuous_batching import continuous_api as api
        from transformers.generation.continuous_batching import model_runner as mr

        cbp, runner, rec = api.ContinuousBatchProcessor, mr.ModelRunner, self
        pc = time.perf_counter
        orig_prep, orig_gen, orig_upd = cbp.prepare_next_batch, cbp._generation_step, cbp.update_batch
        orig_compute = runner.compute_batch

        def prepare_next_batch(self):
            t0 = pc()
            ok = orig_prep(self)
            if ok:  # the bookkeeping below is counted with the engine's own preparation
                info = rec.batch_info(self)
                rec._cur = [rec.phase, t0, pc(), None, None, None, *info]
            return ok

        def _generation_step(self, model):
            orig_gen(self, model)
            if rec._cur is not None:
                rec._cur[4] = pc()

        def update_batch(self):
            orig_upd(self)
            if rec._cur is not None:
                rec._cur[5] = pc()
                rec.steps.append(tuple(rec._cur))
                rec._cur = None

        def compute_batch(self, model, batch_data):
            orig_compute(self, model, batch_data)
            if rec._cur is not None:
                rec._cur[3] = pc()

        self._saved = [(cbp, "prepare_next_batch", orig_prep), (cbp, "_generation_step", orig_gen),
                       (cbp, "update_batch", orig_upd), (runner, "compute_batch", orig_compute)]
        cbp.prepare_next_batch, cbp._generation_step, cbp.update_batch = prepare_next_batch, _generation_step, update_batch
        runner.compute_batch = compute_batch

    def uninstall(self) -> None:
        for cls, name, fn in self._saved:
            setattr(cls, name, fn)
        self._saved = []

    @staticmethod
    def batch_info(proc) -> list:
        """n requests, query tokens, decodes, their KV (cache + new token), cached tokens of the
        batch, the prefill chunks as [cached, new], waiting and active requests."""
        n = q_sum = n_dec = dec_kv = past_sum = 0
        chunks = []
        for fs in proc.inputs_and_outputs.requests_in_batch:
            q = fs.query_length
            past = fs.state.position_offset - q  # prepare_batch_tensors advanced it by q
            n += 1
            q_sum += q
            past_sum += past
            if fs.state.generated_len() > 0:
                n_dec += 1
                dec_kv += past + q
            else:
                chunks.append([past, q])
        sch = proc.scheduler
        return [n, q_sum, n_dec, dec_kv, past_sum, chunks, len(sch.waiting_requests), len(sch.active_requests)]

    FIELDS = ("phase", "t_start", "t_prepared", "t_issued", "t_synced", "t_end", "requests", "q_tokens",
              "decodes", "decode_kv", "past_tokens", "chunks", "waiting", "active")

    def rows(self, phase: str, t0: float) -> list[dict]:
        out = []
        for s in self.steps:
            if s[0] != phase:
                continue
            d = dict(zip(self.FIELDS, s))
            for k in ("t_start", "t_prepared", "t_issued", "t_synced", "t_end"):
                d[k] = None if d[k] is None else round(d[k] - t0, 7)
            out.append(d)
        return out


def _loop_varlen(torch, q, k, v, cu_q, cu_k, scale):
    """Reference varlen attention: per sequence, SDPA with a causal mask aligned bottom-right."""
    import torch.nn.functional as F

    out = torch.zeros_like(q)
    cq, ck = cu_q.tolist(), cu_k.tolist()
    for i in range(len(cq) - 1):
        a, b, c, d = cq[i], cq[i + 1], ck[i], ck[i + 1]
        if b <= a:
            continue
        lq, lk = b - a, d - c
        mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
        o = F.scaled_dot_product_attention(q[a:b].transpose(0, 1)[None], k[c:d].transpose(0, 1)[None],
                                           v[c:d].transpose(0, 1)[None], attn_mask=mask, scale=scale,
                                           enable_gqa=True)
        out[a:b] = o[0].transpose(0, 1)
    return out


def _flash_varlen(torch, q, k, v, cu_q, cu_k, max_q, max_k, scale):
    """torch's flash-attention varlen kernel (the one behind SDPA's flash backend), causal aligned
    bottom-right, GQA native: q [T, H, D], k/v [K, Hk, D] -> [T, H, D]."""
    return torch.ops.aten._flash_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, True, False,
                                                   scale=scale)[0]


def varlen_selftest(torch, heads: int, kv_heads: int, head_dim: int, dtype, device) -> dict:
    """Check the flash varlen kernel against the per-sequence reference on the GPU: decodes, chunks
    of a cached prompt and fresh prefills in one launch."""
    g = torch.Generator(device="cpu").manual_seed(0)
    lens = [(1, 37), (17, 60), (25, 25), (1, 300), (64, 64)]
    cu_q = torch.tensor([0] + list(np.cumsum([a for a, _ in lens])), dtype=torch.int32, device=device)
    cu_k = torch.tensor([0] + list(np.cumsum([b for _, b in lens])), dtype=torch.int32, device=device)
    T, K = int(cu_q[-1]), int(cu_k[-1])
    q = torch.randn(T, heads, head_dim, generator=g).to(device=device, dtype=dtype)
    k = torch.randn(K, kv_heads, head_dim, generator=g).to(device=device, dtype=dtype)
    v = torch.randn(K, kv_heads, head_dim, generator=g).to(device=device, dtype=dtype)
    scale = head_dim ** -0.5
    try:
        got = _flash_varlen(torch, q, k, v, cu_q, cu_k, max(a for a, _ in lens), max(b for _, b in lens), scale)
        ref = _loop_varlen(torch, q.float(), k.float(), v.float(), cu_q, cu_k, scale)
        err = float((got.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6))
        return {"ok": bool(err < 0.03), "rel_err": err}
    except Exception as e:  # no flash kernel for this GPU/dtype/shape
        return {"ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}"}


def register_varlen_attention(torch, use_flash: bool) -> None:
    """Register ``paged|perfcast_varlen``: transformers' paged flash path (write the new K/V, gather
    each sequence's cached K/V with ``index_select``, one causal varlen launch), on torch's flash
    kernel (``use_flash``) or the per-sequence reference loop (CPU smoke tests)."""
    from transformers import AttentionInterface

    def paged_varlen(module, query, key, value, attention_mask, cache=None, cu_seq_lens_q=None,
                     cu_seq_lens_k=None, max_seqlen_q=None, max_seqlen_k=None, **kwargs):
        if getattr(module, "sliding_window", None):
            raise NotImplementedError("paged|perfcast_varlen has no sliding-window layers")
        if isinstance(cu_seq_lens_k, dict):
            cu_seq_lens_k, max_seqlen_k = cu_seq_lens_k["full_attention"], max_seqlen_k["full_attention"]
        k, v = cache.update(key_states=key, value_states=value, layer_idx=module.layer_idx,
                            read_index=kwargs["read_index"], write_index=kwargs["write_index"])
        q = query.transpose(1, 2).squeeze(0).contiguous()
        cu_q = cu_seq_lens_q.to(torch.int32)
        cu_k = cu_seq_lens_k.to(torch.int32).clone()
        if use_flash:
            out = _flash_varlen(torch, q, k.contiguous(), v.contiguous(), cu_q, cu_k, int(max_seqlen_q),
                                int(max_seqlen_k), module.scaling)
        else:
            out = _loop_varlen(torch, q, k, v, cu_q, cu_k, module.scaling)
        return out, None

    AttentionInterface.register(ATTN_VARLEN, paged_varlen)


class HFCBEngine:
    """transformers continuous batching over an HF model with random weights."""

    name = "hf-cb"

    def __init__(self, model: str, layers, device: str, dtype_name: str, max_num_seqs: int,
                 max_batched_tokens: int, block_size: int, num_blocks: int, attn: str, log=print):
        import torch
        import transformers
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        from perfcast.measure import hf_step

        transformers.logging.set_verbosity_error()
        self.torch, self.log = torch, log
        self.device = torch.device(device)
        dtype = _dtype(torch, dtype_name)
        t = time.perf_counter()
        self.m = hf_step.build(model, layers, device, dtype)
        self.build_s = time.perf_counter() - t
        c = self.m.config.get_text_config()
        self.attn_check = None
        impl = "paged|sdpa"
        if attn == "varlen":
            use_flash = self.device.type == "cuda"
            if use_flash:
                hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
                self.attn_check = varlen_selftest(torch, c.num_attention_heads, c.num_key_value_heads or
                                                  c.num_attention_heads, hd, dtype, self.device)
                log(f"hf-cb: flash varlen self-test {self.attn_check}")
            if not use_flash or self.attn_check["ok"]:
                register_varlen_attention(torch, use_flash)
                impl = ATTN_VARLEN
            else:
                log("hf-cb: the flash varlen kernel failed its check; falling back to paged|sdpa")
        self.m.set_attn_implementation(impl)
        if self.device.type == "cpu":  # no psutil on a bare host: transformers would see 0 bytes free
            from transformers.generation.continuous_batching import cache as cb_cache

            cb_cache.get_device_and_memory_breakdown = lambda: (torch.device("cpu"), 64 << 30, 0, 0)
        self.gen = GenerationConfig(do_sample=False, eos_token_id=-1, max_new_tokens=16)
        self.cb = ContinuousBatchingConfig(
            block_size=block_size, num_blocks=num_blocks, max_batch_tokens=max_batched_tokens,
            max_requests_per_batch=max_num_seqs, allow_block_sharing=False, scheduler_type="fifo",
            use_cuda_graph=False, use_async_batching=False, seed=0)
        self.vocab = c.vocab_size
        self.rec = StepRecorder()
        self.rec.install()
        self.mgr = self.m.init_continuous_batching(generation_config=self.gen, continuous_batching_config=self.cb)
        self.mgr.start()
        try:
            deadline = time.perf_counter() + 300
            while self.mgr.batch_processor is None and self.mgr.is_running() and time.perf_counter() < deadline:
                time.sleep(0.01)
            if self.mgr.batch_processor is None:
                raise RuntimeError("transformers' continuous batching loop did not start "
                                   f"({self.mgr.background_thread_status.fatal_error})")
        except BaseException:
            self.close()
            raise
        self._rng = np.random.default_rng(1234)

    def settings(self) -> dict:
        import transformers

        bp, cfg = self.mgr.batch_processor, self.mgr.continuous_batching_config
        return {"engine": "transformers continuous batching (init_continuous_batching, synchronous loop)",
                "transformers": transformers.__version__, "attn_implementation": self.m.config._attn_implementation,
                "attn_selftest": self.attn_check, "scheduler": type(bp.scheduler).__name__,
                "scheduler_type": cfg.scheduler_type, "safety_margin": bp.scheduler.safety_margin,
                "block_size": bp.cache.block_size, "num_blocks": bp.cache.num_blocks,
                "max_batch_tokens": bp.cache.max_batch_tokens,
                "max_requests_per_batch": bp.scheduler.max_requests_per_batch,
                "max_blocks_per_request": bp.cache.max_blocks_per_request,
                "decode_fast_path": bp.cache.max_blocks_per_request > 0,
                "use_cuda_graph": list(cfg.use_cuda_graph), "use_async_batching": cfg.use_async_batching,
                "varlen_compile": None if cfg.varlen_compile_config is None else cfg.varlen_compile_config.to_dict(),
                "decode_compile": None if cfg.decode_compile_config is None else cfg.decode_compile_config.to_dict(),
                "allow_block_sharing": cfg.allow_block_sharing, "prefix_sharing": bp.cache.use_prefix_sharing,
                "do_sample": bp.do_sample, "logits_processing": bool(self.mgr.logit_processor.do_processing),
                "eos": "disabled (eos_token_id=-1): every request generates exactly output_tokens",
                "model_build_s": round(self.build_s, 2)}

    def _ids(self, n: int) -> list[int]:
        return [int(x) for x in self._rng.integers(0, self.vocab, size=n)]

    def run(self, reqs: list[Req], label: str, deadline: float) -> tuple[list[Req], list[dict]]:
        """Submit ``reqs`` at their arrival times; wait for every one (or the deadline)."""
        mgr, rec = self.mgr, self.rec
        prompts = {r.id: self._ids(r.input_tokens) for r in reqs}
        by_id = {f"{label}-{r.id}": r for r in reqs}
        rec.phase = label
        stop = threading.Event()
        old_switch = sys.getswitchinterval()
        sys.setswitchinterval(5e-4)  # the submitter gets the GIL back quickly from the engine thread

        def submit(r: Req):
            mgr.add_request(prompts[r.id], request_id=f"{label}-{r.id}", max_new_tokens=r.output_tokens,
                            record_timestamps=True, eos_token_id=-1)

        t0 = time.perf_counter() + 0.05
        th = threading.Thread(target=replay, args=(reqs, submit, t0), kwargs={"stop": stop, "deadline": deadline},
                              daemon=True)
        th.start()
        got = 0
        try:
            while got < len(reqs):
                now = time.perf_counter()
                if now >= deadline or not mgr.is_running():
                    break
                res = mgr.get_result(timeout=min(1.0, max(deadline - now, 0.01)))
                if res is None or not res.is_finished():
                    continue
                r = by_id.get(res.request_id)
                if r is None:
                    continue
                got += 1
                if res.error is not None:
                    r.error = str(res.error)[:300]
                r.tokens_s = [x - t0 for x in (res.timestamps or [])]
                if res.lifespan[0] > 0:
                    r.sched_s = res.lifespan[0] - t0
                if len(res.generated_tokens) != r.output_tokens and r.error is None:
                    r.error = f"generated {len(res.generated_tokens)} tokens, not {r.output_tokens}"
        finally:
            stop.set()
            th.join(timeout=5)
            sys.setswitchinterval(old_switch)
            rec.phase = "idle"
        missing = [rid for rid, r in by_id.items() if not r.tokens_s and r.error is None]
        for rid in missing:
            mgr.cancel_request(rid)
            by_id[rid].error = "not finished before the wall limit"
        if missing:
            time.sleep(0.5)  # let the loop drop the cancelled requests before the next run
        return reqs, rec.rows(label, t0)

    def warmup(self, reqs: list[Req], deadline: float) -> list[dict]:
        """One lone request (first-call costs), then ``reqs`` all at once (a burst that takes the
        batch from full to empty): the burst's iterations are the calibration phase ``warmup``."""
        self.run([Req(0, 0.0, 16, 4)], "firstcall", deadline)
        for r in reqs:
            r.arrival_s = 0.0
        return self.run(reqs, "warmup", deadline)[1]

    def close(self) -> None:
        if self.mgr is not None:
            with contextlib.suppress(Exception):
                self.mgr.stop(block=True, timeout=30, hard_stop=True)
            with contextlib.suppress(Exception):
                self.mgr.destroy()
        self.rec.uninstall()
        self.mgr = self.m = None
        _cleanup(self.torch)


# =========================================================================== the static engine
class StaticEngine:
    """Static batching on perfcast's plain decoder: eager prefill, CUDA-graph decode (one graph per
    batch size and KV bucket, captured before the trace)."""

    name = "static"

    def __init__(self, model: str, layers, device: str, dtype_name: str, max_batch: int, max_prompt: int,
                 max_len: int, bucket: int, graphs: bool = True, log=print, prefill_sdpa: str = "flash"):
        import torch

        from perfcast.measure.decoder import Decoder
        from perfcast.models import get_model

        self.torch, self.log = torch, log
        self.device = torch.device(device)
        spec = get_model(model)
        if layers:
            spec = spec.with_layers(int(layers))
        t = time.perf_counter()
        self.d = Decoder(spec, device=self.device, dtype=_dtype(torch, dtype_name))
        self.build_s = time.perf_counter() - t
        self.max_batch, self.bucket = int(max_batch), int(bucket)
        self.cache_len = kv_bucket(max_len, self.bucket)
        self.d.alloc_cache(self.max_batch, self.cache_len)
        self.full_k, self.full_v = self.d.k_cache, self.d.v_cache
        self.ids = torch.randint(0, spec.vocab, (self.max_batch, max(int(max_prompt), 1)), device=self.device)
        self.dec_ids = torch.randint(0, spec.vocab, (self.max_batch, 1), device=self.device)
        self.prefill_pos = torch.arange(max(int(max_prompt), 1), device=self.device)
        self.pos = torch.zeros(1, dtype=torch.long, device=self.device)
        self.use_graphs = bool(graphs) and self.device.type == "cuda"
        self.graphs: dict[tuple[int, int], object] = {}
        self.capture_s = 0.0
        self.capture_error = None
        self.decode_steps: list[tuple[int, int, int]] = []  # (batch, kv_len, kv attended)
        # prefill attention backend: "flash" (no per-shape set-up) or "default" (torch's choice: cuDNN's
        # fused attention on Hopper with torch 2.11, which builds an execution plan per new shape)
        self.prefill_sdpa = prefill_sdpa
        self.shape_probe: dict = {}

    def _sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def _use(self, b: int) -> None:
        self.d.k_cache, self.d.v_cache = self.full_k[:, :b], self.full_v[:, :b]

    def _sdpa_ctx(self):
        if self.prefill_sdpa == "default" or self.device.type != "cuda":
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.FLASH_ATTENTION])

    def prefill(self, b: int, p: int) -> None:
        self._use(b)
        with self._sdpa_ctx():
            self.d.forward(self.ids[:b, :p], self.prefill_pos[:p], None)
        self._sync()

    def probe_new_shapes(self) -> dict:
        """Time a prefill at a shape never run before, then again (set-up cost of a new shape), under the
        chosen backend and under torch's default backend; recorded in the settings."""
        out = {}
        for backend, p in (("chosen", 97), ("default", 89)):
            saved = self.prefill_sdpa
            if backend == "default":
                self.prefill_sdpa = "default"
            times = []
            for _ in range(3):
                t = time.perf_counter()
                self.prefill(1, p)
                times.append(round((time.perf_counter() - t) * 1e3, 3))
            self.prefill_sdpa = saved
            out[backend] = {"prompt": p, "first_ms": times[0], "repeat_ms": times[1:]}
        self.shape_probe = out
        return out

    def decode(self, b: int, kv_len: int) -> None:
        kb = kv_bucket(kv_len, self.bucket)
        self.pos.fill_(kv_len - 1)
        g = self.graphs.get((b, kb))
        if g is not None:
            g.replay()
        else:
            self._use(b)
            self.d.forward(self.dec_ids[:b], self.pos, kb)
        self._sync()
        self.decode_steps.append((b, kv_len, kb))

    def capture(self, sizes: list[int], kv_lens: list[int], deadline: float) -> None:
        """One graph per (batch size, KV bucket), each after one eager warm-up run on a side stream;
        the graphs share one memory pool (they never run at once and their outputs are not read)."""
        torch = self.torch
        if not self.use_graphs:
            return
        t = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        try:
            for b in sizes:
                for kb in kv_lens:
                    if time.perf_counter() > deadline:
                        raise TimeoutError("graph capture ran past its share of the wall limit")
                    self._use(b)
                    self.pos.fill_(kb - 1)
                    s = torch.cuda.Stream()
                    s.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(s):
                        self.d.forward(self.dec_ids[:b], self.pos, kb)
                    torch.cuda.current_stream().wait_stream(s)
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g, pool=pool):
                        self.d.forward(self.dec_ids[:b], self.pos, kb)
                    self.graphs[(b, kb)] = g
            torch.cuda.synchronize()
        except Exception as e:  # decode the rest eagerly, and say so
            self.capture_error = f"{type(e).__name__}: {str(e)[:300]}"
            self.log(f"static: graph capture stopped ({self.capture_error}); uncaptured shapes run eagerly")
            with contextlib.suppress(Exception):
                torch.cuda.synchronize()
        self.capture_s = time.perf_counter() - t

    def warmup(self, max_prompt: int) -> None:
        if self.device.type == "cuda":
            self.log(f"static: new-shape prefill probe {self.probe_new_shapes()}")
        self.prefill(self.max_batch, max(int(max_prompt), 1))
        self.prefill(1, 16)
        self.decode(1, 17)
        self.decode_steps.clear()

    def settings(self) -> dict:
        return {"engine": "static batching on perfcast's plain decoder (decoder.py)",
                "max_batch": self.max_batch, "kv_bucket": self.bucket, "cache_len": self.cache_len,
                "decode": "CUDA graph per (batch, KV bucket)" if self.use_graphs else "eager",
                "graphs": len(self.graphs), "graph_capture_s": round(self.capture_s, 2),
                "graph_capture_error": self.capture_error, "prefill": "eager (no graph), prompts padded",
                "prefill_sdpa": self.prefill_sdpa, "new_shape_probe": self.shape_probe,
                "model_build_s": round(self.build_s, 2)}

    def run(self, reqs: list[Req], label: str, deadline: float) -> tuple[list[Req], list[dict]]:
        self.decode_steps.clear()
        srv = StaticServer(reqs, self.max_batch, self.prefill, self.decode)
        t0 = time.perf_counter() + 0.05
        srv.run(t0, deadline)
        return reqs, srv.batches

    def close(self) -> None:
        self.graphs.clear()
        self.d = self.full_k = self.full_v = None
        _cleanup(self.torch)


# =========================================================================== orchestration
def _dtype(torch, name: str):
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def _cleanup(torch) -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def env_record(device: str) -> dict:
    """GPU, clocks, driver and software (perfcast.measure.env), for every summary."""
    import torch

    from perfcast.measure.env import collect

    m = collect(torch, device if (device == "cuda" and torch.cuda.is_available()) else "cpu")
    try:
        import transformers

        m["transformers_version"] = transformers.__version__
    except ImportError:
        m["transformers_version"] = None
    m["numpy_version"] = np.__version__
    return m


def _slug(model: str) -> str:
    """A folder name for a model id (``meta-llama/Llama-3.1-8B`` -> ``meta-llama__Llama-3.1-8B``) or path."""
    p = Path(model)
    if p.exists():
        return (p.parent.name if p.name == "config.json" else p.stem if p.is_file() else p.name) or "model"
    return model.replace("/", "__")


def parse_rates(items: list[str], engines: list[str]) -> dict[str, list[float]]:
    """``["2,8"]`` for every engine, or ``["hf-cb=2,8,16", "static=2,5"]`` per engine."""
    out: dict[str, list[float]] = {}
    for it in items or []:
        if "=" in it:
            eng, vals = it.split("=", 1)
            targets = [eng.strip()]
        else:
            targets, vals = list(engines), it
        rates = [float(x) for x in vals.split(",") if x.strip()]
        if not rates or any(r <= 0 for r in rates):
            raise ValueError(f"rates must be positive numbers, got {it!r}")
        for e in targets:
            if e not in ENGINES:
                raise ValueError(f"unknown engine {e!r} in --rates; engines: {', '.join(ENGINES)}")
            out[e] = rates
    return out


def plan_runs(args, engines: list[str], models: list[str]) -> list[dict]:
    """Every (model, engine, label, requests) to run, traces drawn up front."""
    rates = parse_rates(args.rates, engines)
    runs = []
    for model in models:
        for e in engines:
            if args.trace:
                runs.append({"model": model, "engine": e, "label": "trace", "rate": None,
                             "reqs": load_trace(args.trace)})
                continue
            for i, rate in enumerate(rates.get(e, [])):
                n = args.requests or max(args.min_requests, min(int(round(rate * args.duration_s)),
                                                                 args.max_requests))
                reqs = make_trace(rate, n, args.input_tokens, args.output_tokens, args.seed + i, model)
                runs.append({"model": model, "engine": e, "label": f"r{rate:g}", "rate": rate, "reqs": reqs})
    return runs


def write_run(dirpath: Path, reqs: list[Req], steps: list[dict], summary: dict) -> None:
    dirpath.mkdir(parents=True, exist_ok=True)
    with open(dirpath / "requests.jsonl", "w") as f:
        f.writelines(json.dumps(r.row()) + "\n" for r in reqs)
    with open(dirpath / "steps.jsonl", "w") as f:
        f.writelines(json.dumps(s) + "\n" for s in steps)
    (dirpath / "summary.json").write_text(json.dumps(summary, indent=1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m perfcast.measure.serve_run", description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", default=None,
                   help="model id or config.json path (repeat for several; default meta-llama/Llama-3.1-8B)")
    p.add_argument("--engines", default="hf-cb,static", help="comma list of: " + ", ".join(ENGINES))
    p.add_argument("--rates", action="append", default=None,
                   help="request rates (req/s): '2,8' for every engine or 'hf-cb=2,8,16' per engine (repeat)")
    p.add_argument("--trace", default=None, help="a perfcast trace (CSV/JSONL) instead of generated requests")
    p.add_argument("--duration-s", type=float, default=25.0, help="requests per run = rate x this")
    p.add_argument("--requests", type=int, default=None, help="requests per run (overrides --duration-s)")
    p.add_argument("--min-requests", type=int, default=40)
    p.add_argument("--max-requests", type=int, default=600)
    p.add_argument("--input-tokens", type=json.loads, default=None, help=f"JSON token distribution ({DEFAULT_INPUT})")
    p.add_argument("--output-tokens", type=json.loads, default=None, help=f"JSON token distribution ({DEFAULT_OUTPUT})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-num-seqs", type=int, default=32, help="hf-cb: max_requests_per_batch")
    p.add_argument("--max-batched-tokens", type=int, default=2048, help="hf-cb: max_batch_tokens")
    p.add_argument("--block-size", type=int, default=256, help="hf-cb: KV block size (tokens)")
    p.add_argument("--num-blocks", type=int, default=None, help="hf-cb: KV blocks (default: never binding)")
    p.add_argument("--attn", choices=("varlen", "sdpa"), default="varlen", help="hf-cb attention (see above)")
    p.add_argument("--warmup-requests", type=int, default=None, help="hf-cb burst size (default 2 x max-num-seqs)")
    p.add_argument("--static-batch", type=int, default=16, help="static: most requests per batch")
    p.add_argument("--kv-bucket", type=int, default=128, help="static: decode KV length granularity of the graphs")
    p.add_argument("--no-graphs", action="store_true", help="static: decode eagerly")
    p.add_argument("--prefill-sdpa", choices=("flash", "default"), default="flash",
                   help="static: prefill attention backend (default backend = cuDNN on Hopper, which sets up "
                        "an execution plan per new prompt shape, tens of ms)")
    p.add_argument("--layers", type=int, default=None, help="fewer decoder layers (smoke tests)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--wall-limit-s", type=float, default=280.0, help="the whole process, model builds included")
    p.add_argument("--drain-s", type=float, default=30.0,
                   help="a run may go on this long after its last arrival; what is unfinished then is cut")
    p.add_argument("--out", default="serve_out")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    deadline = t_start + args.wall_limit_s
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    bad = [e for e in engines if e not in ENGINES]
    if bad:
        p.error(f"unknown engine(s) {bad}; choose from {', '.join(ENGINES)}")
    models = args.model or ["meta-llama/Llama-3.1-8B"]
    try:
        runs = plan_runs(args, engines, models)
    except (ValueError, OSError) as e:
        p.error(str(e))
    if not runs:
        p.error("nothing to run: give --rates (or --trace)")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device: use --device cpu for a smoke test")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = env_record(args.device)

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    log(f"device {env.get('gpu_name')} ({env.get('gpu_id')}), torch {torch.__version__}, "
        f"transformers {env.get('transformers_version')}; {len(runs)} runs planned")
    index = {"env": env, "args": {k: v for k, v in vars(args).items()}, "runs": []}
    rc = 0
    for model in models:
        for e in engines:
            todo = [r for r in runs if r["model"] == model and r["engine"] == e]
            if not todo:
                continue
            left = deadline - time.perf_counter()
            if left < 30:
                log(f"{model} {e}: skipped, {left:.0f} s left of the wall limit")
                index["runs"] += [{"model": model, "engine": e, "label": r["label"], "skipped": "wall limit"}
                                  for r in todo]
                continue
            try:
                rc |= _run_engine(args, model, e, todo, out, env, index, deadline, log)
            except Exception as ex:  # one engine failing must not lose the others' results
                import traceback

                traceback.print_exc()
                log(f"{model} {e}: failed: {type(ex).__name__}: {ex}")
                index["runs"].append({"model": model, "engine": e, "error": f"{type(ex).__name__}: {ex}"})
                rc = 1
            (out / "index.json").write_text(json.dumps(index, indent=1))
    index["wall_s"] = time.perf_counter() - t_start
    (out / "index.json").write_text(json.dumps(index, indent=1))
    log(f"done in {index['wall_s']:.1f} s")
    return rc


def _run_engine(args, model, e, todo, out, env, index, deadline, log) -> int:
    """Build one engine, warm it up, run its traces, tear it down. The static engine runs under
    ``torch.inference_mode`` (as the step-model harness does); transformers' loop runs its forward
    under ``no_grad`` in its own thread, so its model is built under ``no_grad`` too (inference
    tensors could not be updated in place there)."""
    import torch

    with torch.inference_mode() if e == "static" else torch.no_grad():
        return _run_engine_inner(args, model, e, todo, out, env, index, deadline, log)


def _run_engine_inner(args, model, e, todo, out, env, index, deadline, log) -> int:
    max_in = max(r.input_tokens for run in todo for r in run["reqs"])
    max_out = max(r.output_tokens for run in todo for r in run["reqs"])
    min_in = min(r.input_tokens for run in todo for r in run["reqs"])
    t_build = time.perf_counter()
    if e == "hf-cb":
        nb = args.num_blocks or default_num_blocks(max_in + max_out, args.max_num_seqs, args.block_size)
        eng = HFCBEngine(model, args.layers, args.device, args.dtype, args.max_num_seqs, args.max_batched_tokens,
                         args.block_size, nb, args.attn, log)
        log(f"{model} hf-cb: built in {eng.build_s:.1f} s; attention {eng.m.config._attn_implementation}")
    else:
        eng = StaticEngine(model, args.layers, args.device, args.dtype, args.static_batch, max_in,
                           max_in + max_out, args.kv_bucket, graphs=not args.no_graphs, log=log,
                           prefill_sdpa=args.prefill_sdpa)
        log(f"{model} static: built in {eng.build_s:.1f} s")
    try:  # whatever happens, the engine (and transformers' non-daemon thread) is shut down
        return _warm_and_run(args, model, e, todo, out, env, index, deadline, log, eng, t_build,
                             (min_in, max_in, max_out))
    finally:
        eng.close()


def _warm_and_run(args, model, e, todo, out, env, index, deadline, log, eng, t_build, lengths) -> int:
    min_in, max_in, max_out = lengths
    warm_steps: list[dict] = []
    if e == "hf-cb":
        n_warm = args.warmup_requests if args.warmup_requests is not None else 2 * args.max_num_seqs
        warm = make_trace(1.0, max(n_warm, 1), args.input_tokens,
                          {"dist": "uniform", "min": 4, "max": max(8, min(max_out, 64))}, args.seed + 1000, model)
        warm_steps = eng.warmup(warm, min(deadline, time.perf_counter() + 60))
        log(f"{model} hf-cb: warm-up burst of {len(warm)} requests, {len(warm_steps)} iterations")
    else:
        eng.warmup(max_in)
        lo, hi = kv_bucket(min_in + 1, args.kv_bucket), kv_bucket(max_in + max_out - 1, args.kv_bucket)
        eng.capture(list(range(1, args.static_batch + 1)), list(range(lo, hi + 1, args.kv_bucket)),
                    min(deadline, time.perf_counter() + 60))
        log(f"{model} static: {len(eng.graphs)} decode graphs captured in {eng.capture_s:.1f} s")
    setup_s = time.perf_counter() - t_build
    settings = eng.settings()
    base = out / _slug(model)
    if warm_steps:
        write_run(base / f"{e}-warmup", [], warm_steps, {"engine": e, "model": model, "label": "warmup",
                                                          "settings": settings, "env": env})
    rc = 0
    for run in todo:
        reqs = run["reqs"]
        span = reqs[-1].arrival_s if reqs else 0.0
        left = deadline - time.perf_counter()
        if left < span + 5:
            log(f"{model} {e} {run['label']}: skipped ({span:.0f} s of arrivals, {left:.0f} s left)")
            index["runs"].append({"model": model, "engine": e, "label": run["label"], "skipped": "wall limit"})
            continue
        t = time.perf_counter()
        reqs, steps = eng.run(reqs, run["label"], min(deadline, t + span + args.drain_s))
        wall = time.perf_counter() - t
        summ = summarize(reqs)
        summary = {"engine": e, "model": model, "label": run["label"], "rate_per_s": run["rate"],
                   "workload": {"input_tokens": args.input_tokens or DEFAULT_INPUT,
                                "output_tokens": args.output_tokens or DEFAULT_OUTPUT,
                                "seed": args.seed, "trace": args.trace},
                   **summ, "wall_s": wall, "engine_setup_s": setup_s,
                   "complete": summ["incomplete"] == 0, "settings": settings, "env": env}
        if e == "static":
            kv = np.array([(k - n) for _, n, k in eng.decode_steps], dtype=float)
            summary["static_kv_overshoot_mean"] = float(kv.mean()) if kv.size else None
        d = base / f"{e}-{run['label']}"
        write_run(d, reqs, steps, summary)
        index["runs"].append({"model": model, "engine": e, "label": run["label"], "dir": str(d.relative_to(out)),
                              "requests": len(reqs), "incomplete": summ["incomplete"]})
        fmt = lambda m, s=summ: "-" if s[m]["mean"] is None else f"{s[m]['mean']:.1f}"
        p90 = summ["ttft_ms"]["p90"]
        log(f"{model} {e} {run['label']}: {len(reqs)} requests in {wall:.1f} s, TTFT mean {fmt('ttft_ms')} "
            f"p90 {'-' if p90 is None else f'{p90:.1f}'} ms, TPOT mean {fmt('tpot_ms')} ms, "
            f"{summ['incomplete']} incomplete")
        if summ["incomplete"]:
            rc = 1
    return rc

if __name__ == "__main__":
    sys.exit(main())
