"""JSON Lines batch mode (CONTRACT.md): one JSON object in, one out, same order, errors in place.

Lines that share a deployment (model, gpu, tp, pp, dtypes, runtime, profile) are predicted together
through the vectorized step model, so a file of many lines costs little more than one.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable

import numpy as np

PREDICT_KEYS = ("model", "gpu", "tp", "pp", "dtype", "runtime", "profile", "kv_dtype", "wdtype", "ep",
                "moe_imbalance")
PREDICT_DEFAULTS = {"tp": 1, "pp": 1, "ep": 1, "moe_imbalance": 1.0, "dtype": "bf16", "runtime": "cuda-graph",
                    "profile": "auto",
                    "kv_dtype": None, "wdtype": None}


def _err(msg: str) -> dict:
    return {"error": str(msg).splitlines()[0] if str(msg) else "error"}


# one decoder for every line (json.loads(s, parse_constant=...) builds a new one per call)
_DECODER = json.JSONDecoder(parse_constant=float)


def parse_line(line: str):
    """A dict, or an error dict when the line is not a JSON object."""
    s = line.strip()
    if not s:
        return None, _err("empty line: expected one JSON object")
    try:
        if s.startswith("\ufeff"):  # as json.loads says it
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", s, 0)
        obj = _DECODER.decode(s)
    except (json.JSONDecodeError, RecursionError, ValueError) as e:
        return None, _err(f"not valid JSON ({e.__class__.__name__}: {e}); expected one JSON object per line")
    if not isinstance(obj, dict):
        return None, _err(f"expected a JSON object, got {type(obj).__name__}")
    return obj, None


def _as_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{name} must be a positive integer, got {json.dumps(v)[:60]}")
    if isinstance(v, float) and (not math.isfinite(v) or v != int(v)):
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    iv = int(v)
    if iv < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if iv > 1 << 40:
        raise ValueError(f"{name}={iv} is too large")
    return iv


def _str_or_none(name: str, v):
    if v is None or isinstance(v, str):
        return v
    raise ValueError(f"{name} must be a string, got {json.dumps(v)[:60]}")


def _deployment_key(obj: dict) -> tuple:
    """The deployment fields of a line, checked and defaulted, in PREDICT_KEYS order (raises with the fix).

    A field that is missing and one that is null mean the same: the default."""
    if obj.get("model") is None:
        raise ValueError("missing field 'model' (a shipped id such as meta-llama/Llama-3.1-8B, or a path)")
    if obj.get("gpu") is None:
        raise ValueError("missing field 'gpu' (e.g. h100-sxm; `perfcast gpus` lists them)")
    vals = {k: obj.get(k, PREDICT_DEFAULTS.get(k)) for k in PREDICT_KEYS}
    if vals["tp"] is None:
        vals["tp"] = 1
    if vals["pp"] is None:
        vals["pp"] = 1
    for k in ("model", "gpu", "dtype", "runtime", "profile", "kv_dtype", "wdtype"):
        _str_or_none(k, vals[k])
    vals["tp"], vals["pp"] = _as_int("tp", vals["tp"]), _as_int("pp", vals["pp"])
    vals["ep"] = _as_int("ep", 1 if vals["ep"] is None else vals["ep"])
    mi = 1.0 if vals["moe_imbalance"] is None else vals["moe_imbalance"]
    if isinstance(mi, bool) or not isinstance(mi, (int, float)) or not math.isfinite(mi):
        raise ValueError(f"moe_imbalance must be a number >= 1, got {json.dumps(mi)[:60]}")
    vals["moe_imbalance"] = float(mi)
    for k in ("dtype", "runtime", "profile"):
        if vals[k] is None:
            vals[k] = PREDICT_DEFAULTS[k]
    return tuple(vals[k] for k in PREDICT_KEYS)


def _token_counts(obj: dict) -> tuple[int, int, int]:
    b = _as_int("batch", obj.get("batch", 1))
    p = _as_int("prompt", obj.get("prompt", 512))
    c = _as_int("context", obj.get("context", p))
    return b, p, c


_MAX_INT = 1 << 40
_NONE = type(None)


def _fast_types_ok(types: tuple) -> bool:
    """Whether a line whose deployment fields have these types may take the fast path: model and gpu
    strings, tp/pp/ep integers (not bools), the other names strings, moe_imbalance a number (or any of
    them null/missing). Values of these types are equal only when the careful path treats them alike."""
    return (types[0] is str and types[1] is str and all(t in (int, _NONE) for t in (types[2], types[3], types[9]))
            and all(t in (str, _NONE) for t in types[4:9]) and types[10] in (int, float, _NONE))


class _Plan:
    """Every line read and checked: finished outputs (errors, offload lines) in place, the rest grouped
    by deployment for the vectorized step model."""

    def __init__(self):
        self.outputs: list = []
        self.groups: dict[tuple, list] = {}  # key -> [(line, batch, prompt, context)]
        self.singles: list[tuple[int, object, int, int, int]] = []  # breakdown lines
        self.configs: dict[tuple, object] = {}  # key -> StepConfig, or the exception make_config raised
        # fast path: raw deployment values -> (config, its group's rows), or the exception they raise
        self.fast: dict[tuple, object] = {}
        self.fast_types: dict[tuple, bool] = {}

    def config(self, key: tuple):
        # moe_imbalance -0.0 and 0.0 are equal keys with different messages: keep the sign in the key
        ck = key if key[10] != 0 else (*key, str(key[10]))
        cfg = self.configs.get(ck)
        if cfg is None:
            from perfcast.step.predict import make_config

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    cfg = make_config(*key)
            except Exception as e:  # the same message for every line of this deployment
                cfg = e
            self.configs[ck] = cfg
        if isinstance(cfg, Exception):
            raise cfg
        return cfg

    def group(self, key: tuple) -> list:
        rows = self.groups.get(key)
        if rows is None:
            rows = self.groups[key] = []
        return rows

    def add(self, lines: Iterable[str]):
        from perfcast.step.predict import check_lengths

        outputs, fast, fast_types = self.outputs, self.fast, self.fast_types
        scan = _DECODER.scan_once
        keys = PREDICT_KEYS
        max_int = _MAX_INT
        for i, line in enumerate(lines):
            s = line.strip()
            try:  # the decoder's own scanner: a whole line that is one JSON value
                obj, end = scan(s, 0)
            except Exception:
                obj = end = None
            if end != len(s) or type(obj) is not dict:
                obj, err = parse_line(line)  # says what is wrong, as it always did
                if err:
                    outputs.append(err)
                    continue
            outputs.append(None)
            # fast path: the common, well-typed line; anything else takes the careful path below,
            # which decides (and words) every error exactly as it always did
            g = obj.get
            raw = tuple(map(g, keys))
            b, p = g("batch", 1), g("prompt", 512)
            c = g("context", p)
            types = tuple(map(type, raw))
            ok = fast_types.get(types)
            if ok is None:
                ok = fast_types[types] = _fast_types_ok(types)
            if (ok and type(b) is int and type(p) is int and type(c) is int
                    and 0 < b <= max_int and 0 < p <= max_int and 0 < c <= max_int
                    and (types[10] is not float or raw[10] >= 1.0)
                    and g("offload") is None and not g("breakdown")):
                ent = fast.get(raw)
                if ent is None:
                    try:
                        key = _deployment_key(obj)
                        ent = (self.config(key), self.group(key))
                    except Exception as e:
                        ent = e
                    fast[raw] = ent
                if type(ent) is tuple:
                    cfg, rows = ent
                    mp = cfg.model.max_positions
                    if p <= mp and c <= mp:
                        rows.append((i, b, p, c))
                        continue
                    ent = None
                try:
                    if ent is not None:
                        raise ent
                    check_lengths(cfg, p, c)
                except Exception as e:
                    outputs[i] = _err(e if str(e) else e.__class__.__name__)
                    continue
            try:
                self.add_slow(i, obj)
            except Exception as e:  # every failure becomes this line's error, never a traceback
                outputs[i] = _err(e if str(e) else e.__class__.__name__)

    def add_slow(self, i: int, obj: dict):
        from perfcast.step.predict import check_lengths

        key = _deployment_key(obj)
        b, p, c = _token_counts(obj)
        cfg = self.config(key)
        check_lengths(cfg, p, c)
        if obj.get("offload") is not None:
            from perfcast.offload.plans import predict_offload_case

            self.outputs[i] = predict_offload_case(cfg, obj, b, p, c)
            return
        if obj.get("breakdown"):
            self.singles.append((i, cfg, b, p, c))
        else:
            self.group(key).append((i, b, p, c))

    def predict(self, emit, workers: int = 1):
        """Predict the groups (together) and the breakdown lines; ``emit(cfg, result, cols)`` turns one
        group's result into its output lines. ``workers=2``: the groups are shared with a forked
        process (for text output only; the numbers do not depend on how groups are shared)."""
        from perfcast.step.predict import _predict_cfg

        outputs = self.outputs
        items = [(key, self.configs[key], tuple(zip(*rows))) for key, rows in self.groups.items() if rows]
        if workers > 1 and len(items) > 1:
            done = _emit_forked(items, emit)
        else:
            done = _emit_groups(items, emit)
        for (_, _, cols), out in zip(items, done):
            if isinstance(out, dict):  # the group failed: its error on each of its lines
                for i in cols[0]:
                    outputs[i] = out
                continue
            for i, o in zip(cols[0], out):
                outputs[i] = o
        for i, cfg, b, p, c in self.singles:
            try:
                outputs[i] = _predict_cfg(cfg, b, p, c, True).to_dict(breakdown=True)
            except Exception as e:
                outputs[i] = _err(e)
        _save_blends()
        return outputs


def _save_blends():
    from perfcast.profiles.measured import save_blends

    save_blends()


def _emit_groups(items, emit) -> list:
    """Per group: its output lines, or the error dict of a group that fails (as it fails alone)."""
    from perfcast.step.predict import predict_groups

    arrays = [(cfg, np.array(cols[1]), np.array(cols[2]), np.array(cols[3])) for _, cfg, cols in items]
    results = predict_groups(arrays, return_errors=True)
    return [_err(res) if isinstance(res, Exception) else emit(cfg, res, cols)
            for (_, cfg, cols), res in zip(items, results)]


# lines of work one group costs beyond its lines (its ops and runtime), for sharing groups between processes
_GROUP_WEIGHT = 60


def _share(items) -> tuple[list, list]:
    """Two parts of about equal work. Groups on the same GPU and profile stay together where that keeps
    the parts even (their ops are costed together)."""
    def weight(part):
        return sum(len(it[2][0]) + _GROUP_WEIGHT for it in part)

    for units in (_by_profile(items), [[it] for it in items]):
        parts, loads = ([], []), [0, 0]
        for u in sorted(units, key=weight, reverse=True):
            j = loads.index(min(loads))
            parts[j].extend(u)
            loads[j] += weight(u)
        if max(loads) <= 0.6 * sum(loads):
            break
    return parts


def _by_profile(items) -> list[list]:
    out: dict = {}
    for it in items:
        out.setdefault((it[1].gpu.id, it[1].profile), []).append(it)
    return list(out.values())


def _emit_forked(items, emit) -> list:
    """``_emit_groups`` with a forked child doing about half of the groups (text lines only: they come
    back through a pipe). Anything amiss in the child and the parent does its part too."""
    import os
    import pickle
    import signal
    import time

    from perfcast.step.predict import resolve_profile

    for _, cfg, _ in items:  # load the profiles once, before the fork, for both processes
        try:
            resolve_profile(cfg.gpu, cfg.profile)
        except Exception:  # (that group will say so)
            pass
    mine, theirs = _share(items)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its groups, as one pickle of joined texts, then out without cleanup
        code = 1
        try:
            os.close(r)
            got = [o if isinstance(o, dict) else "\n".join(o) for o in _emit_groups(theirs, emit)]
            _save_blends()
            with os.fdopen(w, "wb") as f:
                f.write(pickle.dumps(got, protocol=pickle.HIGHEST_PROTOCOL))
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    t0 = time.perf_counter()
    data = None
    try:
        done_mine = _emit_groups(mine, emit)
        # the child's part takes about as long as ours: one that is far later is given up on
        data = _read_all(r, deadline=time.perf_counter() + 5.0 + 10 * (time.perf_counter() - t0))
    finally:  # (on an error here the child's write fails at once: it never waits on a full pipe)
        os.close(r)
        if data is None:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    try:
        got = pickle.loads(data) if status == 0 and data else None
    except Exception:
        got = None
    if got is None or len(got) != len(theirs):
        done_theirs = _emit_groups(theirs, emit)
    else:
        done_theirs = [o if isinstance(o, dict) else o.split("\n") for o in got]
    where = {id(it): o for it, o in zip(mine + theirs, done_mine + done_theirs)}
    return [where[id(it)] for it in items]


def _read_all(fd: int, deadline: float) -> bytes | None:
    """Everything from ``fd`` until end of file, or None past ``deadline`` (perf_counter seconds)."""
    import os
    import select
    import time

    chunks = []
    while True:
        left = deadline - time.perf_counter()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def workers_for(n_lines: int) -> int:
    """Processes for a batch file: 2 for a large file where the platform forks cheaply and a second CPU
    is free right now (another busy process would only make the two take turns);
    ``PERFCAST_WORKERS=1`` keeps everything in one process."""
    import os
    import sys

    if (os.environ.get("PERFCAST_WORKERS", "").strip() == "1" or n_lines < _FORK_MIN_LINES
            or not sys.platform.startswith("linux") or not hasattr(os, "fork")):
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
        with open("/proc/stat") as f:  # tasks on a CPU or waiting for one, this one included
            running = next(int(ln.split()[1]) for ln in f if ln.startswith("procs_running"))
    except (AttributeError, OSError, StopIteration, ValueError):
        return 1
    return 2 if cpus >= 2 and running < cpus else 1


_FORK_MIN_LINES = 4000


def _group_dicts(cfg, res: dict, grp) -> list[dict]:
    """One group's predictions as the dicts ``Prediction.to_dict`` gives."""
    from perfcast.ops.base import BOUNDS, SOURCES

    head = {"model": cfg.model.name, "gpu": cfg.gpu.id}
    mid = {"tp": cfg.tp, "pp": cfg.pp, "dtype": cfg.dtype, "runtime": cfg.runtime}
    cap, prof = res["capacity_gib"], res["profile"]
    tail = {"prefill_err_p90_pct": res["prefill_err_p90_pct"], "decode_err_p90_pct": res["decode_err_p90_pct"],
            "accuracy_basis": res["accuracy_basis"]}
    cols = [res[k].tolist() for k in ("prefill_ms", "decode_ms", "weights_gib", "kv_cache_gib", "activations_gib",
                                      "total_gib", "fits", "prefill_bound", "decode_bound", "source")]
    out = []
    for b, p, c, pm, dm, w, kv, act, tot, fits, pb, db, src in zip(grp[1], grp[2], grp[3], *cols):
        out.append({**head, "batch": b, "prompt": p, "context": c, **mid, "prefill_ms": pm, "decode_ms": dm,
                    "weights_gib": w, "kv_cache_gib": kv, "activations_gib": act, "total_gib": tot, "fits": fits,
                    "capacity_gib": cap, "profile": prof, "prefill_bound": BOUNDS[pb], "decode_bound": BOUNDS[db],
                    "source": SOURCES[src], **tail})
    return out


