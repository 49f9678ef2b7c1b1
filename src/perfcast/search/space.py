"""The search space: GPU type x TP x PP x scheduler limits x aggregated/disaggregated, and the
memory check that prunes what cannot hold the weights plus a KV cache before anything is timed."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from perfcast.serving.config import TokenDist

DEFAULT_TP = (1, 2, 4, 8)
DEFAULT_PP = (1, 2)
DEFAULT_SEQS = (32, 64, 128, 256)
DEFAULT_TOKENS = (2048, 4096, 8192, 16384)
DEFAULT_SPLITS = ((1, 1), (1, 2), (2, 1))  # disaggregated (prefill, decode) replicas per unit


@dataclass(frozen=True)
class Candidate:
    """One deployment shape. A *unit* is one replica (aggregated) or one prefill+decode group
    (disaggregated); a deployment runs as many units as the rate needs."""

    gpu: str
    tp: int
    pp: int
    max_num_seqs: int
    max_batched_tokens: int
    prefill: int = 0  # disaggregated: prefill replicas per unit (0: aggregated)
    decode: int = 0

    @property
    def disaggregated(self) -> bool:
        return self.prefill > 0

    @property
    def mode(self) -> str:
        return f"disagg {self.prefill}P:{self.decode}D" if self.disaggregated else "aggregated"

    @property
    def gpus_per_unit(self) -> int:
        return (self.prefill + self.decode if self.disaggregated else 1) * self.tp * self.pp

    @property
    def layout(self) -> tuple[str, int, int]:
        return (self.gpu, self.tp, self.pp)


@dataclass(frozen=True)
class SearchRequest:
    """What to serve and the SLA: p90 TTFT and p90 TPOT at ``rate_per_s`` requests per second."""

    model: str
    rate_per_s: float
    sla_ttft_ms: float
    sla_tpot_ms: float
    gpus: tuple[str, ...]
    max_gpus: int = 8
    tp: tuple[int, ...] = DEFAULT_TP
    pp: tuple[int, ...] = DEFAULT_PP
    max_num_seqs: tuple[int, ...] = DEFAULT_SEQS
    max_batched_tokens: tuple[int, ...] = DEFAULT_TOKENS
    splits: tuple[tuple[int, int], ...] = DEFAULT_SPLITS  # empty: aggregated only
    aggregated: bool = True
    input_tokens: TokenDist = field(default_factory=lambda: TokenDist("fixed", 512))
    output_tokens: TokenDist = field(default_factory=lambda: TokenDist("fixed", 128))
    dtype: str = "bf16"
    runtime: str = "cuda-graph"
    profile: str = "auto"
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    kv_link_gbps: float = 400.0
    sim_requests: int = 300
    verify: int = 40  # simulate this many of the cheapest analytic candidates (plus its Pareto set)
    seed: int = 0
    prices: dict = field(default_factory=dict)  # gpu id -> $/GPU-hour overriding the catalog


def candidates(req: SearchRequest) -> list[Candidate]:
    """Every combination, before any check."""
    modes = ([(0, 0)] if req.aggregated else []) + list(req.splits)
    out = []
    for g, tp, pp, s, t, (p, d) in itertools.product(req.gpus, req.tp, req.pp, req.max_num_seqs,
                                                     req.max_batched_tokens, modes):
        if tp * pp <= req.max_gpus and t >= s:
            out.append(Candidate(g, tp, pp, s, t, p, d))
    return out


def mean_tokens(d: TokenDist) -> float:
    if d.dist == "fixed":
        return float(d.value)
    if d.dist == "uniform":
        return (d.min + d.max) / 2.0
    return d.mean


def prune(req: SearchRequest, cands: list[Candidate]) -> tuple[list[Candidate], dict[Candidate, str]]:
    """Drop layouts the model cannot use (TP not dividing the heads, PP beyond the layers) and
    deployments whose GPUs cannot hold the weights and one mean request's KV cache."""
    from perfcast.serving.capacity import kv_capacity
    from perfcast.serving.schedulers.base import blocks_for
    from perfcast.step.predict import make_config

    need = mean_tokens(req.input_tokens) + mean_tokens(req.output_tokens)
    keep, why = [], {}
    layouts: dict[tuple, object] = {}
    for c in cands:
        if c.layout not in layouts:
            try:
                layouts[c.layout] = make_config(req.model, c.gpu, c.tp, c.pp, req.dtype, req.runtime, req.profile)
            except ValueError as e:
                layouts[c.layout] = str(e).splitlines()[0]
        step = layouts[c.layout]
        if isinstance(step, str):
            why[c] = step
            continue
        cap = kv_capacity(step, req.block_size, c.max_batched_tokens, req.gpu_memory_utilization)
        if cap.blocks // c.pp < blocks_for(int(need), req.block_size):
            why[c] = "does not fit in memory (weights + workspace leave no room for one request's KV cache)"
            continue
        keep.append(c)
    return keep, why
