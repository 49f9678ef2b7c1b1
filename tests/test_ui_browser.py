"""The web UI in a real headless browser: Debian's chromium driven by Playwright.

Skips when Playwright or /usr/bin/chromium is missing. CI installs them with
``apt-get install -y chromium`` and ``pip install playwright`` (no ``playwright install``: the
system chromium is used).
"""

import json
import os
import shutil
import threading
import urllib.parse
import urllib.request

import pytest

pytest.importorskip("flask")
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("PERFCAST_CHROMIUM", "/usr/bin/chromium")
if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
    CHROMIUM = shutil.which("chromium") or ""
pytestmark = pytest.mark.skipif(not CHROMIUM, reason="chromium is not installed (apt-get install -y chromium)")

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def server():
    from werkzeug.serving import make_server

    from perfcast.report.web import create_app

    srv = make_server("127.0.0.1", 0, create_app(), threaded=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.port}/"
    srv.shutdown()
    t.join(timeout=10)


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 900})
        pg.set_default_timeout(20_000)
        pg.problems = []
        pg.on("pageerror", lambda e: pg.problems.append(f"page error: {e}"))
        pg.on("console", lambda m: pg.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        pg.allowed = [server]  # URL prefixes the page may load
        pg.on("request", lambda r: None if r.url.startswith(tuple(pg.allowed)) else pg.problems.append(
            f"request to {r.url}"))
        yield pg
        browser.close()


def api_predict(server, page) -> dict:
    fields = page.evaluate("""() => Object.fromEntries(
        ["model", "gpu", "tp", "pp", "dtype", "runtime", "profile", "batch", "prompt", "context"]
          .map(f => [f, document.getElementById(f).value]))""")
    with urllib.request.urlopen(server + "api/predict?" + urllib.parse.urlencode(fields), timeout=30) as r:
        return json.loads(r.read())["prediction"]


def settled(page, after: int) -> None:
    """Wait until the page has finished an update newer than ``after``."""
    # a function, not an expression string: the page's CSP forbids eval, which string predicates use
    page.wait_for_function("n => document.body.dataset.busy === '0' && Number(document.body.dataset.updates) > n",
                           arg=after)


def shown(page) -> dict:
    vals = page.evaluate("""() => Object.fromEntries(["prefill-ms", "decode-ms", "total-gib"].map(
        id => [id, document.getElementById(id).dataset.value]))""")
    return {k: float(v) for k, v in vals.items()}


def updates(page) -> int:
    return int(page.evaluate("document.body.dataset.updates"))


def assert_matches(page, server):
    api = api_predict(server, page)
    got = shown(page)
    assert got == {"prefill-ms": api["prefill_ms"], "decode-ms": api["decode_ms"], "total-gib": api["total_gib"]}
    assert page.inner_text("#gpu") and page.input_value("#gpu") == api["gpu"]
    assert page.inner_text("#decode-ms") != "-"
    return api


def test_ui_follows_the_form_and_matches_the_api(page, server, tmp_path):
    page.goto(server)
    settled(page, 0)
    assert page.input_value("#model") == "meta-llama/Llama-3.1-8B" and page.input_value("#gpu") == "h100-sxm"
    first = assert_matches(page, server)
    assert page.locator("#ops-table tbody tr").count() >= 10
    assert page.locator("#chart-batch svg polyline").count() >= 1

    n = updates(page)
    page.fill("#batch", "64")
    settled(page, n)
    at64 = assert_matches(page, server)
    assert at64["batch"] == 64 and at64["decode_ms"] > first["decode_ms"]

    n = updates(page)
    page.select_option("#gpu", "h200")
    settled(page, n)
    on_h200 = assert_matches(page, server)
    assert on_h200["gpu"] == "h200" and on_h200["decode_ms"] < at64["decode_ms"]  # more bandwidth, faster decode

    shot = tmp_path / "ui.png"
    page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert data.startswith(PNG) and len(data) > 20_000
    assert page.problems == []


def test_ui_shows_bad_input_and_recovers(page, server):
    page.goto(server)
    settled(page, 0)
    n = updates(page)
    page.select_option("#tp", "32")
    page.fill("#pp", "3")
    page.fill("#batch", "0")
    page.wait_for_function("w => document.body.dataset.busy === '0' && "
                           "document.getElementById('error').textContent.includes(w)", arg="batch must be")
    assert page.is_visible("#error") and updates(page) > n
    assert page.inner_text("#decode-ms") == "-"
    n = updates(page)
    page.fill("#batch", "4")
    settled(page, n)
    assert not page.is_visible("#error")
    api = assert_matches(page, server)
    assert (api["tp"], api["pp"], api["batch"]) == (32, 3, 4)
    assert [p for p in page.problems if "status of 4" not in p] == []  # the 400 itself is logged by chromium


def test_report_is_interactive_offline(page, tmp_path):
    from perfcast.report.html import write_report
    from perfcast.report.sweeps import report_data

    data = report_data("meta-llama/Llama-3.1-8B", ["h100-sxm", "h200"], batches=[1, 8, 64], contexts=[1024, 8192])
    path = write_report(data, tmp_path / "report.html")
    page.problems.clear()
    page.allowed.append(path.as_uri())
    page.goto(path.as_uri())
    page.wait_for_selector("#chart-batch svg polyline")
    assert page.locator("#chart-batch svg polyline").count() == 2  # one line per GPU
    dot = page.locator("#chart-batch svg circle").first
    dot.hover()
    tip = page.locator("#chart-batch .pc-tip")
    assert tip.is_visible() and "batch" in tip.inner_text() and "ms" in tip.inner_text()
    page.locator("#chart-batch .pc-key", has_text="h200").click()  # legend toggle
    assert page.locator("#chart-batch svg polyline").count() == 1
    page.uncheck("#gpu-toggles input[data-gpu='h100-sxm']")  # GPU toggle affects every chart
    assert page.locator("#chart-wall svg polyline").count() == 1
    assert page.locator("#compare-table tbody tr").count() == 2
    assert page.problems == []  # no errors, and no request left the file