_FLOAT_COLUMNS = ("prefill_ms", "decode_ms", "weights_gib", "kv_cache_gib", "activations_gib", "total_gib")


def _group_texts(cfg, res: dict, grp) -> list[str]:
    """One group's predictions as JSON text, byte for byte what ``dumps(Prediction.to_dict())`` writes
    (json writes floats with ``float.__repr__`` and ints with ``int.__repr__``; the constant parts are
    written by ``dumps`` itself, once per group)."""
    from perfcast.ops.base import BOUNDS, SOURCES

    if not all(np.isfinite(res[k]).all() for k in _FLOAT_COLUMNS):  # dumps refuses these: let it say so
        return [dumps(d) for d in _group_dicts(cfg, res, grp)]
    head = f'{{"model": {dumps(cfg.model.name)}, "gpu": {dumps(cfg.gpu.id)}, "batch": '
    mid = (f', "tp": {dumps(cfg.tp)}, "pp": {dumps(cfg.pp)}, "dtype": {dumps(cfg.dtype)}, '
           f'"runtime": {dumps(cfg.runtime)}, "prefill_ms": ')
    tail = f', "capacity_gib": {dumps(res["capacity_gib"])}, "profile": {dumps(res["profile"])}, "prefill_bound": '
    end = (f', "prefill_err_p90_pct": {dumps(res["prefill_err_p90_pct"])}, '
           f'"decode_err_p90_pct": {dumps(res["decode_err_p90_pct"])}, '
           f'"accuracy_basis": {dumps(res["accuracy_basis"])}}}')
    bnd = [dumps(x) for x in BOUNDS]
    src_s = [dumps(x) for x in SOURCES]
    n = len(grp[0])
    floats = []
    for k in _FLOAT_COLUMNS:  # json writes a float as float.__repr__; a constant column (weights) once
        col = res[k]
        same = n and col[0] != 0 and (col == col[0]).all()  # (0.0 and -0.0 are equal, not alike)
        floats.append([repr(float(col[0]))] * n if same else list(map(repr, col.tolist())))
    fits = [("false", "true")[f] for f in res["fits"].tolist()]
    pb, db = [bnd[x] for x in res["prefill_bound"].tolist()], [bnd[x] for x in res["decode_bound"].tolist()]
    src = [src_s[x] for x in res["source"].tolist()]
    return [f'{head}{b}, "prompt": {p}, "context": {c}{mid}{pm}, "decode_ms": {dm}, "weights_gib": {w}, '
            f'"kv_cache_gib": {kv}, "activations_gib": {act}, "total_gib": {tot}, '
            f'"fits": {ft}{tail}{pbs}, "decode_bound": {dbs}, "source": {ss}{end}'
            for b, p, c, pm, dm, w, kv, act, tot, ft, pbs, dbs, ss in zip(grp[1], grp[2], grp[3], *floats, fits, pb,
                                                                          db, src)]


