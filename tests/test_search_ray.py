"""The Ray executor on a local Ray instance; skipped where Ray is not installed."""

import pytest

from perfcast.search import SearchRequest, search

ray = pytest.importorskip("ray")

REQ = SearchRequest(model="meta-llama/Llama-3.1-8B", rate_per_s=8.0, sla_ttft_ms=500.0, sla_tpot_ms=40.0,
                    gpus=("h100-sxm", "l40s"), tp=(1,), pp=(1,), max_num_seqs=(128,), max_batched_tokens=(4096,),
                    splits=(), sim_requests=100)


def test_ray_executor_matches_local():
    got = search(REQ, executor="ray", workers=2)  # starts a local Ray instance and stops it
    assert not ray.is_initialized()
    want = search(REQ, workers=1)
    assert got.results and [o.row() for o in got.results] == [o.row() for o in want.results]
