"""Pipeline parallelism: stage times, send/recv, micro-batches and the bubble (GPipe, forward only).

The ``pp`` stages hold contiguous layers split as vLLM does (:func:`perfcast.step.memory.stage_layers`):
stage 0 also runs the embedding, the last stage the final norm and the LM head. Each stage is costed
like a one-GPU step over its own ops (``build_ops(layers=...)``) under the deployment's runtime, so
every stage pays its own graph launch (``cuda-graph``: one graph per stage, as vLLM captures each
stage's forward) or its own host dispatch (``eager``: one Python process per stage, the plain
Megatron-style decoder). Between stages the activations ``[tokens, hidden]`` of one micro-batch go
over one NCCL send/recv, costed from the profile's measured ``send_recv`` curve (eager, one way).

A batch of ``batch`` sequences runs as ``M`` micro-batches of ``batch / M`` sequences, GPipe style
(forward only): stage ``s`` receives micro-batch ``m``, computes it, sends it on, then takes ``m + 1``.
Sends and receives are stream-ordered and rendezvous (the receiver's stream must reach the receive,
i.e. have sent its previous micro-batch on), so a stage is busy for its receive, compute and send::

    c_s   one micro-batch's compute on stage s        p_s  the transfer s -> s+1 (p_-1 = p_pp-1 = 0)
    latency  = sum_s c_s + sum_s p_s                     (one micro-batch through the pipeline)
    cycle_s  = p_{s-1} + c_s + p_s                       (stage s's occupancy per micro-batch)
    total(M) = latency + (M - 1) * max_s cycle_s         (GPipe forward-only)

:func:`schedule` evaluates this as a small event recursion, which equals the closed form whenever the
host keeps ahead of the GPU (``cuda-graph``; tests check it) and adds the host limits of ``eager``:
each stage's host issues micro-batch ``m`` after ``m`` micro-batches' worth of dispatch, and a stage's
host work overlaps the stages before it (every stage process starts at once), which a single process
dispatching all layers could not do. Throughput is the batch's tokens over ``total``; the bubble
fraction is the share of the ``pp x total`` GPU time not spent computing, ``1 - M sum_s c_s /
(pp total)`` (``(pp - 1) / (M + pp - 1)`` for equal stages and free transfers).

Splitting a fixed batch into more micro-batches does not always raise throughput: a decode step is
bound by reading each stage's weights, which every micro-batch pays again, so ``M`` micro-batches of
``batch / M`` take about ``(M + pp - 1)`` stage times against ``pp`` for one. At a fixed micro-batch
size, more micro-batches never lower throughput (the bubble is paid once).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from perfcast.hardware.spec import DTYPE_BYTES
from perfcast.models.builder import StepShape, build_ops
from perfcast.ops.base import Op
from perfcast.profiles.registry import resolve_profile
from perfcast.step import memory as mem
from perfcast.step.costs import op_cost, step_costs
from perfcast.step.runtime import get_runtime

PHASES = ("prefill", "decode")
MAX_SIMULATED_MICROBATCHES = 512  # beyond this the steady-state period is extrapolated


def microbatch_size(batch: int, microbatches: int) -> int:
    """Sequences per micro-batch; ``microbatches`` must divide ``batch`` (micro-batches are equal)."""
    from perfcast.step.predict import InputError

    if isinstance(microbatches, bool) or not isinstance(microbatches, (int, np.integer)) or microbatches < 1:
        raise InputError(f"microbatches must be a positive integer, got {microbatches!r}")
    if microbatches > batch:
        raise InputError(f"microbatches={microbatches} exceeds batch={batch}: a micro-batch holds at least one "
                         f"sequence; use microbatches <= {batch}")
    if batch % microbatches:
        valid = [d for d in range(1, batch + 1) if batch % d == 0]
        shown = ", ".join(map(str, valid[:12])) + (", ..." if len(valid) > 12 else "")
        raise InputError(f"microbatches={microbatches} does not divide batch={batch} (micro-batches are equal); "
                         f"valid: {shown}")
    return batch // int(microbatches)


@dataclass(frozen=True)
class StageTimes:
    """Per stage (lists of arrays over the sweep points), seconds, for one micro-batch."""

    layers: list[range]
    seconds: list[np.ndarray]  # the stage's step alone, from its start (kernels + launch / host dispatch)
    gpu_seconds: list[np.ndarray]  # kernels only
    host_seconds: list[np.ndarray]  # host time to issue one micro-batch (graph launch under cuda-graph)
    host_bound: list[np.ndarray]
    send_seconds: list[np.ndarray]  # pp - 1 boundaries
    send_bytes: np.ndarray  # per boundary, per micro-batch (per TP rank)


def stage_ops(cfg, phase: str, batch, prompt, context, layers: range) -> list[Op]:
    """The ops one pipeline stage runs for one micro-batch of ``batch`` sequences."""
    from perfcast.step.predict import _act_dtype, _layout

    shape = StepShape(phase, np.asarray(batch), np.asarray(prompt), np.asarray(context))
    wd = cfg.wdtype or (cfg.dtype if cfg.dtype in ("int8", "int4") else None)
    return build_ops(cfg.model, shape, cfg.tp, _act_dtype(cfg), _layout(cfg), cfg.kv_dtype, wd, 1, cfg.ep,
                     cfg.moe_imbalance, layers=layers)


def stage_times(cfg, phase: str, batch, prompt, context, prof=None) -> StageTimes:
    """Each stage's time for one micro-batch of ``batch`` sequences, and the transfers between stages."""
    from perfcast.step.predict import _act_dtype, host_key

    prof = prof or resolve_profile(cfg.gpu, cfg.profile)
    host = prof.host(host_key(cfg))
    run = get_runtime(cfg.runtime)
    stages = mem.stage_layers(cfg.model.n_layers, cfg.pp)
    cache: dict = {}
    secs, gpus, hosts, hb = [], [], [], []
    for r in stages:
        first, last = r.start == 0, r.stop == cfg.model.n_layers
        key = (len(r), first, last, sum(cfg.model.is_moe_layer(i) for i in r), _swa(cfg.model, r))
        if key not in cache:
            ops = stage_ops(cfg, phase, batch, prompt, context, r)
            rt = run(ops, step_costs(ops, cfg.gpu, prof), host, prof.eff)
            cache[key] = rt
        rt = cache[key]
        secs.append(np.asarray(rt.seconds, dtype=float))
        gpus.append(np.asarray(rt.gpu_seconds, dtype=float))
        hosts.append(np.asarray(rt.host_seconds, dtype=float))
        hb.append(np.asarray(rt.host_bound))
    tokens = np.asarray(batch) * (np.asarray(prompt) if phase == "prefill" else 1)
    nbytes = tokens * cfg.model.hidden * float(DTYPE_BYTES[_act_dtype_bytes(_act_dtype(cfg))])
    sends = []
    if cfg.pp > 1:
        op = Op("pp_send", "p2p", {"coll": "send_recv", "bytes": nbytes, "gpus": 2}, 1, cfg.dtype, None, "post")
        sends = [np.asarray(op_cost(op, cfg.gpu, prof).seconds, dtype=float)] * (cfg.pp - 1)
    return StageTimes(stages, secs, gpus, hosts, hb, sends, np.asarray(nbytes, dtype=float))


