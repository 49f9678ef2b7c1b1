"""``perfcast ui``: a local web app over the prediction API (Flask, extra ``perfcast[web]``).

One page (``static/ui.html`` + ``ui.js`` + ``chart.js``, all served from the package) and a JSON API:

- ``GET /api/gpus``, ``GET /api/models``, ``GET /api/options``: what can be chosen;
- ``GET|POST /api/predict``: one case explained (prediction, per-op rows, families, memory, roofline);
- ``GET|POST /api/sweep``: the case swept over ``axis`` = ``batch`` or ``context``.

Inputs come as a query string or a JSON object body. Bad input answers 400 (malformed) or 422 (well
formed but not predictable, e.g. a tp that does not divide the heads) with ``{"error": message}``;
no request ends in a 500.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import warnings

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from perfcast.report.params import BadInput, parse_case, parse_sweep

ASSETS = {"chart.js": "text/javascript", "ui.js": "text/javascript", "style.css": "text/css"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
MAX_BODY_BYTES = 64 * 1024
log = logging.getLogger("perfcast.ui")
# The step model is CPU-bound Python under the GIL, so running one prediction at a time costs no
# throughput; it also means a cold cache (profile tables) is filled once, not by every waiting thread.
_COMPUTE = threading.Lock()


def _json(obj, status: int = 200) -> Response:
    from perfcast.batch import dumps

    return Response(dumps(obj), status=status, mimetype="application/json")


def _error(message: str, status: int) -> Response:
    text = str(message).strip().splitlines()[0] if str(message).strip() else "bad request"
    return _json({"error": text[:500], "status": status}, status)


def _source() -> dict:
    """The request's fields: the JSON object body of a POST, or the query string of a GET."""
    if request.method == "POST":
        try:
            body = request.get_json(force=True, silent=True)
        except RecursionError:  # silent covers malformed JSON, not absurd nesting
            body = None
        if not isinstance(body, dict):
            raise BadInput("the request body must be one JSON object, e.g. {\"model\": ..., \"gpu\": ...}")
        return body
    repeated = [k for k in request.args if len(request.args.getlist(k)) > 1]
    if repeated:
        raise BadInput(f"field(s) given more than once: {', '.join(repeated)[:200]}")
    return request.args.to_dict()


def _answer(parse, compute) -> Response:
    """Check the request's fields with ``parse``, then run ``compute`` on what it returns; every
    failure becomes a 4xx JSON error. Bad input is answered without waiting for the compute lock."""
    try:
        args = parse(_source())
        with _COMPUTE, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = compute(args)
        return _json(result)
    except BadInput as e:
        return _error(str(e), 400)
    except HTTPException:
        raise
    except Exception as e:
        return _error(str(e) or e.__class__.__name__, 422)


@functools.cache
def gpu_rows() -> list[dict]:
    from perfcast.hardware import list_gpus
    from perfcast.profiles.registry import shipped_profiles

    measured = set(shipped_profiles())
    return [{"id": g.id, "name": g.name, "aliases": list(g.aliases), "capacity_gib": g.mem_capacity_bytes / 2**30,
             "mem_bw_tbps": g.mem_bw_bytes_per_s / 1e12, "bf16_tflops": g.peak_flops.get("bf16", 0.0) / 1e12,
             "dtypes": sorted(k for k, v in g.peak_flops.items() if v > 0), "measured": g.id in measured}
            for g in list_gpus()]


@functools.cache
def model_rows() -> list[dict]:
    from perfcast.models import get_model, list_models

    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mid in list_models():
            s = get_model(mid)
            rows.append({"id": mid, "params_b": s.total_params() / 1e9, "layers": s.n_layers, "heads": s.n_heads,
                         "kv_heads": s.n_kv_heads, "max_positions": s.max_positions, "experts": s.n_experts,
                         "valid_tp": [d for d in range(1, min(s.n_heads, 64) + 1) if s.n_heads % d == 0]})
    return rows


def options() -> dict:
    from perfcast.report import params

    return {"dtypes": list(params.dtypes()), "runtimes": params.runtimes(), "profiles": list(params.PROFILES),
            "limits": params.LIMITS, "max_sweep_points": params.MAX_SWEEP_POINTS}


def predict_case(case: dict) -> dict:
    """``/api/predict``: the explanation of a case checked by :func:`parse_case`."""
    from perfcast.report.explain import explain

    return explain(**case).to_dict()


def sweep_case(parsed: tuple[dict, str, list[int]]) -> dict:
    """``/api/sweep``: a case checked by :func:`parse_sweep`, swept over its axis."""
    from perfcast.report.sweeps import batch_sweep, context_sweep
    from perfcast.step.predict import make_config

    case, axis, values = parsed
    cfg = make_config(case["model"], case["gpu"], case["tp"], case["pp"], case["dtype"], case["runtime"],
                      case["profile"])
    if axis == "batch":
        r = batch_sweep(cfg, values, case["context"], case["prompt"])
    else:
        r = context_sweep(cfg, values, case["batch"])
    return {"axis": axis, "case": case, **r}


def warm_up() -> None:
    """Load the catalogs and every GPU's profile once, before the first user waits for them."""
    model_rows()
    for g in gpu_rows():
        try:
            predict_case(parse_case({"model": "meta-llama/Llama-3.1-8B", "gpu": g["id"]}))
        except Exception:  # a GPU that cannot run the default case is warmed on first use
            log.debug("no warm-up for %s", g["id"], exc_info=True)


def create_app() -> Flask:
    app = Flask("perfcast.report.web", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    @app.get("/")
    def page():
        from perfcast.report.html import asset

        return Response(asset("ui.html"), mimetype="text/html")

    @app.get("/assets/<name>")
    def assets(name: str):
        from perfcast.report.html import asset

        if name not in ASSETS:
            return _error(f"no asset {name[:60]!r}", 404)
        return Response(asset(name), mimetype=ASSETS[name])

    app.add_url_rule("/favicon.ico", "favicon", lambda: Response(status=204))
    app.add_url_rule("/api/gpus", "gpus", lambda: _json(gpu_rows()))
    app.add_url_rule("/api/models", "models", lambda: _json(model_rows()))
    app.add_url_rule("/api/options", "options", lambda: _json(options()))
    app.add_url_rule("/api/predict", "predict", lambda: _answer(parse_case, predict_case), methods=["GET", "POST"])
    app.add_url_rule("/api/sweep", "sweep", lambda: _answer(parse_sweep, sweep_case), methods=["GET", "POST"])

    @app.after_request
    def headers(resp: Response) -> Response:
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        return _error(e.description or e.name, e.code or 400)

    @app.errorhandler(Exception)
    def any_error(e: Exception):  # a bug of ours, but still an answer, never a 500 page
        log.exception("unhandled error on %s", request.path)
        return _error(f"could not handle this request ({e.__class__.__name__}: {e})", 400)

    return app


def serve(host: str = "127.0.0.1", port: int = 8765, quiet: bool = False) -> None:
    """Serve the UI with a threaded server until Ctrl-C. ``port=0`` picks a free port."""
    from werkzeug.serving import make_server

    if quiet:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
    # bind here, so that a busy port raises OSError for the CLI to report (werkzeug would exit)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.create_server((host, port), family=family, backlog=128) as sock:
        server = make_server(host, port, create_app(), threaded=True, fd=sock.fileno())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warm_up()
    shown = f"[{host}]" if ":" in host else host
    print(f"perfcast ui: serving on http://{shown}:{server.port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
