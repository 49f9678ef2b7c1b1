"""Ship the measured step accuracy with the package, so every prediction can say how far off such
predictions were: src/perfcast/profiles/data/accuracy.json from benchmarks/results/e2e*.json.

    python benchmarks/bench_e2e.py --json benchmarks/results/e2e.json
    python benchmarks/bench_e2e.py --profile none --json benchmarks/results/e2e_profile_none.json
    python benchmarks/bench_pp.py --json benchmarks/results/pp.json
    python benchmarks/accuracy_table.py
"""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent
OUT = ROOT.parent / "src" / "perfcast" / "profiles" / "data" / "accuracy.json"


def key_of(group: str) -> str:
    """'tp4 decode (cuda-graph)' -> 'decode:cuda-graph:tp>1'; 'prefill (eager)' -> 'prefill:eager:tp1';
    'fp8 decode (cuda-graph)' (FP8 linears) -> 'decode:cuda-graph:tp1:fp8'."""
    m = re.match(r"(?:(fp8) )?(?:tp(\d+) )?(prefill|decode) \(([\w-]+)\)", group)
    dt, tp, phase, runtime = m.groups()
    return f"{phase}:{runtime}:{'tp>1' if tp else 'tp1'}" + (f":{dt}" if dt else "")


def _pool(items) -> dict:
    """(kind, summary) pairs -> per kind: the case-weighted MAPE and the worse p90 over the GPUs/families."""
    out: dict[str, dict] = {}
    for k, s in items:
        cur = out.setdefault(k, {"n": 0, "mape": 0.0, "p90": 0.0})
        cur["mape"] = (cur["mape"] * cur["n"] + s["mape"] * s["n"]) / (cur["n"] + s["n"])
        cur["p90"] = max(cur["p90"], s["p90"])
        cur["n"] += s["n"]
    return {k: {"n": v["n"], "mape_pct": round(v["mape"], 2), "p90_pct": round(v["p90"], 2)} for k, v in out.items()}


def table(path: Path) -> dict:
    return _pool((key_of(name.split(":", 1)[1]), s) for name, s in json.loads(path.read_text())["summary"].items())


def pp_table(path: Path) -> dict:
    """Pipeline-parallel kinds from bench_pp.py: '<gpu>:decode:pp2 cuda-graph' -> 'decode:cuda-graph:pp>1',
    and TP inside the stages: '<gpu>:decode:tp2xpp2 cuda-graph' -> 'decode:cuda-graph:tp>1,pp>1'."""
    if not path.is_file():
        return {}
    pairs = []
    for name, s in json.loads(path.read_text())["summary"].items():
        m = re.match(r"[\w-]+:(prefill|decode):(tp\d+x)?pp\d+ ([\w-]+)$", name)
        if m:
            pairs.append((f"{m.group(1)}:{m.group(3)}:{'tp>1,' if m.group(2) else ''}pp>1", s))
    return _pool(pairs)


def main():
    own = table(ROOT / "results" / "e2e.json")
    own.update(pp_table(ROOT / "results" / "pp.json"))
    data = {"source": "benchmarks/bench_e2e.py and bench_pp.py over benchmarks/data (H100 and H200 runs)",
            "own": own,
            "transfer": table(ROOT / "results" / "e2e_profile_none.json")}
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
