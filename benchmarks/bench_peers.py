"""perfcast next to a peer on the same measured cases: Llama-3.1-8B decode steps on H100 (cuda-graph).

Peers run only where installed (pip install llm-analysis; it pins an old transformers, so use a
separate virtual environment). llm-analysis runs with its defaults (efficiency 1.0, kv cache on).
"Datasheet roofline" is perfcast's own physics with no measured data (prior efficiencies).

    python benchmarks/bench_peers.py
"""

import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from perfcast.profiles import Profile
from perfcast.step.costs import op_cost
from perfcast.step.predict import make_config, predict_many, step_ops
from perfcast.step.runtime import cuda_graph

ROOT = Path(__file__).resolve().parent / "data"
MODEL = "meta-llama/Llama-3.1-8B"


def cases(gpu_id="h100-sxm"):
    for f in sorted(ROOT.glob("*/step_single.jsonl")):
        for line in f.read_text().splitlines():
            d = json.loads(line)
            if (d.get("gpu_id") == gpu_id and d["model"] == MODEL and d["runtime"] == "cuda-graph"
                    and d.get("decode_ms") and not d.get("tag") and d["batch"] in (1, 8, 32, 128)):
                yield d


def llm_analysis_ms(batch, context):
    try:
        from llm_analysis.analysis import infer
    except ImportError:
        return None
    cfg = json.loads((Path(__file__).resolve().parents[1] / "src/perfcast/models/configs/meta-llama__Llama-3.1-8B.json")
                     .read_text())
    cfg.pop("rope_scaling", None)  # its transformers predates llama3 rope scaling; no cost effect
    with tempfile.TemporaryDirectory() as d:
        Path(d, "config.json").write_text(json.dumps(cfg))
        r = infer(model_name=d, gpu_name="h100-sxm-80gb", dtype_name="w16a16e16", batch_size_per_gpu=batch,
                  seq_len=context, num_tokens_to_generate=1, log_level="ERROR")
    return r["decode_latency"] * 1e3


def roofline_ms(cfg, b, c):
    prof = Profile.analytical(cfg.gpu)
    ops = step_ops(cfg, "decode", b, c, c)
    return float(cuda_graph(ops, [op_cost(o, cfg.gpu, prof) for o in ops], prof.host("cuda-graph"), prof.eff).seconds) * 1e3


def main():
    warnings.simplefilter("ignore")
    cfg = make_config(MODEL, "h100-sxm")
    rows = []
    print(f"{'batch':>5s} {'context':>7s} {'measured':>9s} {'perfcast':>14s} {'datasheet roofline':>20s} {'llm-analysis':>16s}")
    for d in cases():
        b, c, m = d["batch"], d["context"], d["decode_ms"]
        p = predict_many(cfg, b, c, c)[0].decode_ms
        r = roofline_ms(cfg, b, c)
        la = llm_analysis_ms(b, c)
        rows.append((p - m) / m * 100)
        las = f"{la:7.3f} {100 * (la - m) / m:+6.1f}%" if la else "not installed"
        print(f"{b:5d} {c:7d} {m:9.3f} {p:7.3f} {100 * (p - m) / m:+5.1f}% {r:12.3f} {100 * (r - m) / m:+6.1f}% {las:>16s}")
    print(f"perfcast MAPE on these {len(rows)} cases: {np.mean(np.abs(rows)):.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