def _act_dtype_bytes(adt: str) -> str:
    return adt if adt in ("bf16", "fp16", "fp32") else "bf16"  # fp8 GEMMs still pass bf16 activations


def _swa(spec, r: range) -> int:
    from perfcast.models.builder import stage_sliding_layers

    return stage_sliding_layers(spec, r) if spec.sliding_window else 0


def schedule(stage_s, send_s, microbatches: int, gpu_s=None, host_s=None):
    """GPipe forward-only timing of ``microbatches`` equal micro-batches through the stages.

    ``stage_s[s]``: stage s's time for one micro-batch started alone at t = 0 (what :func:`stage_times`
    calls ``seconds``); ``gpu_s[s]`` its kernel time (default: ``stage_s``); ``host_s[s]`` the host time
    its process spends issuing one micro-batch (default 0: the host keeps ahead); ``send_s[s]`` the
    transfer s -> s+1. Arrays broadcast (sweep points). Returns ``(latency, total)``: when the first
    micro-batch leaves the last stage, and when the last one does.
    """
    pp = len(stage_s)
    if len(send_s) != pp - 1:
        raise ValueError(f"{pp} stages need {pp - 1} transfers, got {len(send_s)}")
    m_total = int(microbatches)
    if m_total < 1:
        raise ValueError("microbatches must be >= 1")
    stand = [np.asarray(x, dtype=float) for x in stage_s]
    gpu = stand if gpu_s is None else [np.asarray(x, dtype=float) for x in gpu_s]
    host = [np.zeros(()) for _ in range(pp)] if host_s is None else [np.asarray(x, dtype=float) for x in host_s]
    send = [np.asarray(x, dtype=float) for x in send_s]
    free = [np.zeros(()) for _ in range(pp)]  # when stage s's stream is done with its previous micro-batch
    latency = None
    ends = []
    n_sim = min(m_total, MAX_SIMULATED_MICROBATCHES)
    for m in range(n_sim):
        arrive = np.zeros(())
        for s in range(pp):
            start = np.maximum(arrive, free[s])
            end = np.maximum(start + gpu[s], m * host[s] + stand[s])
            if s < pp - 1:
                # rendezvous: the receiver's stream takes the transfer once its previous send is done
                arrive = np.maximum(end, free[s + 1]) + send[s]
                free[s] = arrive
            else:
                free[s] = end
        if latency is None:
            latency = free[-1]
        ends.append(free[-1])
    total = ends[-1]
    if m_total > n_sim:  # steady state: extrapolate the period of the last simulated micro-batches
        k = min(pp + 1, n_sim - 1)
        period = (ends[-1] - ends[-1 - k]) / k
        total = total + (m_total - n_sim) * period
    return latency, total


