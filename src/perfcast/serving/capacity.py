"""How many KV-cache blocks a replica holds, from the step model's memory model.

``gpu memory * gpu_memory_utilization - weights - runtime reserve - activation workspace`` per
GPU, divided by the KV bytes one block takes on that GPU (its TP shard of the KV heads, its
pipeline stage's layers). The workspace is the step model's activation estimate for one
iteration of ``max_batched_tokens`` tokens (vLLM profiles a forward pass of that size before it
sizes the cache).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from perfcast.serving.config import ServingConfig
from perfcast.step import memory as mem
from perfcast.step.predict import StepConfig, _act_dtype, _kvd, _wdtype


@dataclass(frozen=True)
class KVCapacity:
    blocks: int  # per replica (all of its GPUs together hold this many blocks of every layer)
    block_bytes_per_gpu: float
    weights_bytes_per_gpu: float
    workspace_bytes_per_gpu: float
    reserve_bytes_per_gpu: float
    usable_bytes_per_gpu: float


def kv_dtype(step: StepConfig) -> str:
    return step.kv_dtype or _kvd(step)


def kv_bytes_per_token(step: StepConfig) -> float:
    """KV bytes of one token summed over the replica's GPUs (what a disaggregated transfer moves)."""
    return mem.kv_bytes_per_token_per_gpu(step.model, step.tp, step.pp, kv_dtype(step)) * step.tp * step.pp


@functools.cache
def kv_capacity(step: StepConfig, block_size: int, max_batched_tokens: int,
                gpu_memory_utilization: float = 0.9) -> KVCapacity:
    spec = step.model
    w = mem.weights_bytes_per_gpu(spec, step.tp, step.pp, _wdtype(step))
    act = float(mem.activation_bytes(spec, 1, max_batched_tokens, step.tp, _act_dtype(step)))
    reserve = mem.RUNTIME_RESERVE_BYTES + (mem.NCCL_RESERVE_BYTES if step.tp * step.pp > 1 else 0.0)
    usable = step.gpu.mem_capacity_bytes * gpu_memory_utilization - w - act - reserve
    per_block = mem.kv_bytes_per_token_per_gpu(spec, step.tp, step.pp, kv_dtype(step)) * block_size
    return KVCapacity(max(int(usable // per_block), 0), per_block, w, act, reserve, usable)


def describe_shortfall(cap: KVCapacity, step: StepConfig, util: float) -> str:
    gib = mem.GIB
    return (f"{step.model.name} does not leave room for a KV cache on {step.gpu.id} with tp={step.tp}, "
            f"pp={step.pp}: {step.gpu.mem_capacity_bytes / gib:.1f} GiB x {util} utilization - weights "
            f"{cap.weights_bytes_per_gpu / gib:.1f} GiB - workspace {cap.workspace_bytes_per_gpu / gib:.1f} "
            f"GiB - reserve {cap.reserve_bytes_per_gpu / gib:.1f} GiB per GPU; raise tp/pp, use a "
            "larger GPU or a smaller dtype")


def capacity_for(cfg: ServingConfig, step: StepConfig) -> KVCapacity:
    return kv_capacity(step, cfg.block_size, cfg.max_batched_tokens, cfg.gpu_memory_utilization)
