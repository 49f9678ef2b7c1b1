"""The web UI's JSON API: right answers for good input, a 4xx JSON message for bad input, never a 500."""

import json

import pytest

flask = pytest.importorskip("flask")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import perfcast
from perfcast.report.web import create_app

GOOD = {"model": "meta-llama/Llama-3.1-8B", "gpu": "h100-sxm", "batch": "8", "prompt": "2048", "context": "2048"}


@pytest.fixture(scope="module")
def client():
    app = create_app()
    app.testing = True
    return app.test_client()


def test_catalogs(client):
    gpus = client.get("/api/gpus").get_json()
    assert {"h100-sxm", "h200"} <= {g["id"] for g in gpus}
    models = client.get("/api/models").get_json()
    llama = next(m for m in models if m["id"] == "meta-llama/Llama-3.1-8B")
    assert llama["valid_tp"] == [1, 2, 4, 8, 16, 32] and llama["max_positions"] == 131072
    opts = client.get("/api/options").get_json()
    assert "cuda-graph" in opts["runtimes"] and "bf16" in opts["dtypes"] and opts["profiles"] == ["auto", "none"]


def test_predict_matches_the_api(client):
    r = client.get("/api/predict", query_string=GOOD)
    assert r.status_code == 200 and r.mimetype == "application/json"
    d = r.get_json()
    p = perfcast.predict("meta-llama/Llama-3.1-8B", "h100-sxm", batch=8, prompt=2048, context=2048, breakdown=True)
    assert d["prediction"] == p.to_dict()
    assert [o["name"] for o in d["ops"]] == [o["name"] for o in p.breakdown]
    assert {"families", "memory", "roofline"} <= set(d)


def test_post_json_and_aliases(client):
    r = client.post("/api/predict", json={"model": "Llama-3.1-8B", "gpu": "NVIDIA H200", "batch": 4, "prompt": 512,
                                          "tp": 2, "runtime": "eager"})
    assert r.status_code == 200, r.get_json()
    p = r.get_json()["prediction"]
    assert (p["gpu"], p["model"], p["tp"], p["context"], p["runtime"]) == (
        "h200", "meta-llama/Llama-3.1-8B", 2, 512, "eager")


def test_sweeps_match_the_api(client):
    r = client.get("/api/sweep", query_string={**GOOD, "axis": "batch", "values": "1,16,256"})
    assert r.status_code == 200
    d = r.get_json()
    sw = perfcast.sweep("meta-llama/Llama-3.1-8B", "h100-sxm", batch=[1, 16, 256], prompt=2048, context=2048)
    assert d["batch"] == [1, 16, 256]
    assert d["decode_ms"] == sw["decode_ms"].tolist() and d["fits"] == sw["fits"].tolist()
    r = client.post("/api/sweep", json={**GOOD, "axis": "context", "values": [512, 4096]})
    d = r.get_json()
    sw = perfcast.sweep("meta-llama/Llama-3.1-8B", "h100-sxm", batch=8, prompt=[512, 4096], context=[512, 4096])
    assert d["context"] == [512, 4096] and d["prefill_ms"] == sw["prefill_ms"].tolist()


BAD_QUERIES = [
    ({}, 400, "model"),
    ({"model": "meta-llama/Llama-3.1-8B"}, 400, "gpu"),
    ({**GOOD, "model": "/etc/passwd"}, 400, "unknown model"),
    ({**GOOD, "model": "../../config.json"}, 400, "unknown model"),
    ({**GOOD, "gpu": "tpu-v9"}, 400, "unknown GPU"),
    ({**GOOD, "batch": "0"}, 400, "batch"),
    ({**GOOD, "batch": "-3"}, 400, "batch"),
    ({**GOOD, "batch": "2.5"}, 400, "batch"),
    ({**GOOD, "batch": "NaN"}, 400, "batch"),
    ({**GOOD, "batch": "1e9"}, 400, "batch"),
    ({**GOOD, "batch": "99999999999999999999999"}, 400, "batch"),
    ({**GOOD, "batch": ""}, 400, "batch"),
    ({**GOOD, "context": "٣"}, 400, "context"),  # a unicode digit
    ({**GOOD, "tp": "3"}, 422, "valid tp"),
    ({**GOOD, "pp": "999"}, 422, "layers"),
    ({**GOOD, "prompt": "200000"}, 422, "max_position_embeddings"),
    ({**GOOD, "dtype": "fp64"}, 400, "dtype"),
    ({**GOOD, "runtime": "vllm-9"}, 400, "runtime"),
    ({**GOOD, "profile": "/tmp"}, 400, "profile"),
    ({**GOOD, "gpu": "a100-80gb", "dtype": "fp8"}, 422, "fp8"),
    ({**GOOD, "colour": "blue"}, 400, "unknown field"),
]


