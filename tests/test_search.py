"""`perfcast search`: only deployments meeting the SLA, ranked by cost; pruning; prices; the CLI."""

import json
import subprocess
import sys

import pytest

from perfcast.search import SearchRequest, load_prices, pareto, search
from perfcast.search.space import candidates, prune

MODEL = "meta-llama/Llama-3.1-8B"
SMALL = {"model": MODEL, "rate_per_s": 12.0, "sla_ttft_ms": 400.0, "sla_tpot_ms": 40.0, "gpus": ("h100-sxm", "a100-80gb", "l40s"),
             "tp": (1, 2), "pp": (1,), "max_num_seqs": (64, 256), "max_batched_tokens": (2048, 8192), "splits": ((1, 1),),
             "sim_requests": 150, "verify": 12}


@pytest.fixture(scope="module")
def result():
    return search(SearchRequest(**SMALL), workers=1)


def test_search_returns_only_configs_that_meet_the_sla(result):
    assert result.results
    for o in result.results:
        assert o.meets_sla and o.source == "simulated"
        assert o.ttft_p90_ms <= SMALL["sla_ttft_ms"] and o.tpot_p90_ms <= SMALL["sla_tpot_ms"]
        assert o.units >= 1 and o.gpus == o.units * o.candidate.gpus_per_unit


def test_ranked_by_cost(result):
    costs = [o.cost_per_hour_usd for o in result.results]
    assert costs == sorted(costs)
    o = result.results[0]
    from perfcast.hardware import get_gpu

    assert o.cost_per_hour_usd == pytest.approx(o.gpus * get_gpu(o.candidate.gpu).price_per_hour_usd)


def test_frontier_is_pareto(result):
    f = result.frontier
    assert f and all(x in result.results for x in f)
    for a in f:
        assert not any(b.tokens_per_s_per_gpu > a.tokens_per_s_per_gpu and b.tokens_per_s_per_user
                       > a.tokens_per_s_per_user for b in result.results)


def test_pareto_unit():
    from types import SimpleNamespace as S

    pts = [S(tokens_per_s_per_gpu=g, tokens_per_s_per_user=u) for g, u in [(1, 10), (2, 5), (1.5, 4), (3, 1), (0.5, 9)]]
    assert [(p.tokens_per_s_per_gpu, p.tokens_per_s_per_user) for p in pareto(pts)] == [(1, 10), (2, 5), (3, 1)]


def test_rank_by_gpus_and_price_override(tmp_path):
    req = SearchRequest(**SMALL)
    by_gpus = search(req, workers=1, rank="gpus")
    n = [o.gpus for o in by_gpus.results]
    assert n == sorted(n)
    f = tmp_path / "p.csv"
    f.write_text("gpu,price_per_hour_usd\nH100,0.10\nl40s,9\na100-80gb,9\n")
    prices = load_prices(f)
    assert prices == {"h100-sxm": 0.10, "l40s": 9.0, "a100-80gb": 9.0}
    cheap = search(SearchRequest(**{**SMALL, "prices": prices}), workers=1)
    assert cheap.results[0].candidate.gpu == "h100-sxm"
    assert cheap.results[0].cost_per_hour_usd == pytest.approx(0.10 * cheap.results[0].gpus)


def test_memory_pruning_before_simulation():
    req = SearchRequest(**{**SMALL, "model": "meta-llama/Llama-3.1-70B", "gpus": ("l4",), "tp": (1, 2)})
    kept, why = prune(req, candidates(req))
    assert not kept and all("memory" in w for w in why.values())
    res = search(req, workers=1)
    assert res.results == [] and res.pruned == res.considered


def test_impossible_sla_gives_nothing_with_reasons():
    res = search(SearchRequest(**{**SMALL, "sla_tpot_ms": 0.5}), workers=1)
    assert res.results == [] and res.simulated == 0
    assert any("TPOT" in k for k in res.rejected)


def test_local_processes_match_in_process(result):
    par = search(SearchRequest(**SMALL), workers=2)
    assert [o.row() for o in par.results] == [o.row() for o in result.results]


def test_search_cli_json_and_csv(tmp_path):
    out = tmp_path / "r.csv"
    r = subprocess.run([sys.executable, "-m", "perfcast.cli", "search", "--model", MODEL, "--rate", "5",
                        "--sla-ttft-ms", "500", "--sla-tpot-ms", "50", "--gpus", "h100-sxm,l40s", "--tp", "1",
                        "--pp", "1", "--max-num-seqs", "128", "--max-batched-tokens", "4096", "--disagg", "none",
                        "--sim-requests", "100", "--workers", "1", "--json", "--csv", str(out)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["considered"] == 2 and d["results"]
    assert {"gpu", "tp", "pp", "mode", "units", "gpus", "cost_per_hour_usd", "ttft_p90_ms", "tpot_p90_ms",
            "tokens_per_s_per_gpu", "tokens_per_s_per_user"} <= set(d["results"][0])
    assert out.read_text().startswith("gpu,tp,pp")


def test_search_cli_bad_input_one_line():
    r = subprocess.run([sys.executable, "-m", "perfcast.cli", "search", "--model", MODEL, "--rate", "5",
                        "--sla-ttft-ms", "500", "--sla-tpot-ms", "50", "--tp", "1,x"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode != 0 and "--tp" in r.stderr and "Traceback" not in r.stderr


def test_ray_missing_is_a_clear_message(monkeypatch):
    from perfcast.search.executors import Pool

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ValueError, match="pip install ray"):
        Pool("ray", 2)


def test_pool_map_reports_progress_and_keeps_order():
    from perfcast.search.executors import Pool

    seen = []
    with Pool("local", 1) as pool:
        out = pool.map(abs, [-3, -1, -2], lambda d, n: seen.append((d, n)))
    assert out == [3, 1, 2]
    assert seen == [(1, 3), (2, 3), (3, 3)]
