"""Sweeps behind the HTML report and the web UI's charts, as JSON-ready lists.

One deployment (:class:`~perfcast.step.predict.StepConfig`) is swept over batch at a fixed context,
over context at a fixed batch (``prompt == context``: the prefill reads the whole context), and
its memory wall is traced: the largest batch that fits at each context.
"""

from __future__ import annotations

import numpy as np

DEFAULT_BATCHES = tuple(2**i for i in range(11))  # 1 .. 1024
MIN_CONTEXT = 256


def default_contexts(max_positions: int) -> list[int]:
    """Powers of two from 256 up to the model's limit, and the limit itself."""
    out = [c for c in (2**i for i in range(8, 25)) if c <= max_positions]
    if not out or out[-1] != max_positions:
        out.append(int(max_positions))
    return out


def _lists(d: dict) -> dict:
    return {k: np.asarray(v).tolist() for k, v in d.items()}


def _dtypes(cfg) -> tuple[str, str]:
    """Weight and KV-cache dtypes the way ``perfcast capacity`` reads them."""
    wd = cfg.wdtype or cfg.dtype
    kvd = cfg.kv_dtype or (cfg.dtype if cfg.dtype in ("bf16", "fp16", "fp32") else "bf16")
    return wd, kvd


def batch_sweep(cfg, batches, context: int, prompt: int | None = None) -> dict:
    """Latency, decode throughput and memory against batch at one context."""
    from perfcast.step.predict import sweep

    b = np.asarray(batches, dtype=np.int64)
    r = sweep(cfg, None, batch=b, prompt=context if prompt is None else prompt, context=context)
    return _lists({"batch": b, "prefill_ms": r["prefill_ms"], "decode_ms": r["decode_ms"],
                   "tokens_per_s": b / (r["decode_ms"] * 1e-3), "total_gib": r["total_gib"], "fits": r["fits"]})


def context_sweep(cfg, contexts, batch: int) -> dict:
    """Latency and memory against context (prompt == context) at one batch."""
    from perfcast.step.predict import sweep

    c = np.asarray(contexts, dtype=np.int64)
    r = sweep(cfg, None, batch=batch, prompt=c, context=c)
    return _lists({"context": c, "prefill_ms": r["prefill_ms"], "decode_ms": r["decode_ms"],
                   "tokens_per_s": batch / (r["decode_ms"] * 1e-3), "total_gib": r["total_gib"],
                   "fits": r["fits"]})


def memory_wall(cfg, contexts) -> dict:
    """The largest batch that fits at each context (0: not even one sequence)."""
    from perfcast.step.memory import max_batch

    wd, kvd = _dtypes(cfg)
    mb = [max_batch(cfg.model, cfg.gpu, int(c), None, cfg.tp, cfg.pp, wd, kvd) for c in contexts]
    return {"context": [int(c) for c in contexts], "max_batch": mb}


def best_throughput(by_batch: dict) -> dict | None:
    """The sweep point with the most decode tokens/s among those that fit."""
    fitting = [i for i, ok in enumerate(by_batch["fits"]) if ok]
    if not fitting:
        return None
    i = max(fitting, key=lambda j: by_batch["tokens_per_s"][j])
    return {k: by_batch[k][i] for k in ("batch", "decode_ms", "tokens_per_s", "total_gib")}


def gpu_section(cfg, batches, contexts, batch: int, context: int) -> dict:
    """Everything the report shows for one GPU."""
    from perfcast.step.predict import predict_many

    g = cfg.gpu
    by_batch = batch_sweep(cfg, batches, context)
    best = best_throughput(by_batch)
    price = g.price_per_hour_usd
    usd_per_mtok = price / (best["tokens_per_s"] * 3600) * 1e6 if best and price > 0 else None
    return {
        "id": g.id, "name": g.name, "capacity_gib": g.mem_capacity_bytes / 2**30,
        "mem_bw_tbps": g.mem_bw_bytes_per_s / 1e12, "peak_tflops": g.flops(_compute(cfg.dtype)) / 1e12,
        "price_per_hour_usd": price or None, "usd_per_million_tokens": usd_per_mtok,
        "reference": predict_many(cfg, batch, context, context)[0].to_dict(),
        "by_batch": by_batch, "by_context": context_sweep(cfg, contexts, batch),
        "memory_wall": memory_wall(cfg, contexts), "best": best,
    }


def _compute(dtype: str) -> str:
    from perfcast.report.explain import compute_dtype

    return compute_dtype(dtype)


def report_data(model, gpus, batch: int = 8, context: int = 2048, batches=None, contexts=None, tp: int = 1,
                pp: int = 1, dtype: str = "bf16", runtime: str = "cuda-graph", profile: str = "auto") -> dict:
    """The report's data set for ``model`` on each of ``gpus``. A GPU that cannot run the case
    (e.g. no fp8 on its datasheet) is listed under ``skipped`` with the reason; unknown models,
    GPU names and invalid parallelism raise."""
    from perfcast import __version__
    from perfcast.step.predict import DtypeUnsupported, check_lengths, make_config

    if not gpus:
        raise ValueError("give at least one GPU (e.g. --gpus h100-sxm,h200)")
    cfgs, skipped = [], []
    for g in gpus:
        try:
            cfgs.append(make_config(model, g, tp, pp, dtype, runtime, profile))
        except DtypeUnsupported as e:  # listed, not fatal: the other GPUs still make the report
            from perfcast.hardware import get_gpu

            skipped.append({"gpu": get_gpu(g).id if isinstance(g, str) else g.id, "error": str(e)})
    if not cfgs:
        raise ValueError("no GPU could run this case: " + "; ".join(f"{s['gpu']}: {s['error']}" for s in skipped))
    spec = cfgs[0].model
    batches = sorted({int(b) for b in (batches or DEFAULT_BATCHES)})
    contexts = sorted({int(c) for c in (contexts or default_contexts(spec.max_positions))})
    check_lengths(cfgs[0], max(contexts), context)
    sections = []
    for cfg in cfgs:
        try:
            sections.append(gpu_section(cfg, batches, contexts, batch, context))
        except (KeyError, ValueError) as e:
            skipped.append({"gpu": cfg.gpu.id, "error": str(e).strip("'\"")})
    if not sections:
        raise ValueError("no GPU could run this case: " + "; ".join(f"{s['gpu']}: {s['error']}" for s in skipped))
    return {
        "generator": f"perfcast {__version__}",
        "model": spec.name, "params_b": spec.total_params() / 1e9, "max_positions": spec.max_positions,
        "settings": {"batch": batch, "context": context, "tp": tp, "pp": pp, "dtype": dtype, "runtime": runtime,
                     "profile": profile, "batches": batches, "contexts": contexts},
        "gpus": sections, "skipped": skipped,
    }