class _NoGC:
    """The cyclic garbage collector paused (the batch makes no cycles; its collections only walk the
    many short-lived line objects), and restored as it was."""

    def __enter__(self):
        import gc

        self.was = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc):
        import gc

        if self.was:
            gc.enable()


def predict_lines(lines: Iterable[str]) -> tuple[list[dict], bool]:
    """Predict each line; returns (output objects in order, all_ok)."""
    with _NoGC():
        plan = _Plan()
        plan.add(lines)
        outputs = plan.predict(_group_dicts)
    ok = all("error" not in o for o in outputs)
    return outputs, ok


def predict_lines_json(lines: Iterable[str], workers: int | None = 1) -> tuple[list[str], bool]:
    """``predict_lines`` written out: one JSON text per line, exactly ``dumps`` of each output object.
    ``workers=None``: as many processes as :func:`workers_for` says (the CLI's choice)."""
    with _NoGC():
        plan = _Plan()
        plan.add(lines)
        outputs = plan.predict(_group_texts, workers_for(len(plan.outputs)) if workers is None else workers)
    ok = True
    for i, o in enumerate(outputs):
        if type(o) is not str:
            ok = ok and "error" not in o
            outputs[i] = dumps(o)
    return outputs, ok


OP_KEYS = ("op", "gpu", "dtype", "profile")


