"""`perfcast report`: one offline HTML file that holds its data and points at no other host."""

import re
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

import perfcast
from perfcast.report.html import embedded_data, render_report
from perfcast.report.sweeps import default_contexts, report_data

PERFCAST = [sys.executable, "-m", "perfcast.cli"]
MODEL = "meta-llama/Llama-3.1-8B"


class Refs(HTMLParser):
    """Every URL-bearing attribute of every element."""

    def __init__(self):
        super().__init__()
        self.refs, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href", "action", "formaction", "data", "poster", "srcset", "xlink:href") and v:
                self.refs.append((tag, k, v))


def external_refs(page: str) -> list:
    p = Refs()
    p.feed(page)
    bad = [r for r in p.refs if re.match(r"\s*(https?:)?//", r[2], re.IGNORECASE)]
    bad += re.findall(r"@import|url\(\s*['\"]?\s*(?:https?:)?//", page, re.IGNORECASE)
    return bad


@pytest.fixture(scope="module")
def data():
    return report_data(MODEL, ["h100-sxm", "h200", "a100-80gb"], batch=8, context=2048)


@pytest.fixture(scope="module")
def page(data):
    return render_report(data)


def test_page_is_self_contained(page):
    assert external_refs(page) == []
    p = Refs()
    p.feed(page)
    assert "link" not in p.tags and not [r for r in p.refs if r[1] == "src"]  # all code and style inline
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert "fetch(" not in page and "XMLHttpRequest" not in page
    assert "window.PerfChart" in page or "root.PerfChart" in page


def test_page_holds_the_data(page, data):
    assert embedded_data(page) == data
    for gpu in ("h100-sxm", "h200", "a100-80gb"):
        assert gpu in page
    assert "{{" not in page.split('id="perfcast-data"')[0]  # every template token was filled


def test_data_matches_the_api(data):
    s = data["settings"]
    assert s["batches"] == [2**i for i in range(11)]
    assert s["contexts"] == default_contexts(131072) and s["contexts"][-1] == 131072
    h200 = next(g for g in data["gpus"] if g["id"] == "h200")
    ref = perfcast.predict(MODEL, "h200", batch=8, prompt=2048, context=2048)
    assert h200["reference"] == ref.to_dict()
    i = h200["by_batch"]["batch"].index(64)
    p64 = perfcast.predict(MODEL, "h200", batch=64, prompt=2048, context=2048)
    assert h200["by_batch"]["decode_ms"][i] == pytest.approx(p64.decode_ms, rel=1e-12)
    assert h200["by_batch"]["tokens_per_s"][i] == pytest.approx(64 / (p64.decode_ms * 1e-3))
    sw = perfcast.sweep(MODEL, "h200", batch=8, prompt=np.array(s["contexts"]), context=np.array(s["contexts"]))
    assert h200["by_context"]["prefill_ms"] == pytest.approx(sw["prefill_ms"].tolist(), rel=1e-12)
    assert h200["by_context"]["fits"] == sw["fits"].tolist()


def test_memory_wall_is_the_capacity_limit(data):
    for g in data["gpus"]:
        wall = g["memory_wall"]
        assert wall["max_batch"] == sorted(wall["max_batch"], reverse=True)  # longer context, fewer sequences
        for c, b in zip(wall["context"], wall["max_batch"]):
            if b:
                assert perfcast.predict(MODEL, g["id"], batch=b, prompt=c, context=c).fits
            if c <= 8192:
                assert not perfcast.predict(MODEL, g["id"], batch=b + 1, prompt=c, context=c).fits
    h100, h200 = (next(g for g in data["gpus"] if g["id"] == i) for i in ("h100-sxm", "h200"))
    assert all(a > b for a, b in zip(h200["memory_wall"]["max_batch"], h100["memory_wall"]["max_batch"]))


def test_best_throughput_fits(data):
    for g in data["gpus"]:
        best = g["best"]
        assert best is not None
        i = g["by_batch"]["batch"].index(best["batch"])
        assert g["by_batch"]["fits"][i]
        fitting = [t for t, ok in zip(g["by_batch"]["tokens_per_s"], g["by_batch"]["fits"]) if ok]
        assert best["tokens_per_s"] == max(fitting)


def test_a_gpu_without_the_dtype_is_listed_not_fatal():
    d = report_data(MODEL, ["h100-sxm", "a100-80gb"], dtype="fp8", batches=[1, 8], contexts=[1024, 4096])
    assert [g["id"] for g in d["gpus"]] == ["h100-sxm"]
    assert d["skipped"][0]["gpu"] == "a100-80gb" and "fp8" in d["skipped"][0]["error"]


def test_script_breakout_is_escaped():
    d = report_data(MODEL, ["h200"], batches=[1], contexts=[512])
    d["model"] = "</script><script>alert(1)</script>"
    page = render_report(d)
    assert "</script><script>alert(1)" not in page
    assert embedded_data(page)["model"] == d["model"]


def test_report_command(tmp_path):
    out = tmp_path / "sub" / "r.html"
    r = subprocess.run(PERFCAST + ["report", "--model", MODEL, "--gpus", "H100,h200", "--batches", "1,4,16",
                                   "--contexts", "1024,8192", "--out", str(out)],
                       check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    d = embedded_data(page)
    assert [g["id"] for g in d["gpus"]] == ["h100-sxm", "h200"]
    assert d["gpus"][0]["by_batch"]["batch"] == [1, 4, 16]
    assert external_refs(page) == []


@pytest.mark.parametrize("args, needle", [
    (["--gpus", "h100,nope"], "unknown GPU"),
    (["--gpus", "h100", "--contexts", "1024,9999999"], "max_position_embeddings"),
    (["--gpus", "h100", "--batches", "4,-1"], "--batches"),
    (["--gpus", ","], "at least one GPU"),
])
def test_report_bad_input_is_one_line(args, needle, tmp_path):
    r = subprocess.run(PERFCAST + ["report", "--model", MODEL, *args, "--out", str(tmp_path / "x.html")],
                       check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and needle in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.html").exists()
