"""Development metric for FP8 (torch._scaled_mm) GEMM predictions, on the shipped FP8 grids only.

Two checks per GPU (h100-sxm, h200), each for several predictors (the shipped one and the candidates it
was chosen among); the held-out sets are not read:

* leave-one-M-out (the path a held-out row of a measured weight takes): for every FP8 weight (n, k) each
  interior grid M in turn is dropped (every row at that M) and predicted from the weight's other rows;
* leave-one-weight-out (the path of a weight nobody measured): each weight in turn is dropped and its rows
  are predicted from the other weights.

Pooled parameters (the FP8 reference's tile padding, fixed overhead and scale) are fitted on the other
weights only. Prints MAPE / p90 / signed mean (%) over all rows and by M: odd multiples of 32 (below
1024, the grid's only M that are not multiples of 64), other M below 1024, 1024-4095, 4096 and up.

    PYTHONPATH=src python benchmarks/fp8_loo.py [--only NAME]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import gemm_loo

from perfcast.hardware import get_gpu
from perfcast.profiles import measured as ms
from perfcast.profiles.interp import Curve, monotone_log_ratio

DATA = Path(ms.__file__).resolve().parent / "data"
GPUS = ("h100-sxm", "h200")


def grid(gpu_id: str) -> dict:
    """{(n, k): (m, seconds)} of every FP8 row of a GPU's shipped tables (sorted by m; an M timed in two
    tables keeps both rows)."""
    by: dict[tuple, list] = {}
    for f in sorted((DATA / gpu_id).glob("gemm*.csv")):
        if "heldout" in f.name:
            continue
        for r in ms._read_csv(f):
            if r.get("median_ms") and r["dtype"] == "fp8":
                by.setdefault((int(r["n"]), int(r["k"])), []).append((float(r["m"]), float(r["median_ms"]) * 1e-3))
    return {key: tuple(np.array(c) for c in zip(*sorted(v))) for key, v in by.items()}


# ------------------------------------------------------------------ references: fit(gpu, weights) -> ref
# weights: {(n, k): (sorted distinct m, mean log seconds)}; ref(gpu, m, n, k) -> seconds

def ideal_ref(gpu, weights):
    return lambda g, m, n, k: ms._ideal_gemm(g, np.asarray(m, dtype=float), n, k, "fp8").seconds


def smooth_ref(gpu, weights):
    return lambda g, m, n, k: gemm_loo.smooth_gemm(g, m, n, k, "fp8")


def padded_ref(gpu, weights):
    """Tile padding fitted as in the shipped reference, the 2 us floor of the smooth roofline, no scale."""
    pad = ms._fit_reference(gpu, "fp8", weights)[0]
    return lambda g, m, n, k: np.maximum(ms._gemm_work(g, "fp8", m, n, k, pad), ms.IDEAL.gemm_floor_s)


def overhead_ref(gpu, weights):
    """Fixed overhead and scale fitted as in the shipped reference, without tile padding."""
    work = np.concatenate([ms._gemm_work(gpu, "fp8", um, n, k, 0.0) for (n, k), (um, _) in weights.items()])
    t = np.exp(np.concatenate([lt for _, lt in weights.values()]))
    params = (0.0, *ms._fit_floor_and_scale(work, t))
    return lambda g, m, n, k: ms._gemm_reference(g, "fp8", m, n, k, params)


def shipped_ref(gpu, weights):
    params = ms._fit_reference(gpu, "fp8", weights)
    return lambda g, m, n, k: ms._gemm_reference(g, "fp8", m, n, k, params)


# ------------------------------------------------------------------ predictors
class Method:
    """own: "line" (log-log line through the padding envelope of the neighbours: the former predictor),
    "bf16" (gemm_loo.gemm_own_curve over ``ref``: the former bf16 predictor), "fit" (local fit of the log ratio
    over ``ref``, interpolated between grid M; the shipped predictor). blend: "idw" (the former inverse-
    distance blend of the 8 nearest points in (log m, log n, log k) of the envelope ratio over IDEAL),
    "plane-env" (measured._local_linear_curve of the envelope ratios over ``ref``: the bf16 blend),
    "plane-fit" (the same plane over each weight's local fit: the shipped blend)."""

    def __init__(self, name, ref, own, blend):
        self.name, self.ref, self.own, self.blend = name, ref, own, blend

    def predict_own(self, gpu, ref, n, k, m, t, q):
        if self.own == "line":
            base = ms._ideal_gemm(gpu, m, n, k, "fp8").seconds
            lr = monotone_log_ratio(m, np.log(t / base), base)
            return np.exp(Curve(m, lr + np.log(base))(q))
        um, lt = ms._unique_log(m, t)
        if self.own == "bf16":
            md, ld = gemm_loo.gemm_own_curve(gpu, "fp8", n, k, um, np.exp(lt))
            return np.exp(np.interp(np.log(q), np.log(md), ld))
        fit = ms._local_line(np.log(um), lt - np.log(ref(gpu, um, n, k)), ms._OWN_HALF)
        return ref(gpu, q, n, k) * np.exp(np.interp(np.log(q), np.log(um), fit))

    def curves(self, gpu, ref, weights, env_ref):
        """_gemm_pts-style shapes (n, k, features, log ratio) of the weights."""
        out = []
        for (n, k), (um, lt) in weights.items():
            if self.blend == "plane-fit":
                lr = ms._local_line(np.log(um), lt - np.log(ref(gpu, um, n, k)), ms._OWN_HALF)
            else:  # the padding envelope of the times, over IDEAL (idw) or over ref (plane-env)
                t = np.minimum.accumulate(np.exp(lt)[::-1])[::-1]
                lr = np.log(t / (env_ref if self.blend == "idw" else ref)(gpu, um, n, k))
            f = np.stack([np.log(um), np.full(um.shape, np.log(n)), np.full(um.shape, np.log(k))], axis=1)
            out.append((n, k, f, lr))
        return out

    def predict_weight(self, gpu, ref, shapes, n, k, m):
        if self.blend == "idw":
            tab = ms.Tables.__new__(ms.Tables)
            tab._gemm_pts, tab._blend_cache = {("fp8", True): shapes}, {}
            lr, _ = tab._gemm_blend("fp8", m, n, k)
            return ms._ideal_gemm(gpu, m, n, k, "fp8").seconds * np.exp(lr)
        return ref(gpu, m, n, k) * np.exp(ms._local_linear_curve(shapes, n, k)(m))


METHODS = (
    Method("former (IDEAL line, envelope; idw)", ideal_ref, "line", "idw"),
    Method("bf16 method (smooth class)", smooth_ref, "bf16", "plane-env"),
    Method("IDEAL ratio local fit; plane", ideal_ref, "fit", "plane-fit"),
    Method("smooth local fit; plane", smooth_ref, "fit", "plane-fit"),
    Method("+ M tile padding (no overhead)", padded_ref, "fit", "plane-fit"),
    Method("+ fixed overhead (no padding)", overhead_ref, "fit", "plane-fit"),
    Method("shipped: padding + overhead", shipped_ref, "fit", "plane-fit"),
)


def _weights(data):
    return {key: ms._unique_log(m, t) for key, (m, t) in data.items()}


def loo_m(gpu_id: str, meth: Method):
    """(m, signed error %) of every row at every interior grid M, predicted from its weight's other rows."""
    gpu = get_gpu(gpu_id)
    data = grid(gpu_id)
    out = []
    for key, (m, t) in data.items():
        ref = meth.ref(gpu, _weights({w: v for w, v in data.items() if w != key}))
        for mm in np.unique(m)[1:-1]:
            keep = m != mm
            p = meth.predict_own(gpu, ref, *key, m[keep], t[keep], np.array([mm]))[0]
            out += [(mm, (p / tt - 1) * 100) for tt in t[~keep]]
    return out


def loo_weight(gpu_id: str, meth: Method):
    """(m, signed error %) of every row of every weight, predicted from the other weights."""
    gpu = get_gpu(gpu_id)
    data = grid(gpu_id)
    out = []
    for key, (m, t) in data.items():
        others = _weights({w: v for w, v in data.items() if w != key})
        ref = meth.ref(gpu, others)
        shapes = meth.curves(gpu, ref, others, ideal_ref(gpu, others))
        p = meth.predict_weight(gpu, ref, shapes, *key, m)
        out += list(zip(m, (p / t - 1) * 100))
    return out


BUCKETS = (("all", lambda m: m > 0), ("odd x32 <1k", lambda m: (m % 64 == 32) & (m < 1024)),
           ("other <1k", lambda m: (m % 64 != 32) & (m < 1024)), ("1k-4k", lambda m: (m >= 1024) & (m < 4096)),
           (">=4k", lambda m: m >= 4096))


def row(res):
    m = np.array([r[0] for r in res])
    e = np.array([r[1] for r in res])
    cells = []
    for _, sel in BUCKETS:
        x = e[sel(m)]
        cells.append(f"{np.mean(np.abs(x)):5.2f} {np.percentile(np.abs(x), 90):5.2f} {np.mean(x):+5.2f}")
    return " | ".join(cells)


def main(argv):
    only = argv[argv.index("--only") + 1] if "--only" in argv else None
    head = " | ".join(f"{b:^17s}" for b, _ in BUCKETS)
    print(f"{'check':6s} {'gpu':8s} {'predictor':36s} {head}")
    print(f"{'':6s} {'':8s} {'':36s} " + " | ".join(["MAPE   p90  bias"] * len(BUCKETS)))
    for check, fn in (("M", loo_m), ("weight", loo_weight)):
        for gid in GPUS:
            for meth in METHODS:
                if only and only not in meth.name:
                    continue
                print(f"{check:6s} {gid:8s} {meth.name:36s} {row(fn(gid, meth))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