def op_lines(lines: Iterable[str]) -> tuple[list[dict], bool]:
    """``perfcast op`` lines: each checked alone, then the cases of one kernel shape on one GPU and profile
    costed together over their sizes (costs are elementwise: the numbers of costing each alone)."""
    from perfcast.ops.predict import op_prediction, prepare_op
    from perfcast.step.costs import op_cost

    outputs: list = []
    todo = []  # (line, op name, gpu, op, profile)
    with _NoGC():
        for line in lines:
            obj, err = parse_line(line)
            outputs.append(err)
            if err:
                continue
            try:
                for k in ("op", "gpu"):
                    if obj.get(k) is None:
                        raise ValueError(f"missing field {k!r}")
                for k in OP_KEYS:
                    _str_or_none(k, obj.get(k))
                fields = {k: v for k, v in obj.items() if k not in OP_KEYS}
                g, o, prof = prepare_op(obj["op"], obj["gpu"], obj.get("dtype") or "bf16",
                                        obj.get("profile") or "auto", **fields)
                todo.append((len(outputs) - 1, obj["op"], g, o, prof))
            except Exception as e:
                outputs[-1] = _err(e if str(e) else e.__class__.__name__)
        groups: dict = {}
        for t in todo:
            key = _op_point_key(t[3])
            groups.setdefault(None if key is None else (id(t[2]), id(t[4]), key), []).append(t)
        for key, cases in groups.items():
            if key is not None and len(cases) > 1:
                try:
                    c = op_cost(_op_over_points([t[3] for t in cases]), cases[0][2], cases[0][4])
                    for j, (i, name, g, _, prof) in enumerate(cases):
                        outputs[i] = op_prediction(name, g, prof, c, j).to_dict()
                    continue
                except Exception:  # each case alone says what is wrong with it
                    pass
            for i, name, g, o, prof in cases:
                try:
                    outputs[i] = op_prediction(name, g, prof, op_cost(o, g, prof)).to_dict()
                except Exception as e:
                    outputs[i] = _err(e if str(e) else e.__class__.__name__)
    return outputs, all("error" not in o for o in outputs)