@pytest.mark.parametrize("query, status, needle", BAD_QUERIES)
def test_bad_predict_input(client, query, status, needle):
    r = client.get("/api/predict", query_string=query)
    assert r.status_code == status and r.mimetype == "application/json"
    assert needle in r.get_json()["error"]


@pytest.mark.parametrize("query, needle", [
    ({**GOOD}, "values"),
    ({**GOOD, "values": ""}, "values"),
    ({**GOOD, "values": "1,x"}, "batch"),
    ({**GOOD, "axis": "prompt", "values": "1"}, "axis"),
    ({**GOOD, "values": ",".join(["1"] * 65)}, "at most"),
    ({**GOOD, "axis": "context", "values": "1024,300000"}, "max_position_embeddings"),
])
def test_bad_sweep_input(client, query, needle):
    r = client.get("/api/sweep", query_string=query)
    assert 400 <= r.status_code < 500 and needle in r.get_json()["error"]


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"null", b'"str"', b"{\"model\": ", b"\xff\xfe\x00",
                                  b'{"model": {"nested": [1, {"x": 2}]}, "gpu": "h100"}',
                                  b'{"model": "Llama-3.1-8B", "gpu": "h100", "batch": true}',
                                  b'{"model": "Llama-3.1-8B", "gpu": "h100", "batch": 1e400}',
                                  b'{"model": "Llama-3.1-8B", "gpu": "h100", "batch": NaN}',
                                  b"[" * 5000 + b"]" * 5000], ids=lambda b: repr(b[:24]))
def test_bad_bodies(client, body):
    r = client.post("/api/predict", data=body, content_type="application/json")
    assert r.status_code == 400 and "error" in r.get_json()


def test_http_errors_are_json(client):
    for r, status in ((client.get("/nope"), 404), (client.delete("/api/predict"), 405),
                      (client.get("/assets/..%2fweb.py"), 404), (client.get("/assets/secret.py"), 404),
                      (client.post("/api/predict", data=b"{" + b" " * 70_000 + b"}",
                                   content_type="application/json"), 413)):
        assert r.status_code == status and "error" in r.get_json()


def test_repeated_fields_are_refused(client):
    r = client.get("/api/predict?model=Llama-3.1-8B&gpu=h100&batch=1&batch=2")
    assert r.status_code == 400 and "more than once" in r.get_json()["error"]


def test_page_and_assets_are_local(client):
    page = client.get("/")
    assert page.status_code == 200 and b"assets/ui.js" in page.data
    assert b"http://" not in page.data and b"https://" not in page.data
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    for name in ("chart.js", "ui.js", "style.css"):
        r = client.get(f"/assets/{name}")
        assert r.status_code == 200 and len(r.data) > 500
        assert b"https://" not in r.data


ANY = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
                st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
FIELDS = st.sampled_from(["model", "gpu", "batch", "prompt", "context", "tp", "pp", "dtype", "runtime",
                          "profile", "axis", "values", "extra"])
VALID = {"model": st.sampled_from(["Llama-3.1-8B", "Qwen/Qwen3-8B", "nope"]),
         "gpu": st.sampled_from(["h100", "h200", "l4", "x"]), "batch": st.integers(-2, 5000),
         "context": st.integers(-2, 300_000), "tp": st.integers(0, 9), "dtype": st.sampled_from(["bf16", "fp8", "q"])}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(st.dictionaries(FIELDS, ANY, max_size=6), st.fixed_dictionaries({}, optional=VALID)),
       endpoint=st.sampled_from(["/api/predict", "/api/sweep"]), as_query=st.booleans())
def test_fuzz_never_500(client, body, endpoint, as_query):
    if as_query:
        r = client.get(endpoint, query_string={k: json.dumps(v) if not isinstance(v, str) else v
                                               for k, v in body.items()})
    else:
        r = client.post(endpoint, data=json.dumps(body), content_type="application/json")
    assert r.status_code in (200, 400, 422), r.data[:300]
    d = r.get_json()
    assert isinstance(d, dict) and (r.status_code == 200) == ("error" not in d)
