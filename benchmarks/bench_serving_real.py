"""The serving simulator against real engines: measured runs (perfcast.measure.serve_run on a GPU)
replayed through `perfcast simulate` on the identical trace, with the engine's settings.

    python benchmarks/bench_serving_real.py                       # every benchmarks/data/serve_*/
    python benchmarks/bench_serving_real.py --data DIR_OR_TGZ --json out.json

Data: what ``benchmarks/device/run_serve.sh`` writes under ``$OUT/<gpu_id>/`` (``serve.tgz`` is
unpacked to a temporary folder). Per run the simulator gets the run's own requests (arrival at the
engine, prompt and output tokens) and, per engine:

- ``hf-cb`` (transformers continuous batching): scheduler ``hf-cb``, runtime ``eager``,
  ``max_num_seqs`` = ``max_requests_per_batch``, ``max_batched_tokens`` = ``max_batch_tokens``, the
  engine's block size, KV blocks and safety margin; and a calibration fitted on the engine's
  warm-up burst only (never on the runs it is compared with):
  ``iteration_overhead`` (least squares of the host time outside the forward, per iteration, on
  1, sequences, tokens and cached tokens read) and ``eager_host_scale`` (mean measured / predicted
  forward time of its host-bound decode iterations, stalls over 1.25x the median left out; the
  overhead is fitted on the iterations outside the stalls). Both are printed. The table also shows the
  simulation without them ("perfcast alone").
- ``static`` (the plain decoder, CUDA-graph decode): scheduler ``static``, runtime ``cuda-graph``,
  ``max_num_seqs`` = the batch size, a KV cache that never binds; no calibration.

Targets (issue 7): mean TPOT within 5%, p90 TTFT within 15%.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from perfcast.serving import parse_config, simulate  # noqa: E402
from perfcast.serving.steptime import chunk_pairs, iteration_model  # noqa: E402
from perfcast.step.predict import make_config  # noqa: E402

METRICS = [("TPOT mean", "tpot_ms", "mean"), ("TTFT p50", "ttft_ms", "p50"), ("TTFT p90", "ttft_ms", "p90"),
           ("ITL mean", "itl_ms", "mean"), ("E2E mean", "e2e_ms", "mean"), ("E2E p90", "e2e_ms", "p90"),
           ("tokens/s", "output_tokens_per_s", None)]
TARGETS = {"TPOT mean": 5.0, "TTFT p90": 15.0}
STALL = 1.25  # an iteration this much slower than the median (by measured / predicted forward) is a stall
WARM_SKIP = 3  # the burst's first iterations meet new shapes (cuBLAS heuristics, allocator growth): not fitted


# --------------------------------------------------------------------------- data
def find_data(paths: list[str]) -> list[Path]:
    """Folders holding serve_run output (an index.json or */summary.json); tarballs unpacked."""
    cands = [Path(p) for p in paths] if paths else sorted((ROOT / "benchmarks" / "data").glob("serve_*"))
    out: list[Path] = []
    for c in cands:
        if c.is_file() and c.name.endswith((".tgz", ".tar.gz")):
            out.append(_untar(c))
        elif c.is_dir():
            tars = sorted(c.rglob("*.tgz"))
            if not list(c.rglob("summary.json")) and tars:
                out += [_untar(t) for t in tars]
            else:
                out.append(c)
    return [d for d in out if list(d.rglob("summary.json"))]


def _untar(path: Path) -> Path:
    d = Path(tempfile.mkdtemp(prefix="serve_"))
    with tarfile.open(path) as t:
        t.extractall(d, filter="data")
    return d


def load_runs(root: Path) -> list[dict]:
    runs = []
    for s in sorted(root.rglob("summary.json")):
        summary = json.loads(s.read_text())
        rows = [json.loads(x) for x in (s.parent / "requests.jsonl").read_text().splitlines() if x.strip()]
        steps_file = s.parent / "steps.jsonl"
        steps = [json.loads(x) for x in steps_file.read_text().splitlines() if x.strip()] if steps_file.exists() else []
        runs.append({"dir": s.parent, "summary": summary, "rows": rows, "steps": steps})
    return runs


# --------------------------------------------------------------------------- hf-cb calibration
def kv_read(st: dict) -> float:
    """Cached tokens an iteration gathers (transformers reads every sequence's keys once any has a cache)."""
    return float(st["past_tokens"] + st["q_tokens"]) if st["past_tokens"] > 0 else 0.0


def host_outside(steps: list[dict]) -> np.ndarray:
    """Per iteration, host seconds outside the forward: preparing the batch, handing out the tokens,
    and the loop's gap to the next iteration when it follows at once."""
    y = []
    for i, st in enumerate(steps):
        v = (st["t_prepared"] - st["t_start"]) + (st["t_end"] - st["t_synced"])
        if i + 1 < len(steps):
            gap = steps[i + 1]["t_start"] - st["t_end"]
            if 0 <= gap < 2e-3 and (st["waiting"] or st["active"]):
                v += gap
        y.append(v)
    return np.array(y)


def fit_overhead(steps: list[dict]) -> tuple[dict, dict]:
    """Non-negative least squares of the host time outside the forward on (1, sequences, tokens,
    cached tokens read): the ``iteration_overhead`` of the hf-cb config."""
    X = np.array([[1.0, st["requests"], st["q_tokens"], kv_read(st)] for st in steps])
    y = host_outside(steps)
    keep = list(range(4))
    coef = np.zeros(4)
    while keep:
        c, *_ = np.linalg.lstsq(X[:, keep], y, rcond=None)
        if np.all(c >= 0):
            coef[:] = 0
            coef[keep] = c
            break
        keep.pop(int(np.argmin(c)))
    pred = X @ coef
    ss = float(((y - y.mean()) ** 2).sum())
    stats = {"iterations": len(y), "r2": 1 - float(((y - pred) ** 2).sum()) / ss if ss > 0 else None,
             "mean_ms": float(y.mean() * 1e3), "resid_ms_p90": float(np.percentile(np.abs(y - pred), 90) * 1e3),
             "corr_resid_waiting": _corr(y - pred, np.array([st["waiting"] for st in steps], dtype=float))}
    over = {"base_ms": coef[0] * 1e3, "per_seq_us": coef[1] * 1e6, "per_token_us": coef[2] * 1e6,
            "per_kv_token_us": coef[3] * 1e6}
    return over, stats


def _corr(a: np.ndarray, b: np.ndarray):
    if a.size < 3 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def predict_forward(m, st: dict) -> float:
    """The iteration model's forward seconds for one recorded iteration (no host overhead)."""
    chunks = st["chunks"]
    q_chunks = sum(q for _, q in chunks)
    pairs = sum(chunk_pairs(q, past + q) for past, q in chunks)
    return m.seconds(st["q_tokens"], st["requests"], st["decodes"], float(st["decode_kv"]), len(chunks), q_chunks,
                     pairs, kv_read=kv_read(st))


def measured_forward(st: dict) -> float:
    return st["t_synced"] - st["t_prepared"]


def fit_host_scale(step_cfg, steps: list[dict], max_tokens: int, max_seqs: int) -> tuple[float, dict]:
    """The eager host factor that makes the predicted forward of host-bound decode iterations (their
    GPU time, as the cuda-graph model gives it, under 3/4 of the measured forward) match on average.

    Mean TPOT is a mean of iteration times, so the factor is a ratio of means (the host's jitter, a
    few % of its iterations a few ms slower, is part of what every token waits for), not a median.
    Stalls, iterations over ``STALL`` times the median ratio, are left out: they are a different
    state of the host (the burst's first encounters, a phase of a slower host: one warm-up spends
    2.5 s at 1.8x), not its jitter, and would set the factor of the whole run."""
    graph = iteration_model(make_config(step_cfg["model"], step_cfg["gpu"], runtime="cuda-graph"), max_tokens,
                            max_seqs)
    sel = [st for st in steps if not st["chunks"] and st["decodes"]
           and predict_forward(graph, st) < 0.75 * measured_forward(st)]
    if len(sel) < 5:
        return 1.0, {"iterations": len(sel), "note": "too few host-bound decode iterations; scale 1"}
    cfg = make_config(step_cfg["model"], step_cfg["gpu"], runtime="eager")
    meas = np.array([measured_forward(st) for st in sel])
    s = 1.0
    for _ in range(8):
        m = iteration_model(cfg, max_tokens, max_seqs, s)
        r = meas / np.array([predict_forward(m, st) for st in sel])
        ratio = float(np.mean(r[~stalls(r)]))
        s *= ratio
        if abs(ratio - 1) < 1e-3:
            break
    m = iteration_model(cfg, max_tokens, max_seqs, s)
    err = meas / np.array([predict_forward(m, st) for st in sel]) - 1
    return s, {"iterations": len(sel), "stalls": int(stalls(err + 1).sum()),
               "resid_pct_p90": float(np.percentile(np.abs(err), 90) * 100)}


def stalls(ratio: np.ndarray) -> np.ndarray:
    """Iterations whose measured / predicted time is over ``STALL`` times the median."""
    return ratio > STALL * np.median(ratio)


def warm_steps(step_cfg, steps: list[dict], max_tokens: int, max_seqs: int, scale: float) -> list[dict]:
    """The warm-up's iterations outside its stalls (forward measured / predicted at the fitted host
    scale over ``STALL`` times the median): the host state the overhead fit should see."""
    m = iteration_model(make_config(step_cfg["model"], step_cfg["gpu"], runtime="eager"), max_tokens, max_seqs,
                        scale)
    r = np.array([measured_forward(st) / predict_forward(m, st) for st in steps])
    return [st for st, bad in zip(steps, stalls(r)) if not bad]


def forward_check(step_cfg, steps: list[dict], max_tokens: int, max_seqs: int, scale: float) -> dict:
    """Median measured / predicted forward, per kind of iteration, on a run's own iterations."""
    m = iteration_model(make_config(step_cfg["model"], step_cfg["gpu"], runtime="eager"), max_tokens, max_seqs,
                        scale)
    out = {}
    for kind, sel in (("decode", [s for s in steps if not s["chunks"]]), ("mixed", [s for s in steps if s["chunks"]])):
        if sel:
            r = np.array([measured_forward(s) / predict_forward(m, s) for s in sel])
            out[kind] = {"iterations": len(sel), "median_ratio": float(np.median(r))}
    return out


# --------------------------------------------------------------------------- simulation
def run_config(run: dict, calib: dict | None, tmp: Path, shift: bool = True):
    """The simulator's config for a measured run: its own requests at the times the engine got them
    (``shift``: the first at 0; else at the run's own clock, that of its ``steps.jsonl``)."""
    s, rows = run["summary"], run["rows"]
    st = s["settings"]
    gpu = s["env"].get("gpu_id")
    use = [r for r in rows if r.get("submit_s") is not None and np.isfinite(r["submit_s"])]
    trace = tmp / f"{s['engine']}_{s['label']}.jsonl"
    t0 = min(r["submit_s"] for r in use) if shift else 0.0
    trace.write_text("".join(json.dumps({"arrival_s": r["submit_s"] - t0, "input_tokens": r["input_tokens"],
                                         "output_tokens": r["output_tokens"]}) + "\n" for r in use))
    if s["engine"] == "hf-cb":
        cfg = {"model": s["model"], "gpu": gpu, "runtime": "eager", "scheduler": "hf-cb",
               "max_num_seqs": st["max_requests_per_batch"], "max_batched_tokens": st["max_batch_tokens"],
               "block_size": st["block_size"], "kv_blocks": st["num_blocks"], "safety_margin": st["safety_margin"]}
        if calib:
            cfg["iteration_overhead"] = calib["iteration_overhead"]
            cfg["eager_host_scale"] = calib["eager_host_scale"]
    else:
        # the server's cache holds max_batch x (longest prompt + longest output): it never binds
        longest = max(r["input_tokens"] for r in use) + max(r["output_tokens"] for r in use)
        cfg = {"model": s["model"], "gpu": gpu, "runtime": "cuda-graph", "scheduler": "static",
               "max_num_seqs": st["max_batch"], "block_size": 16,
               "kv_blocks": st["max_batch"] * (-(-longest // 16) + 1)}
    return parse_config({**cfg, "workload": {"trace": str(trace)}})


def simulate_run(run: dict, calib: dict | None, tmp: Path) -> dict:
    return simulate(run_config(run, calib, tmp)).summary


# --------------------------------------------------------------------------- scheduler replay
def replay(engine, requests: list, steps: list[dict]) -> list[dict]:
    """Drive one simulated engine with given iteration boundaries instead of its step model: before
    iteration ``k`` every request that arrived by ``t_start`` joins, the engine's policy picks the
    batch, and the iteration ends at ``t_end``. Returns, per iteration, what the policy put in the
    batch (the fields of ``steps.jsonl``) and the step model's seconds for that batch; the requests
    keep their token times. With the measured boundaries of a run, equal batches mean the policy
    is the engine's, and the first-token times are the policy's alone."""
    reqs = sorted(requests, key=lambda r: r.arrival)
    k, out = 0, []
    for st in steps:
        while k < len(reqs) and reqs[k].arrival <= st["t_start"]:
            engine.add(reqs[k], reqs[k].arrival)
            k += 1
        dur = engine.schedule(st["t_start"])
        chunks = [[r.computed, q] for r, q in engine.chunks]
        n_dec = engine.n_dec
        out.append({"requests": n_dec + len(chunks), "q_tokens": n_dec + sum(q for _, q in chunks),
                    "decodes": n_dec, "chunks": chunks, "seconds": dur})
        if dur is None:  # nothing to run: the policy and the engine disagree
            break
        engine.finish(st["t_end"])
    return out


POLICY_FIELDS = ("requests", "q_tokens", "decodes", "chunks")
WINDOW_S = 2.0  # host-speed windows of the replay


def replay_policy(run: dict, calib: dict | None, tmp: Path) -> dict:
    """The simulator's ``hf-cb`` scheduler on a measured run's own iteration times: how many
    iterations it fills exactly as the engine did, its TTFT (only the policy differs from the
    measurement), and the step model's time for the engine's own batches against the measured cycle
    (iteration start to the next one's start), overall and per ``WINDOW_S`` window: the host's speed
    through the run, which the warm-up calibration holds constant."""
    from perfcast.serving.simulator import Simulator

    steps = run["steps"]
    sim = Simulator(run_config(run, calib, tmp, shift=False))
    got = replay(sim.engines[0], sim.requests, steps)
    same = [all(g[f] == st[f] for f in POLICY_FIELDS) for g, st in zip(got, steps)]
    diff = next((i for i, ok in enumerate(same) if not ok), None)
    if len(got) < len(steps) and diff is None:
        diff = len(got) - 1
    ttft = np.array([(r.first_t - r.arrival) * 1e3 for r in sim.requests if r.first_t >= 0])
    t = np.array([st["t_start"] for st in steps])
    pred = np.array([g["seconds"] or 0.0 for g in got[:-1]])
    meas = np.diff(t)[:len(pred)]
    win = []
    for a in np.arange(t[0], t[-1], WINDOW_S):
        k = (t[:len(pred)] >= a) & (t[:len(pred)] < a + WINDOW_S)
        if k.sum() >= 20:
            win.append(float(pred[k].sum() / meas[k].sum()))
    return {"iterations": len(steps), "identical": int(sum(same)), "first_difference": diff,
            "first_tokens": int(ttft.size), "requests": len(sim.requests),
            "ttft_ms": {"p50": float(np.percentile(ttft, 50)) if ttft.size else None,
                        "p90": float(np.percentile(ttft, 90)) if ttft.size else None},
            "cycle_predicted_over_measured": float(pred.sum() / meas.sum()) if meas.size else None,
            "window_ratio_min": min(win) if win else None, "window_ratio_max": max(win) if win else None}


def measured_load(rows: list[dict]) -> bool:
    """The simulator's past-capacity test (metrics.load_check) on the measured requests."""
    from perfcast.serving.metrics import load_check

    done = [r for r in rows if r.get("last_token_s") is not None and r.get("error") is None]
    if len(done) < 10:
        return False
    arr = np.array([r["submit_s"] for r in done])
    fin = np.array([r["last_token_s"] for r in done])
    sched = np.array([r["sched_s"] if r.get("sched_s") is not None else r["submit_s"] for r in done], dtype=float)
    sched = np.where(np.isfinite(sched), sched, arr)
    return bool(load_check(arr, fin, sched)["overloaded"])


def _known_gpu(summary: dict) -> bool:
    from perfcast.hardware import get_gpu

    try:
        get_gpu(summary["env"].get("gpu_id") or "")
        return True
    except (KeyError, ValueError):
        return False


def pick(summary: dict, key: str, stat: str | None):
    v = summary.get(key)
    return v.get(stat) if isinstance(v, dict) else v


def compare(measured: dict, simulated: dict) -> list[dict]:
    out = []
    for name, key, stat in METRICS:
        m, p = pick(measured, key, stat), pick(simulated, key, stat)
        err = None if m in (None, 0) or p is None else 100.0 * (p - m) / m
        out.append({"metric": name, "measured": m, "simulated": p, "error_pct": err})
    return out


def _fmt(v, nd=1):
    return "-" if v is None else f"{v:.{nd}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", action="append", default=None, help="serve_run output folder or .tgz (repeat)")
    ap.add_argument("--json", default=None, help="write every comparison here")
    a = ap.parse_args()
    roots = find_data(a.data or [])
    if not roots:
        print("no measured serving data (benchmarks/data/serve_<gpu>/ from benchmarks/device/run_serve.sh); "
              "nothing to compare")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    report = []
    for root in roots:
        runs = load_runs(root)
        calib: dict[tuple, dict] = {}
        for w in (r for r in runs if r["summary"].get("label") == "warmup" and r["summary"]["engine"] == "hf-cb"):
            s = w["summary"]
            if not _known_gpu(s):
                continue
            st = s["settings"]
            key = (s["model"], s["env"].get("gpu_id"))
            warm = w["steps"][WARM_SKIP:]
            scale, sstats = fit_host_scale({"model": s["model"], "gpu": key[1]}, warm, st["max_batch_tokens"],
                                           st["max_requests_per_batch"])
            over, ostats = fit_overhead(warm_steps({"model": s["model"], "gpu": key[1]}, warm,
                                                   st["max_batch_tokens"], st["max_requests_per_batch"], scale))
            calib[key] = {"iteration_overhead": over, "eager_host_scale": scale, "overhead_fit": ostats,
                          "host_scale_fit": sstats}
            print(f"\n== {root.name}: {s['model']} on {s['env'].get('gpu_name')} — hf-cb calibration from its "
                  f"warm-up burst ({ostats['iterations']} iterations)")
            print(f"   iteration_overhead: base {over['base_ms']:.3f} ms + {over['per_seq_us']:.1f} us/sequence + "
                  f"{over['per_token_us']:.3f} us/token + {over['per_kv_token_us']:.4f} us/cached token read "
                  f"(R2 {_fmt(ostats['r2'], 3)}, p90 residual {ostats['resid_ms_p90']:.2f} ms, "
                  f"residual~waiting corr {_fmt(ostats['corr_resid_waiting'], 2)})")
            print(f"   eager_host_scale: {scale:.3f} (on {sstats['iterations']} host-bound decode iterations, "
                  f"{sstats.get('stalls', 0)} stalls left out)")
        for r in runs:
            s = r["summary"]
            if s.get("label") in ("warmup", None) or not s.get("completed"):
                continue
            key = (s["model"], s["env"].get("gpu_id"))
            if not _known_gpu(s):
                print(f"\n-- {s['model']} {s['engine']} {s['label']}: GPU {s['env'].get('gpu_name')!r} "
                      f"(id {key[1]!r}) is not in perfcast's catalog; not simulated")
                continue
            cal = calib.get(key) if s["engine"] == "hf-cb" else None
            sims = {"perfcast alone": simulate_run(r, None, tmp)}
            if cal:
                sims["perfcast + engine calibration"] = simulate_run(r, cal, tmp)
            best = sims.get("perfcast + engine calibration", sims["perfcast alone"])
            print(f"\n-- {s['model']} {s['engine']} {s['label']} ({s['requests']} requests, {s['completed']} completed,"
                  f" rate {s.get('rate_per_s')}/s, {s['env'].get('gpu_name')})")
            if s.get("incomplete"):
                print(f"   {s['incomplete']} requests did not finish: the measured figures leave them out")
            if s["engine"] == "hf-cb" and s["settings"].get("attn_implementation") != "paged|perfcast_varlen":
                print(f"   attention {s['settings'].get('attn_implementation')}: a dense masked attention over every "
                      "query and key of the iteration, which the simulator does not model; indicative only")
            head = f"   {'metric':<10} {'measured':>10}"
            for name in sims:
                head += f" | {name:>30} {'err':>7}"
            print(head)
            rows = {name: compare(s, sim) for name, sim in sims.items()}
            for i, (label, _, _) in enumerate(METRICS):
                line = f"   {label:<10} {_fmt(rows['perfcast alone'][i]['measured'], 2):>10}"
                for name in sims:
                    c = rows[name][i]
                    line += f" | {_fmt(c['simulated'], 2):>30} {_fmt(c['error_pct'], 1) + '%':>7}"
                tgt = TARGETS.get(label)
                final = rows[list(sims)[-1]][i]["error_pct"]
                if tgt is not None and final is not None:
                    line += f"   target {tgt:g}%: {'met' if abs(final) <= tgt else 'NOT met'}"
                print(line)
            meas_over = measured_load(r["rows"])
            if best.get("overloaded") or meas_over:
                print(f"   past capacity: measured {meas_over}, simulated {bool(best.get('overloaded'))} "
                      "(no steady state: the percentiles depend on the run's length)")
            entry = {"data": str(root), "model": s["model"], "engine": s["engine"], "label": s["label"],
                     "rate_per_s": s.get("rate_per_s"), "gpu": s["env"].get("gpu_id"), "comparisons": rows,
                     "measured_overloaded": meas_over, "simulated_overloaded": best.get("overloaded")}
            if s["engine"] == "hf-cb" and r["steps"]:
                st = s["settings"]
                fc = forward_check({"model": s["model"], "gpu": key[1]}, r["steps"], st["max_batch_tokens"],
                                   st["max_requests_per_batch"], cal["eager_host_scale"] if cal else 1.0)
                over = cal["iteration_overhead"] if cal else None
                y = host_outside(r["steps"])
                if over:
                    pred = np.array([over["base_ms"] * 1e-3 + (over["per_seq_us"] * x["requests"] + over["per_token_us"]
                                     * x["q_tokens"] + over["per_kv_token_us"] * kv_read(x)) * 1e-6
                                     for x in r["steps"]])
                    fc["host_outside_forward"] = {"measured_mean_ms": float(y.mean() * 1e3),
                                                  "fitted_mean_ms": float(pred.mean() * 1e3)}
                entry["iterations"] = fc
                print("   iterations: " + ", ".join(f"{k} forward measured/predicted {v['median_ratio']:.3f} "
                                                   f"({v['iterations']})" for k, v in fc.items() if "median_ratio" in v)
                      + (f"; host outside the forward {fc['host_outside_forward']['measured_mean_ms']:.2f} ms "
                         f"measured vs {fc['host_outside_forward']['fitted_mean_ms']:.2f} fitted"
                         if "host_outside_forward" in fc else ""))
                rp = replay_policy(r, cal, tmp)
                entry["scheduler_replay"] = rp
                mt = s["ttft_ms"]
                print(f"   scheduler replay on the measured iteration times: {rp['identical']}/{rp['iterations']} "
                      f"iterations as the engine filled them"
                      + ("" if rp["first_difference"] is None else f" (first difference: iteration {rp['first_difference']})")
                      + f"; TTFT p50/p90 {_fmt(rp['ttft_ms']['p50'])}/{_fmt(rp['ttft_ms']['p90'])} ms "
                      f"(measured {_fmt(mt['p50'])}/{_fmt(mt['p90'])})")
                if rp["cycle_predicted_over_measured"] is not None:
                    print(f"   host speed: predicted/measured time of the engine's own iterations "
                          f"{rp['cycle_predicted_over_measured']:.3f} over the run"
                          + ("" if rp["window_ratio_min"] is None else
                             f", {rp['window_ratio_min']:.2f}-{rp['window_ratio_max']:.2f} over its {WINDOW_S:g} s "
                             "windows"))
            if s["engine"] == "static" and s.get("static_kv_overshoot_mean") is not None:
                print(f"   static decode attended {s['static_kv_overshoot_mean']:.0f} extra keys on average "
                      f"(KV rounded up to {s['settings']['kv_bucket']} for the graphs)")
            report.append(entry)
        for key, c in calib.items():
            report.append({"data": str(root), "model": key[0], "gpu": key[1], "calibration": c})
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