def _op_point_key(o):
    """What fixes a kernel's shape (all but its size fields), or None when it is costed alone (sizes that
    are not exact in float64)."""
    from perfcast.ops.predict import POINT_FIELDS

    pts = POINT_FIELDS.get(o.kind, ())
    if any(type(o.dims[k]) is not int or abs(o.dims[k]) > 1 << 53 for k in pts):
        return None
    return (o.kind, o.dtype, o.wdtype, tuple((k, type(v), v) for k, v in o.dims.items() if k not in pts))


def _op_over_points(ops):
    """One op whose size fields are float arrays of the given ops' sizes (the cost functions read every
    size as float64)."""
    from perfcast.ops.predict import POINT_FIELDS

    first = ops[0]
    dims = dict(first.dims)
    for k in POINT_FIELDS[first.kind]:
        dims[k] = np.array([o.dims[k] for o in ops], dtype=float)
    return type(first)(first.name, first.kind, dims, first.count, first.dtype, first.wdtype, first.group,
                       first.device, first.host_ops, first.meta)


def read_lines(path: str) -> list[str]:
    import sys

    if path == "-":
        data = sys.stdin.buffer.read()
    else:
        with open(path, "rb") as f:
            data = f.read()
    text = data.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln.removesuffix("\r") for ln in lines]


def emit_texts(texts: list[str], ok: bool):
    """Batch mode's output: the JSON texts, one per line, then exit 0 when every line succeeded, else 1.
    Everything is written and flushed first; leaving with ``os._exit`` skips tearing down every line's
    objects and the loaded profiles one by one (tens of ms after a large file); nothing of perfcast's
    runs at exit."""
    import os
    import sys

    out = sys.stdout
    out.write("\n".join(texts) + ("\n" if texts else ""))
    out.flush()
    sys.stderr.flush()
    os._exit(0 if ok else 1)


def dumps(obj: dict) -> str:
    return json.dumps(obj, allow_nan=False, default=_default)


def _default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
