"""The iteration-time model against the step model it is built from."""

import numpy as np
import pytest

from perfcast.serving.steptime import IterationModel, iteration_model
from perfcast.step.predict import make_config, sweep

LAYOUTS = [("meta-llama/Llama-3.1-8B", "h100-sxm", 1, 1, "cuda-graph"),
           ("meta-llama/Llama-3.1-8B", "a100-80gb", 2, 1, "cuda-graph"),
           ("Qwen/Qwen2.5-7B", "l40s", 1, 2, "cuda-graph"),
           ("meta-llama/Llama-3.1-8B", "h100-sxm", 1, 1, "eager"),
           ("meta-llama/Llama-3.1-8B", "h100-sxm", 4, 2, "eager")]


@pytest.fixture(scope="module", params=LAYOUTS, ids=lambda p: f"{p[1]}-tp{p[2]}-pp{p[3]}-{p[4]}")
def layout(request):
    model, gpu, tp, pp, rt = request.param
    cfg = make_config(model, gpu, tp, pp, runtime=rt)
    return cfg, IterationModel(cfg, 8192, 256)


@pytest.mark.parametrize("b,p", [(1, 128), (1, 512), (4, 512), (8, 128), (1, 3000), (2, 4096), (16, 100),
                                 (1, 8192), (3, 700)])
def test_one_full_prefill_matches_step_model_prefill(layout, b, p):
    cfg, m = layout
    want = float(sweep(cfg, None, batch=b, prompt=p, context=p)["prefill_ms"])
    got = m.iteration(chunks=[(p, p)] * b) * 1e3
    assert got == pytest.approx(want, rel=0.03)


@pytest.mark.parametrize("b,c", [(1, 100), (8, 1000), (64, 2048), (256, 500), (100, 7000), (3, 33), (37, 1234)])
def test_decodes_only_match_step_model_decode(layout, b, c):
    cfg, m = layout
    want = float(sweep(cfg, None, batch=b, prompt=c, context=c)["decode_ms"])
    got = m.iteration(decode_kv=[c + 1] * b) * 1e3  # the new token attends to the context plus itself
    assert got == pytest.approx(want, rel=0.03)
    assert m.decode(b, b * (c + 1)) == pytest.approx(got / 1e3, rel=1e-9)


def test_more_work_never_faster():
    m = iteration_model(make_config("meta-llama/Llama-3.1-8B", "h100-sxm"), 8192, 256)
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, ctx, q = int(rng.integers(1, 200)), int(rng.integers(1, 8000)), int(rng.integers(1, 4000))
        base = m.iteration([ctx] * n, [(q, q)])
        assert m.iteration([ctx] * (n + 1), [(q, q)]) >= base * (1 - 1e-9)
        assert m.iteration([ctx + 64] * n, [(q, q)]) >= base * (1 - 1e-9)
        assert m.iteration([ctx] * n, [(q + 32, q + 32)]) >= base * (1 - 1e-9)
        assert base >= max(m.iteration([ctx] * n), m.iteration(chunks=[(q, q)])) * (1 - 1e-9)


def test_chunk_of_a_long_prompt_costs_more_attention_than_its_first_chunk():
    m = iteration_model(make_config("meta-llama/Llama-3.1-8B", "h100-sxm"), 8192, 256)
    first = m.iteration(chunks=[(2048, 2048)])
    later = m.iteration(chunks=[(2048, 8192)])  # same tokens, attending over 6144 cached ones
    assert later > first


def test_tables_are_shared_per_config():
    cfg = make_config("meta-llama/Llama-3.1-8B", "h100-sxm")
    big = iteration_model(cfg, 8192, 256)
    assert iteration_model(cfg, 4096, 128) is big
