"""One prediction taken apart: per-op rows, time by op family, memory by component, roofline points.

Everything here is plain data (dicts of floats and strings, JSON-ready); printing lives in
:mod:`perfcast.report.tables` and drawing in :mod:`perfcast.report.plots`. Units follow the
contract's edges: ``*_ms``, ``*_gib``, FLOP/s and bytes/s for the roofline.
"""

from __future__ import annotations

from dataclasses import dataclass

PHASES = ("prefill", "decode")


@dataclass(frozen=True)
class Explanation:
    """A prediction with its reasons: ``ops`` (breakdown rows plus roofline coordinates),
    ``families`` (time per op kind per phase), ``memory`` (GiB per component) and ``roofline``
    (the GPU's ceilings for the compute dtype)."""

    prediction: dict
    ops: list[dict]
    families: list[dict]
    memory: list[dict]
    roofline: dict

    def to_dict(self) -> dict:
        return {"prediction": self.prediction, "ops": self.ops, "families": self.families,
                "memory": self.memory, "roofline": self.roofline}

    def phase_ops(self, phase: str) -> list[dict]:
        return [r for r in self.ops if r["phase"] == phase]


def compute_dtype(dtype: str) -> str:
    """The dtype the GEMMs run in: weight-only int8/int4 compute in bf16 (as the step model does)."""
    return dtype if dtype in ("bf16", "fp16", "fp32", "fp8") else "bf16"


def op_point(row: dict) -> dict:
    """Roofline coordinates of one breakdown row: arithmetic intensity (FLOP/byte) and achieved
    FLOP/s and bytes/s over the time the runtime charges. ``None`` where undefined (no FLOPs or
    no bytes, e.g. collectives and copies), so such ops are listed but not placed."""
    seconds = row["ms"] * 1e-3
    flops, nbytes = row["flops"], row["bytes"]
    return {
        "intensity_flop_per_byte": flops / nbytes if flops > 0 and nbytes > 0 else None,
        "achieved_flops_per_s": flops / seconds if flops > 0 and seconds > 0 else None,
        "achieved_bytes_per_s": nbytes / seconds if nbytes > 0 and seconds > 0 else None,
    }


def families(rows: list[dict], totals_ms: dict[str, float]) -> list[dict]:
    """Time per (phase, op kind), largest first, plus the time no op accounts for (host gaps,
    graph launch) as kind ``runtime`` when it is visible."""
    out = []
    for phase in PHASES:
        acc: dict[str, list] = {}
        for r in rows:
            if r["phase"] == phase:
                a = acc.setdefault(r["kind"], [0.0, 0])
                a[0] += r["ms"]
                a[1] += r["count"]
        total = totals_ms[phase]
        gap = total - sum(v[0] for v in acc.values())
        if gap > 1e-3 * total:
            acc["runtime"] = [gap, 0]
        for kind, (ms, launches) in sorted(acc.items(), key=lambda kv: -kv[1][0]):
            out.append({"phase": phase, "kind": kind, "ms": ms, "launches": launches,
                        "share": ms / total if total > 0 else 0.0})
    return out


def memory_rows(pred: dict) -> list[dict]:
    """GiB per GPU by component; ``reserve`` is the CUDA context, workspaces and NCCL buffers."""
    parts = [("weights", pred["weights_gib"]), ("kv_cache", pred["kv_cache_gib"]),
             ("activations", pred["activations_gib"])]
    reserve = pred["total_gib"] - sum(v for _, v in parts)
    parts.append(("reserve", max(reserve, 0.0)))
    cap = pred["capacity_gib"]
    rows = [{"component": k, "gib": v, "share_of_capacity": v / cap if cap > 0 else 0.0} for k, v in parts]
    rows.append({"component": "free", "gib": cap - pred["total_gib"],
                 "share_of_capacity": (cap - pred["total_gib"]) / cap if cap > 0 else 0.0})
    return rows


def roofline(gpu, dtype: str) -> dict:
    """The GPU's ceilings: dense peak FLOP/s of the compute dtype and DRAM bandwidth; the ridge
    point is the intensity where they meet."""
    cd = compute_dtype(dtype)
    peak = gpu.flops(cd)
    bw = gpu.mem_bw_bytes_per_s
    return {"gpu": gpu.id, "gpu_name": gpu.name, "dtype": cd, "peak_flops_per_s": peak,
            "mem_bw_bytes_per_s": bw, "ridge_flop_per_byte": peak / bw}


def explain(model, gpu, batch: int = 1, prompt: int = 512, context: int | None = None, tp: int = 1,
            pp: int = 1, dtype: str = "bf16", runtime: str = "cuda-graph", profile: str = "auto") -> Explanation:
    """Predict one step with its breakdown and take it apart. ``context`` defaults to ``prompt``.
    Raises the step model's InputError/ValueError for cases it cannot predict."""
    from perfcast.hardware import get_gpu
    from perfcast.step.predict import predict

    context = prompt if context is None else context
    p = predict(model, gpu, batch, prompt, context, tp, pp, dtype, runtime, profile, breakdown=True)
    pred = p.to_dict()
    ops = [{**r, **op_point(r)} for r in p.breakdown]
    totals = {"prefill": p.prefill_ms, "decode": p.decode_ms}
    return Explanation(pred, ops, families(ops, totals), memory_rows(pred), roofline(get_gpu(p.gpu), p.dtype))
