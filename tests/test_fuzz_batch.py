"""Fuzzing the JSON Lines batch reader (perfcast.batch.predict_lines / op_lines) with Hypothesis.

Whatever the lines hold (random bytes, wrong types, huge or negative numbers, NaN, unicode, nesting):
no exception escapes, there is exactly one JSON-serializable output per input line, and the good
lines mixed among bad ones are predicted exactly as they are alone.
"""

import functools
import json
import os

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from perfcast.batch import dumps, op_lines, predict_lines

# PERFCAST_FUZZ_EXAMPLES=2000 for a long hunt; the default keeps the suite fast
SETTINGS = settings(max_examples=int(os.environ.get("PERFCAST_FUZZ_EXAMPLES", "60")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ----------------------------------------------------------------------------- values of every kind
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**40), max_value=10**40),
    st.sampled_from([0, -1, 1 << 40, (1 << 40) + 1, 2**63, -(2**63), 10**30]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.5, 1e308, -0.0, 1e-300, 8.0]),
    st.text(max_size=20), st.sampled_from(["8", "h100", "bf16", "\u0661\u0662", "\x00", "🚀", "NaN"]),
)
ANY = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                     st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                   max_leaves=8)

# ----------------------------------------------------------------------------- predict lines
PREDICT_FIELDS = ["model", "gpu", "batch", "prompt", "context", "tp", "pp", "dtype", "runtime", "profile",
                  "kv_dtype", "wdtype", "breakdown", "offload"]
GOOD_CASE = st.fixed_dictionaries(
    {"model": st.sampled_from(["meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-0.5B", "Llama-3.2-1B"]),
     "gpu": st.sampled_from(["h100-sxm", "H200", "a100-80gb"])},
    optional={"batch": st.integers(1, 256), "prompt": st.integers(1, 4096), "context": st.integers(1, 8192),
              "tp": st.sampled_from([1, 2]), "runtime": st.sampled_from(["cuda-graph", "eager"]),
              "dtype": st.sampled_from(["bf16", "fp16", "int4"]), "breakdown": st.booleans()})


@st.composite
def mutated(draw, good):
    """A good case with one field replaced (or added) by a value of any kind."""
    case = dict(draw(good))
    case[draw(st.sampled_from(PREDICT_FIELDS + ["junk", ""]))] = draw(ANY)
    return json.dumps(case)  # NaN / Infinity are written as the bare tokens JSON readers meet in the wild


def random_text():
    return st.one_of(st.binary(max_size=80).map(lambda b: b.decode("utf-8", errors="replace")),
                     st.text(max_size=60), st.sampled_from(["", " ", "{}", "[]", "null", "1", "{", "\ufeff{}",
                                                            '{"model": NaN}', "[" * 5000, "{\"a\":" * 3000]))


def bad_lines(good):
    return st.one_of(random_text(), ANY.map(json.dumps), mutated(good),
                     st.dictionaries(st.sampled_from(PREDICT_FIELDS), ANY, max_size=6).map(json.dumps))


@functools.cache
def alone(reader, line: str) -> dict:
    out, _ = reader([line])
    assert len(out) == 1
    return out[0]


def check(reader, lines, good_at):
    out, ok = reader(lines)
    assert len(out) == len(lines)
    assert all(isinstance(o, dict) for o in out)
    for o in out:
        json.loads(dumps(o))  # what the CLI prints: strict JSON (no NaN), one object per line
        if "error" in o:
            assert isinstance(o["error"], str) and o["error"] and "\n" not in o["error"]
    assert ok == all("error" not in o for o in out)
    for i in good_at:
        assert out[i] == alone(reader, lines[i]), (i, lines[i])


@st.composite
def interleaved(draw, good, bad):
    goods = draw(st.lists(good, min_size=1, max_size=4))
    bads = draw(st.lists(bad, min_size=0, max_size=5))
    slots = draw(st.permutations(["g"] * len(goods) + ["b"] * len(bads)))
    lines, good_at, gi, bi = [], [], iter(goods), iter(bads)
    for s in slots:
        if s == "g":
            good_at.append(len(lines))
        lines.append(next(gi) if s == "g" else next(bi))
    return lines, good_at


LLAMA = '{"model": "meta-llama/Llama-3.1-8B", "gpu": "h100-sxm"%s}'


