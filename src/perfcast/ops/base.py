"""The op vocabulary: one typed record per kernel (family), vectorized over sweep points.

Shapes may be ints or numpy arrays (one value per sweep point); every cost function broadcasts.
Bounds and provenance travel as small integer codes so that sweeps stay vectorized.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# what limits an op's time
BOUNDS = ("compute", "memory", "latency", "launch", "network", "host")
COMPUTE, MEMORY, LATENCY, LAUNCH, NETWORK, HOST = range(6)
# where a figure comes from
SOURCES = ("measured", "interpolated", "analytical")
MEASURED, INTERPOLATED, ANALYTICAL = range(3)

KINDS = ("gemm", "attention", "elementwise", "collective", "p2p", "transfer", "cpu")


@dataclass(frozen=True)
class Op:
    """One kernel launched ``count`` times per step on one GPU.

    ``dims`` holds the op's shape (see CONTRACT.md for the meaning of each field):
    gemm ``m, n, k`` (``groups``: launches per layer, or with ``meta["batched"]`` problems of one batched
    kernel); attention ``batch, heads, kv_heads, head_dim, q_len, kv_len, causal, window`` (MLA:
    ``v_head_dim``, and ``kv_shared`` when V is a view of K);
    elementwise ``op, tokens, width``; collective ``coll, bytes, gpus``; p2p ``bytes``.
    """

    name: str
    kind: str
    dims: dict
    count: int = 1
    dtype: str = "bf16"
    wdtype: str | None = None  # weight dtype of a GEMM when it differs (weight-only quantization)
    group: str = "layer"  # "pre" (embedding), "layer" (per decoder layer), "post" (final norm, head)
    device: str = "gpu"  # "gpu" or "cpu" (offload plans)
    host_ops: float = 1.0  # eager: Python-dispatched torch ops this kernel stands for
    meta: dict = field(default_factory=dict)

    def get(self, key: str, default=None):
        return self.dims.get(key, default)


@dataclass(frozen=True)
class OpCost:
    """Cost of one op per launch: seconds, bound code and source code (arrays or scalars)."""

    seconds: np.ndarray
    bound: np.ndarray
    source: np.ndarray
    flops: np.ndarray
    bytes: np.ndarray

    @staticmethod
    def of(seconds, bound, source, flops, nbytes) -> OpCost:
        s = np.asarray(seconds, dtype=float)
        shape = s.shape
        return OpCost(seconds=s, bound=broadcast_view(np.asarray(bound, dtype=np.int8), shape),
                      source=broadcast_view(np.asarray(source, dtype=np.int8), shape),
                      flops=broadcast_view(np.asarray(flops, dtype=float), shape),
                      bytes=broadcast_view(np.asarray(nbytes, dtype=float), shape))


def broadcast_view(a: np.ndarray, shape: tuple) -> np.ndarray:
    """``np.broadcast_to(a, shape)`` (a read-only view, never a copy), built directly for the common
    cases: ``a`` already of that shape, or a single value (a few times faster on small arrays)."""
    if a.shape == shape:
        return a
    if a.ndim == 0:
        v = np.ndarray(shape, a.dtype, a, 0, (0,) * len(shape))
        v.flags.writeable = False
        return v
    return np.broadcast_to(a, shape)
