"""Measure NCCL collectives among the GPUs of one host (bf16), for perfcast's collective cost model.

    PYTHONPATH=src python3 -m perfcast.measure.collectives --out DIR [--gpus 2,4] [--max-bytes 2G]

Spawns one process per visible GPU (``torch.multiprocessing``); it also runs under
``torchrun --nproc-per-node N -m perfcast.measure.collectives --out DIR``. For every group size
``g`` in ``--gpus`` that fits, the first ``g`` ranks form a ``new_group`` and time ``all_reduce``,
``all_gather`` (``all_gather_into_tensor``), ``reduce_scatter`` (``reduce_scatter_tensor``) and
``all_to_all`` (``all_to_all_single``) for sizes 1 KiB .. 2 GiB (powers of two and 1.5x points
between). ``bytes`` is each rank's **input** buffer, as the contract says. Ranks 0 and 1 also time a
one-way ``send_recv`` (pipeline-parallel activations).

Timing: ``inner`` back-to-back ops (enough for ~1 ms) captured in one CUDA graph, replays timed with
CUDA events, per-op time = replay / inner; reps adapt to ~0.25 s per point (5..50); each rep's time
is the slowest rank's. Where capture fails, the same loop runs eagerly (``meta.json`` says which).
send_recv is always timed eagerly. Bus bandwidth follows nccl-tests: all_reduce ``S/t * 2(g-1)/g``,
all_gather ``S/t * (g-1)`` (output g*S), reduce_scatter and all_to_all ``S/t * (g-1)/g``,
send_recv ``S/t`` (S = input bytes per rank).

Writes DIR/collectives.csv (op,gpus,bytes,median_ms,min_ms,p90_ms,reps,busbw_gbps) and DIR/meta.json.
NVLink multicast (NVLS) is forced off before NCCL starts.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import subprocess
import sys
import time

from perfcast.measure.model_step import SAFE_ENV, _free_port, env_info, set_safe_env, summarize

OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
COLUMNS = ("op", "gpus", "bytes", "median_ms", "min_ms", "p90_ms", "reps", "busbw_gbps")


def sizes(lo: int = 1 << 10, hi: int = 2 << 30) -> list[int]:
    """Powers of two from ``lo`` to ``hi`` plus 1.5x points between every other pair."""
    out, s, k = set(), lo, 0
    while s <= hi:
        out.add(s)
        if k % 2 and s * 3 // 2 <= hi:
            out.add(s * 3 // 2)
        s, k = s * 2, k + 1
    return sorted(out)


def busbw_gbps(op: str, nbytes: int, g: int, ms: float) -> float:
    algbw = nbytes / (ms * 1e-3) / 1e9
    factor = {"all_reduce": 2 * (g - 1) / g, "all_gather": g - 1, "reduce_scatter": (g - 1) / g,
              "all_to_all": (g - 1) / g, "send_recv": 1.0}[op]
    return algbw * factor


def _buffers(op: str, nbytes: int, g: int, device):
    import torch

    n = nbytes // 2
    x = torch.empty(n, dtype=torch.bfloat16, device=device).normal_()
    out_n = {"all_reduce": 0, "all_gather": n * g, "reduce_scatter": n // g, "all_to_all": n}[op]
    return x, (torch.empty(out_n, dtype=torch.bfloat16, device=device) if out_n else None)


def _op_fn(op: str, x, y, group):
    import torch.distributed as dist

    return {
        "all_reduce": lambda: dist.all_reduce(x, group=group),
        "all_gather": lambda: dist.all_gather_into_tensor(y, x, group=group),
        "reduce_scatter": lambda: dist.reduce_scatter_tensor(y, x, group=group),
        "all_to_all": lambda: dist.all_to_all_single(y, x, group=group),
    }[op]


def _max_over(times: list[float], group, device) -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(times, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return t.tolist()


def _time_loop(run_inner, group, device, t_one_ms: float, inner: int) -> list[float]:
    """Times of ``run_inner()`` (which does ``inner`` ops) per op, slowest rank, adaptive reps."""
    import torch

    t_rep = _max_over([t_one_ms * inner], group, device)[0]
    reps = int(min(50, max(5, 250.0 / max(t_rep, 1e-3))))
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for a, b in ev:
        a.record()
        run_inner()
        b.record()
    torch.cuda.synchronize()
    return _max_over([a.elapsed_time(b) / inner for a, b in ev], group, device)


def _estimate_ms(fn, group, device, n: int = 3) -> float:
    import torch
    import torch.distributed as dist

    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    dist.barrier(group=group)
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n):
        fn()
    b.record()
    torch.cuda.synchronize()
    return _max_over([a.elapsed_time(b) / n], group, device)[0]


def measure_op(op: str, nbytes: int, g: int, group, device, use_graph: bool) -> tuple[list[float], bool]:
    import torch

    x, y = _buffers(op, nbytes, g, device)
    fn = _op_fn(op, x, y, group)
    t1 = _estimate_ms(fn, group, device)
    inner = int(min(100, max(1, 1.0 / max(t1, 1e-4))))
    graph = None
    if use_graph:
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                for _ in range(inner):
                    fn()
            graph.replay()
            torch.cuda.synchronize()
        except Exception as e:
            print(f"graph capture failed for {op} ({type(e).__name__}: {e}); timing eagerly", flush=True)
            graph = None
            torch.cuda.synchronize()
    if graph is not None:
        times = _time_loop(graph.replay, group, device, t1, inner)
    else:
        def eager():
            for _ in range(inner):
                fn()

        times = _time_loop(eager, group, device, t1, inner)
    used_graph = graph is not None
    del graph, x, y
    return times, used_graph


def measure_send_recv(nbytes: int, rank: int, device, group) -> list[float]:
    """One-way rank 0 -> rank 1 transfer; ``group`` holds ranks 0 and 1."""
    import torch.distributed as dist

    x, _ = _buffers("all_reduce", nbytes, 2, device)

    def fn():
        if rank == 0:
            dist.send(x, 1)
        else:
            dist.recv(x, 0)

    t1 = _estimate_ms(fn, group, device)
    inner = int(min(50, max(1, 1.0 / max(t1, 1e-4))))

    def eager():
        for _ in range(inner):
            fn()

    return _time_loop(eager, group, device, t1, inner)


def run(args, rank: int, world: int) -> None:
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device())
    gpus = [g for g in args.gpus if g <= world]
    groups = {g: dist.new_group(list(range(g))) for g in gpus}  # every rank joins every new_group call
    pair = groups.get(2) or (dist.new_group([0, 1]) if world >= 2 else None)
    rows, fallbacks = [], []
    t0 = time.perf_counter()
    for g in gpus:
        if rank < g:
            for op in OPS:
                for s in sizes(args.min_bytes, args.max_bytes):
                    times, used_graph = measure_op(op, s, g, groups[g], device, not args.eager)
                    if not args.eager and not used_graph:
                        fallbacks.append(f"{op}/{g}/{s}")
                    st = summarize(times)
                    rows.append((op, g, s, st["ms"], st["min_ms"], st["p90_ms"], st["reps"],
                                 busbw_gbps(op, s, g, st["ms"])))
                    if rank == 0 and s >= 1 << 20 and (s & (s - 1)) == 0 and s.bit_length() % 3 == 0:
                        print(f"[{time.perf_counter() - t0:6.1f}s] {op} g={g} {s} B: {st['ms']:.4f} ms "
                              f"busbw {rows[-1][-1]:.1f} GB/s", flush=True)
                    torch.cuda.empty_cache()
        dist.barrier()
    if pair is not None and rank < 2:
        for s in sizes(args.min_bytes, args.max_bytes):
            st = summarize(measure_send_recv(s, rank, device, pair))
            rows.append(("send_recv", 2, s, st["ms"], st["min_ms"], st["p90_ms"], st["reps"],
                         busbw_gbps("send_recv", s, 2, st["ms"])))
        torch.cuda.empty_cache()
    dist.barrier()
    if rank == 0:
        _write(args.out, rows, world, not args.eager, fallbacks, time.perf_counter() - t0)


def _write(out_dir: str, rows, world: int, graph: bool, fallbacks: list, elapsed_s: float) -> None:
    import torch

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "collectives.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([r[0], r[1], r[2], f"{r[3]:.6g}", f"{r[4]:.6g}", f"{r[5]:.6g}", r[6], f"{r[7]:.4g}"])
    try:
        topo = subprocess.run(["nvidia-smi", "topo", "-m"], check=False, capture_output=True, text=True,
                              timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        topo = f"unavailable: {e}"
    from perfcast.measure import env

    meta = {
        **env.collect(torch, "cuda"),
        **env_info("cuda"),
        "gpu_count": world,
        "gpu_names": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "nccl": ".".join(map(str, torch.cuda.nccl.version())),
        "topology": topo,
        "dtype": "bf16",
        "bytes": "each rank's input buffer",
        "timing": ("CUDA graph of back-to-back ops, CUDA events, per-op = replay / inner"
                   if graph else "eager back-to-back ops, CUDA events") + "; slowest rank per rep; send_recv eager",
        "graph_fallbacks_rank0": fallbacks,
        "busbw": "nccl-tests convention; see perfcast.measure.collectives",
        "env": {k: v for k, v in sorted(os.environ.items())
                if k.startswith(("NCCL_", "TORCH_", "NVSHMEM_", "CUDA_", "PYTORCH_")) or k in SAFE_ENV},
        "elapsed_s": round(elapsed_s, 1),
        "written": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"wrote {len(rows)} rows to {out_dir}/collectives.csv", flush=True)


def _dist_main(args) -> None:
    import datetime

    import torch
    import torch.distributed as dist

    set_safe_env()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local), timeout=datetime.timedelta(minutes=5))
    try:
        run(args, rank, world)
    finally:
        dist.destroy_process_group()


def _worker(local_rank: int, args, world: int, port: int) -> None:
    os.environ.update({"RANK": str(local_rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    _dist_main(args)


def _parse_bytes(s: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    s = s.strip().upper().rstrip("IB").rstrip("B")
    return int(float(s[:-1]) * mult[s[-1]]) if s and s[-1] in mult else int(s)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m perfcast.measure.collectives", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder (collectives.csv, meta.json)")
    p.add_argument("--gpus", default="2,4", help="group sizes, comma separated (those above the GPU count skipped)")
    p.add_argument("--min-bytes", type=_parse_bytes, default=1 << 10)
    p.add_argument("--max-bytes", type=_parse_bytes, default=2 << 30)
    p.add_argument("--eager", action="store_true", help="time eagerly instead of through CUDA graphs")
    args = p.parse_args(argv)
    args.gpus = [int(g) for g in args.gpus.split(",") if g.strip()]
    set_safe_env()
    # send/recv run on the default group, alone: its serialization warning says nothing here
    os.environ.setdefault("TORCH_NCCL_SHOW_EAGER_INIT_P2P_SERIALIZATION_WARNING", "false")
    if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _dist_main(args)
        return 0
    import torch

    n = torch.cuda.device_count()
    if n < 2:
        print("collectives need at least 2 GPUs", file=sys.stderr)
        return 2
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(args, n, _free_port()), nprocs=n, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
