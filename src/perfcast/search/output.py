"""Search results as CSV, JSON, a table and a Pareto plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path

COLUMNS = ("gpu", "tp", "pp", "mode", "max_num_seqs", "max_batched_tokens", "units", "gpus",
           "cost_per_hour_usd", "ttft_p90_ms", "tpot_p90_ms", "tokens_per_s_per_gpu", "tokens_per_s_per_user",
           "source")


def write_csv(result, path: str | Path) -> None:
    rows = [o.row() for o in result.results]
    fields = list(rows[0]) if rows else list(COLUMNS)
    with Path(path).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def write_json(result, path: str | Path) -> None:
    Path(path).write_text(json.dumps(result.to_dict(), indent=1))


HEADERS = ("gpu", "tp", "pp", "mode", "seqs", "tokens", "units", "gpus", "$/hour", "TTFT p90", "TPOT p90",
           "tok/s/GPU", "tok/s/user", "source")


def table_rows(result, limit: int = 20) -> list[list]:
    return [[o.row()[k] for k in COLUMNS] for o in result.results[:limit]]


def plot(result, path: str | Path) -> str:
    """Scatter of every result with its Pareto frontier; returns a message for the user."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plotting needs matplotlib: pip install 'perfcast[plot]' (no plot written)"
    fig, ax = plt.subplots(figsize=(7, 5))
    for gpu in sorted({o.candidate.gpu for o in result.results}):
        pts = [o for o in result.results if o.candidate.gpu == gpu]
        ax.scatter([o.tokens_per_s_per_user for o in pts], [o.tokens_per_s_per_gpu for o in pts], s=14,
                   alpha=0.6, label=gpu)
    f = sorted(result.frontier, key=lambda o: o.tokens_per_s_per_user)
    ax.plot([o.tokens_per_s_per_user for o in f], [o.tokens_per_s_per_gpu for o in f], "k-", lw=1,
            label="Pareto frontier")
    r = result.request
    ax.set_xlabel("tokens/s per user (1 / mean TPOT)")
    ax.set_ylabel("output tokens/s per GPU at the rate")
    ax.set_title(f"{r.model} at {r.rate_per_s:g} req/s, p90 TTFT <= {r.sla_ttft_ms:g} ms, "
                 f"TPOT <= {r.sla_tpot_ms:g} ms", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"plot written to {path}"
