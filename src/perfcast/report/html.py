"""The offline HTML report: one self-contained file (data, chart code and style inlined).

Nothing in the file points at another host: the chart code is perfcast's own
(``static/chart.js``), and a Content-Security-Policy forbids the page from fetching anything.
"""

from __future__ import annotations

import html
import json
import re
from importlib import resources
from pathlib import Path

_TOKEN = re.compile(r"\{\{([A-Z_]+)\}\}")


def asset(name: str) -> str:
    """Text of a file under ``perfcast/report/static``."""
    return (resources.files("perfcast.report.static") / name).read_text(encoding="utf-8")


def script_json(obj) -> str:
    """JSON safe to place inside a ``<script>`` element (no ``</script>``, no NaN)."""
    from perfcast.batch import dumps

    return dumps(obj).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_report(data: dict, title: str | None = None) -> str:
    """The report page for ``data`` from :func:`perfcast.report.sweeps.report_data`."""
    gpus = ", ".join(g["id"] for g in data["gpus"])
    title = title or f"perfcast: {data['model']} on {gpus}"
    parts = {
        "TITLE": html.escape(title),
        "CSS": asset("style.css"),
        "CHART_JS": asset("chart.js"),
        "REPORT_JS": asset("report.js"),
        "DATA": script_json(data),
    }
    # one pass, so that text inserted for one token is never scanned for another
    return _TOKEN.sub(lambda m: parts[m.group(1)], asset("report.html"))


def write_report(data: dict, path: str | Path, title: str | None = None) -> Path:
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(data, title), encoding="utf-8")
    return path


def embedded_data(page: str) -> dict:
    """The data set embedded in a rendered report (for tests and tools)."""
    m = re.search(r'<script type="application/json" id="perfcast-data">(.*?)</script>', page, re.DOTALL)
    if not m:
        raise ValueError("no perfcast data in this page")
    return json.loads(m.group(1))