def gpipe_closed_form(stage_s, send_s, microbatches: int):
    """``sum c + sum p + (M - 1) max_s (p_{s-1} + c_s + p_s)``: the schedule without host limits."""
    pp = len(stage_s)
    c = [np.asarray(x, dtype=float) for x in stage_s]
    p = [np.asarray(x, dtype=float) for x in send_s]
    lat = sum(c) + (sum(p) if p else 0.0)
    cyc = [c[s] + (p[s - 1] if s > 0 else 0.0) + (p[s] if s < pp - 1 else 0.0) for s in range(pp)]
    return lat, lat + (int(microbatches) - 1) * np.maximum.reduce(np.broadcast_arrays(*cyc))


def cycles(times: StageTimes) -> list[np.ndarray]:
    """Each stage's occupancy per micro-batch: receive + compute + send."""
    pp = len(times.seconds)
    out = []
    for s in range(pp):
        c = np.maximum(times.gpu_seconds[s], times.host_seconds[s])
        out.append(c + (times.send_seconds[s - 1] if s > 0 else 0.0) + (times.send_seconds[s] if s < pp - 1 else 0.0))
    return out


def latency_from_ops(cfg, ops: list[Op], costs: list, host, eff) -> np.ndarray:
    """One micro-batch's latency through the pipeline, from the whole model's ops and their costs (as
    ``step_ops`` builds them, with ``pp_send``): each stage gets the embedding (first), the final norm
    and head (last), and the layer ops with their counts scaled to its share of the layers; the
    ``p2p`` op gives each transfer. Exact for uniform layers; the serving model uses it so that its
    iterations keep :func:`stage_times`' pipeline without rebuilding ops."""
    from dataclasses import replace

    run = get_runtime(cfg.runtime)
    n = cfg.model.n_layers
    sends = [np.asarray(c.seconds, dtype=float) for o, c in zip(ops, costs) if o.kind == "p2p"][:1]
    body = [(o, c) for o, c in zip(ops, costs) if o.kind != "p2p"]
    secs, gpus, hosts = [], [], []
    for r in mem.stage_layers(n, cfg.pp):
        sel = [(replace(o, count=o.count * len(r) / n) if o.group == "layer" else o, c) for o, c in body
               if (o.group != "pre" or r.start == 0) and (o.group != "post" or r.stop == n)]
        rt = run([o for o, _ in sel], [c for _, c in sel], host, eff)
        secs.append(rt.seconds)
        gpus.append(rt.gpu_seconds)
        hosts.append(rt.host_seconds)
    send = sends[0] if sends else np.zeros(())
    lat, _ = schedule(secs, [send] * (cfg.pp - 1), 1, gpus, hosts)
    return np.asarray(lat, dtype=float)


def pipeline_seconds(cfg, phase: str, batch, prompt, context, microbatches: int = 1, prof=None):
    """``(latency, total, StageTimes)`` for ``batch`` sequences in ``microbatches`` equal micro-batches."""
    mb = np.asarray(batch) // int(microbatches)
    t = stage_times(cfg, phase, mb, prompt, context, prof)
    lat, tot = schedule(t.seconds, t.send_seconds, microbatches, t.gpu_seconds, t.host_seconds)
    return lat, tot, t