@SETTINGS
@given(interleaved(GOOD_CASE.map(json.dumps), bad_lines(GOOD_CASE)))
# found by this test: a one-token prompt costed with a 512-token one (the measured attention table
# was picked for the whole group by np.all(q_len == 1) in profiles/measured.py)
@example(([LLAMA % "", LLAMA % ', "prompt": 1'], [0, 1]))
def test_predict_lines_fuzz(case):
    lines, good_at = case
    check(predict_lines, lines, good_at)
    for i in good_at:
        assert "error" not in alone(predict_lines, lines[i]) or "max_position" in alone(predict_lines, lines[i])["error"]


# ----------------------------------------------------------------------------- op lines
GOOD_OP = st.one_of(
    st.fixed_dictionaries({"op": st.just("gemm"), "gpu": st.sampled_from(["h100-sxm", "h200"]),
                           "m": st.integers(1, 8192), "n": st.integers(1, 8192), "k": st.integers(1, 8192)},
                          optional={"dtype": st.sampled_from(["bf16", "fp8"])}),
    st.fixed_dictionaries({"op": st.just("attention"), "gpu": st.just("h100-sxm"), "batch": st.integers(1, 64),
                           "heads": st.just(32), "kv_heads": st.sampled_from([8, 32]), "head_dim": st.just(128),
                           "q_len": st.just(1), "kv_len": st.integers(1, 32768)}),
    st.fixed_dictionaries({"op": st.just("rmsnorm"), "gpu": st.just("h200"), "tokens": st.integers(1, 65536),
                           "hidden": st.sampled_from([2048, 4096, 8192])}),
    st.fixed_dictionaries({"op": st.sampled_from(["all_reduce", "all_gather"]), "gpu": st.just("h100-sxm"),
                           "bytes": st.integers(1, 1 << 30), "gpus": st.sampled_from([2, 4, 8])}),
)
OP_FIELDS = ["op", "gpu", "dtype", "profile", "m", "n", "k", "batch", "heads", "kv_heads", "head_dim", "q_len",
             "kv_len", "causal", "window", "tokens", "hidden", "bytes", "gpus"]


@st.composite
def mutated_op(draw):
    case = dict(draw(GOOD_OP))
    case[draw(st.sampled_from(OP_FIELDS + ["junk"]))] = draw(ANY)
    return json.dumps(case)


@SETTINGS
@given(interleaved(GOOD_OP.map(json.dumps), st.one_of(random_text(), ANY.map(json.dumps), mutated_op())))
def test_op_lines_fuzz(case):
    lines, good_at = case
    check(op_lines, lines, good_at)
    for i in good_at:
        assert "error" not in alone(op_lines, lines[i])


def test_known_nasty_lines():
    nasty = ["{" * 100_000, "[" * 100_000, '{"model": "' + "x" * 100_000 + '"}', '{"batch": 1' + "0" * 5000 + "}",
             '{"model": "meta-llama/Llama-3.1-8B", "gpu": "h100", "batch": 1e999}',
             '{"model": "meta-llama/Llama-3.1-8B", "gpu": "h100", "batch": -Infinity}',
             '{"model": "meta-llama/Llama-3.1-8B", "gpu": "h100", "batch": 4, "offload": "lots"}',
             '{"model": "meta-llama/Llama-3.1-8B", "gpu": "h100", "batch": 4, "offload": {"plan": 7}}',
             '{"model": ["meta-llama/Llama-3.1-8B"], "gpu": "h100"}', '{"model": "/", "gpu": "h100"}',
             '{"model": "meta-llama/Llama-3.1-8B", "gpu": "h100", "profile": "/nonexistent"}',
             "\ud800", "\x00\x00", '{"__proto__": {}}']
    good = json.dumps({"model": "meta-llama/Llama-3.1-8B", "gpu": "h100", "batch": 8, "prompt": 2048})
    lines = [good, *nasty, good]
    check(predict_lines, lines, [0, len(lines) - 1])
    ops = ['{"op": "gemm", "gpu": "h100", "m": 1e999, "n": 1, "k": 1}',
           '{"op": "gemm", "gpu": "h100", "m": ' + "9" * 4000 + ', "n": 1, "k": 1}',
           json.dumps({"op": "gemm", "gpu": "h100", "m": 4096, "n": 4096, "k": 4096, "'": 1, "": 2, "op_name": 3}),
           '{"op": "attention", "gpu": "h100", "batch": 1, "heads": 0, "head_dim": 1, "q_len": 1, "kv_len": 1}',
           '{"op": "all_reduce", "gpu": "h100", "bytes": 1, "gpus": 1}', '{"op": {}, "gpu": "h100"}']
    good_op = json.dumps({"op": "gemm", "gpu": "h100", "m": 4096, "n": 4096, "k": 4096})
    check(op_lines, [good_op, *ops, good_op], [0, len(ops) + 1])