@dataclass(frozen=True)
class PipelinePrediction:
    """One phase of one batch through a ``pp``-stage pipeline. Times in ms."""

    model: str
    gpu: str
    phase: str
    batch: int
    prompt: int
    context: int
    tp: int
    pp: int
    microbatches: int
    microbatch_size: int
    dtype: str
    runtime: str
    profile: str
    latency_ms: float  # one micro-batch through every stage (its time to first token / token)
    total_ms: float  # all micro-batches (GPipe forward-only)
    tokens_per_s: float  # prefill: batch x prompt / total; decode: batch / total
    bubble_fraction: float  # share of pp x total GPU time not spent computing
    bottleneck_stage: int  # the stage with the longest cycle (receive + compute + send)
    send_bytes: int  # activations per boundary per micro-batch (per TP rank)
    stages: list = field(default_factory=list)  # per stage: layers, ms, gpu_ms, host_ms, send_ms, cycle_ms
    total_gib: float = 0.0  # memory of the most loaded GPU
    fits: bool = True

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in (
            "model", "gpu", "phase", "batch", "prompt", "context", "tp", "pp", "microbatches", "microbatch_size",
            "dtype", "runtime", "profile", "latency_ms", "total_ms", "tokens_per_s", "bubble_fraction",
            "bottleneck_stage", "send_bytes", "total_gib", "fits", "stages")}


def pipeline(model, gpu, batch: int = 1, prompt: int = 512, context: int = 512, tp: int = 1, pp: int = 2,
             microbatches: int = 1, phase: str = "decode", dtype: str = "bf16", runtime: str = "cuda-graph",
             profile: str = "auto", kv_dtype: str | None = None, wdtype: str | None = None, ep: int = 1,
             moe_imbalance: float = 1.0) -> PipelinePrediction:
    """Predict one phase (``prefill`` or ``decode``) of ``batch`` sequences through a ``pp``-stage pipeline
    in ``microbatches`` equal micro-batches: per-stage times, the send/recv per boundary, the latency of
    one micro-batch, the time of all of them, throughput and the bubble. ``pp=1`` runs the micro-batches
    one after another on one GPU; ``microbatches=1`` gives ``predict(...)``'s ``prefill_ms``/``decode_ms``.
    """
    from perfcast.step.predict import InputError, _pos_int, check_lengths, make_config

    if phase not in PHASES:
        raise InputError(f"phase must be 'prefill' or 'decode', got {phase!r}")
    cfg = make_config(model, gpu, tp, pp, dtype, runtime, profile, kv_dtype, wdtype, ep, moe_imbalance)
    b = int(_pos_int("batch", batch))
    p = int(_pos_int("prompt", prompt))
    c = int(_pos_int("context", context))
    check_lengths(cfg, p, c)
    return pipeline_cfg(cfg, phase, b, p, c, microbatches)


def pipeline_cfg(cfg, phase: str, b: int, p: int, c: int, microbatches: int = 1) -> PipelinePrediction:
    """:func:`pipeline` for a resolved :class:`~perfcast.step.predict.StepConfig`."""
    from perfcast.step.predict import _act_dtype
    from perfcast.step.predict import _kvd as kvd
    from perfcast.step.predict import _wdtype as wdt

    mb = microbatch_size(b, microbatches)
    m = int(microbatches)
    prof = resolve_profile(cfg.gpu, cfg.profile)
    lat, tot, t = pipeline_seconds(cfg, phase, b, p, c, m, prof)
    cyc = cycles(t)
    lat, tot = float(lat), float(tot)
    busy = sum(float(g) for g in t.gpu_seconds)
    bubble = max(0.0, 1.0 - m * busy / (cfg.pp * tot)) if tot > 0 else 0.0
    tokens = b * (p if phase == "prefill" else 1)
    stages = []
    for s, r in enumerate(t.layers):
        send = float(t.send_seconds[s]) if s < cfg.pp - 1 else 0.0
        stages.append({"stage": s, "layers": [r.start, r.stop], "ms": float(t.seconds[s]) * 1e3,
                       "gpu_ms": float(t.gpu_seconds[s]) * 1e3, "host_ms": float(t.host_seconds[s]) * 1e3,
                       "host_bound": bool(t.host_bound[s]), "send_ms": send * 1e3,
                       "cycle_ms": float(cyc[s]) * 1e3})
    memo = mem.memory(cfg.model, cfg.gpu, b, p, c, cfg.tp, cfg.pp, wdt(cfg), cfg.kv_dtype or kvd(cfg),
                      _act_dtype(cfg))
    return PipelinePrediction(
        model=cfg.model.name, gpu=cfg.gpu.id, phase=phase, batch=b, prompt=p, context=c, tp=cfg.tp, pp=cfg.pp,
        microbatches=m, microbatch_size=mb, dtype=cfg.dtype, runtime=cfg.runtime, profile=prof.name,
        latency_ms=lat * 1e3, total_ms=tot * 1e3, tokens_per_s=tokens / tot if tot > 0 else float("inf"),
        bubble_fraction=bubble, bottleneck_stage=int(np.argmax([float(x) for x in cyc])),
        send_bytes=int(float(t.send_bytes)), stages=stages, total_gib=float(memo.total_bytes) / mem.GIB,
        fits=bool(memo.fits))
