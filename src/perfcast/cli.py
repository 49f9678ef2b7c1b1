"""Command line: parse, call the API, print. Nothing here computes a prediction."""

from __future__ import annotations

import json
import sys

import click

from perfcast import __version__


class UserError(click.ClickException):
    """One-line message on stderr, exit 1, no traceback."""

    def show(self, file=None):
        click.echo(f"perfcast: error: {self.message}", err=True)


def _fail(e: Exception):
    msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
    raise UserError(msg)


def _console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def _table(title: str, columns: list[str], rows: list[list]):
    from rich.table import Table

    t = Table(title=title, show_lines=False)
    for c in columns:
        t.add_column(c, justify="right" if c not in ("name", "op", "id", "model", "bound", "source",
                                                     "phase", "kind", "aliases", "gpu") else "left")
    for r in rows:
        t.add_row(*[_fmt(x) for x in r])
    _console().print(t)


def _fmt(x) -> str:
    if isinstance(x, float):
        if x == 0:
            return "0"
        return f"{x:.4g}" if abs(x) < 1e5 else f"{x:.3e}"
    return str(x)


def _run_cases(path: str, predict_lines, as_json: bool):
    """Batch mode: read the JSON Lines, predict them; with --json print them per the contract and exit."""
    from perfcast.batch import read_lines

    try:
        lines = read_lines(path)
    except OSError as e:
        _fail(e)
    outputs, ok = predict_lines(lines)
    if as_json:
        _emit_lines(outputs, ok)
    return outputs, ok


def _emit_lines(outputs, ok: bool):
    from perfcast.batch import dumps

    _emit_texts([dumps(o) for o in outputs], ok)


def _emit_texts(texts: list[str], ok: bool):
    from perfcast.batch import emit_texts

    emit_texts(texts, ok)


# Each feature package adds its commands through a light ``cli`` module with ``register(main)``;
# those modules import their heavy parts inside the command functions. They are imported only when
# one of their commands runs or the command list is shown (``perfcast predict`` never needs them).
_EXTENSIONS = {"perfcast.serving.cli": ("simulate", "search"), "perfcast.offload.cli": ("offload", "calibrate-cpu"),
               "perfcast.report.cli": ("explain", "report", "ui")}


class _Main(click.Group):
    """The command group, with the extension commands registered on first use."""

    def _load(self, module: str):
        loaded = self.__dict__.setdefault("_loaded", set())
        if module in loaded:
            return
        loaded.add(module)
        import importlib

        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                return
            raise
        mod.register(self)

    def list_commands(self, ctx):
        for module in _EXTENSIONS:
            self._load(module)
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        if name not in self.commands:
            owners = [m for m, names in _EXTENSIONS.items() if name in names]
            for module in owners or _EXTENSIONS:  # an unknown name loads them all (for "did you mean")
                self._load(module)
        return super().get_command(ctx, name)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="perfcast")
def main():
    """perfcast: predict LLM inference speed, memory and the binding resource on GPUs you may not have."""


# ----------------------------------------------------------------------------- predict
@main.command()
@click.option("--cases", type=str, default=None, help="JSON Lines file of cases ('-' = stdin).")
@click.option("--model", type=str, help="Shipped model id (`perfcast models`) or a path to config.json.")
@click.option("--gpu", type=str, help="GPU id or alias (`perfcast gpus`).")
@click.option("--batch", type=int, default=1, show_default=True)
@click.option("--prompt", type=int, default=512, show_default=True, help="Prompt tokens per sequence (prefill).")
@click.option("--context", type=int, default=None, help="KV-cache tokens per sequence at decode [default: prompt].")
@click.option("--tp", type=int, default=1, show_default=True)
@click.option("--pp", type=int, default=1, show_default=True)
@click.option("--microbatches", type=int, default=None,
              help="Pipeline: also split the batch into this many equal micro-batches (GPipe) and show each "
                   "stage, the send/recv, the bubble and throughput (single-shot only).")
@click.option("--ep", type=int, default=1, show_default=True, help="MoE: experts split over this many of the tp GPUs.")
@click.option("--moe-imbalance", type=float, default=1.0, show_default=True,
              help="MoE: tokens of the busiest expert GPU over the uniform share.")
@click.option("--dtype", type=str, default="bf16", show_default=True)
@click.option("--kv-dtype", type=str, default=None, help="KV-cache dtype [default: dtype].")
@click.option("--wdtype", type=str, default=None, help="Weight dtype for weight-only quantization.")
@click.option("--runtime", type=str, default="cuda-graph", show_default=True, help="cuda-graph or eager.")
@click.option("--profile", type=str, default="auto", show_default=True, help="auto, none, or a calibrated profile dir.")
@click.option("--breakdown", is_flag=True, help="Per-op breakdown.")
@click.option("--offload", type=str, default=None,
              help='CPU-GPU placement as JSON, e.g. \'{"plan": "layers", "gpu_layers": 20}\' (see docs/offload.md).')
@click.option("--cpu", type=str, default=None, help="Host CPU for --offload (catalog id or calibrated profile dir).")
@click.option("--cpu-threads", type=int, default=None, help="CPU threads for offloaded ops [default: all cores].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the batch-mode object).")
def predict(cases, model, gpu, batch, prompt, context, tp, pp, microbatches, ep, moe_imbalance, dtype, kv_dtype,
            wdtype, runtime, profile, breakdown, offload, cpu, cpu_threads, as_json):
    """Predict one step: prefill (TTFT) and decode (TPOT), memory per GPU, and what binds."""
    if microbatches is not None and (cases is not None or offload is not None):
        raise UserError("--microbatches is single-shot only and does not combine with --cases or --offload")
    if cases is not None:
        from perfcast.batch import predict_lines, predict_lines_json

        if as_json:  # the JSON text of each line straight from the batch reader (no dict round trip)
            texts, ok = _run_cases(cases, lambda lines: predict_lines_json(lines, workers=None), False)
            _emit_texts(texts, ok)
        outputs, ok = _run_cases(cases, predict_lines, as_json)
        _print_predictions(outputs)
        sys.exit(0 if ok else 1)
    if not model or not gpu:
        raise UserError("--model and --gpu are required (or --cases FILE)")
    if offload is not None:
        _predict_offload(model, gpu, batch, prompt, prompt if context is None else context, tp, pp, dtype,
                         runtime, profile, offload, cpu, cpu_threads, as_json,
                         {"kv_dtype": kv_dtype, "wdtype": wdtype, "ep": ep, "moe_imbalance": moe_imbalance})
        return
    from perfcast.step.predict import predict as api_predict

    ctx = prompt if context is None else context
    try:
        p = api_predict(model, gpu, batch, prompt, ctx, tp, pp, dtype,
                        runtime, profile, breakdown, kv_dtype, wdtype, ep, moe_imbalance)
        pipe = None
        if microbatches is not None:
            from perfcast.step.pipeline import pipeline

            pipe = {ph: pipeline(model, gpu, batch, prompt, ctx, tp, pp, microbatches, ph, dtype, runtime, profile,
                                 kv_dtype, wdtype, ep, moe_imbalance).to_dict() for ph in ("prefill", "decode")}
    except Exception as e:
        _fail(e)
    if as_json:
        from perfcast.batch import dumps

        out = p.to_dict(breakdown=breakdown)
        if pipe is not None:
            out["pipeline"] = pipe
        click.echo(dumps(out))
        return
    _print_predictions([p.to_dict()])
    if pipe is not None:
        _print_pipeline(pipe)
    if breakdown:
        rows = []
        for phase in ("prefill", "decode"):
            ph = [r for r in p.breakdown if r["phase"] == phase]
            rows += [[r["phase"], r["name"], r["count"], r["ms"], 100 * r["share"], r["bound"], r["source"]] for r in ph]
            total = getattr(p, f"{phase}_ms")
            rest = total - sum(r["ms"] for r in ph)  # in-graph gaps and graph launch, or host time not hidden
            if total > 0 and rest > 1e-3 * total:
                rows.append([phase, "(outside ops)", "", rest, 100 * rest / total, "launch" if runtime == "cuda-graph"
                             else "host", "measured"])
        _table("per-op breakdown (ms per step = count x per launch; outside ops: gaps between kernels, "
               "graph launch, or host time the GPU waits on)",
               ["phase", "name", "count", "ms", "share %", "bound", "source"], rows)


def _print_pipeline(pipe: dict):
    rows = []
    for ph, d in pipe.items():
        for st in d["stages"]:
            rows.append([ph, st["stage"], f"{st['layers'][0]}-{st['layers'][1] - 1}", st["ms"], st["gpu_ms"],
                         st["host_ms"], st["send_ms"], st["cycle_ms"]])
    _table(f"pipeline stages (one micro-batch of {next(iter(pipe.values()))['microbatch_size']} sequences)",
           ["phase", "stage", "layers", "ms", "gpu ms", "host ms", "send ms", "cycle ms"], rows)
    rows = [[ph, d["microbatches"], d["latency_ms"], d["total_ms"], d["tokens_per_s"], 100 * d["bubble_fraction"],
             d["bottleneck_stage"]] for ph, d in pipe.items()]
    _table("pipeline (GPipe forward-only)", ["phase", "micro-batches", "latency ms", "total ms", "tokens/s",
                                            "bubble %", "bottleneck stage"], rows)


def _predict_offload(model, gpu, batch, prompt, context, tp, pp, dtype, runtime, profile, offload, cpu,
                     cpu_threads, as_json, extra: dict):
    """Single-shot form of a batch line with an ``offload`` field (same validation, same output)."""
    from perfcast.batch import dumps, predict_lines

    try:
        plan = json.loads(offload)
    except json.JSONDecodeError as e:
        raise UserError(f"--offload must be a JSON object such as '{{\"plan\": \"layers\", \"gpu_layers\": 20}}' ({e})") from None
    line = {"model": model, "gpu": gpu, "batch": batch, "prompt": prompt, "context": context, "tp": tp, "pp": pp,
            "dtype": dtype, "runtime": runtime, "profile": profile, "offload": plan,
            **{k: v for k, v in extra.items() if v is not None}}
    if cpu is not None:
        line["cpu"] = cpu
    if cpu_threads is not None:
        line["cpu_threads"] = cpu_threads
    out, ok = predict_lines([json.dumps(line)])
    if not ok:
        raise UserError(out[0]["error"])
    if as_json:
        click.echo(dumps(out[0]))
        return
    _print_predictions(out)
    details = out[0].get("offload", {})
    if details:
        click.echo(json.dumps(details, indent=1, default=str))


def _print_predictions(outs: list[dict]):
    rows = []
    for o in outs:
        if "error" in o:
            rows.append(["error", o["error"]] + [""] * 9)
            continue
        err = "/".join("–" if o.get(k) is None else f"±{o[k]:.0f}%"
                       for k in ("prefill_err_p90_pct", "decode_err_p90_pct"))
        rows.append([o["model"], o["gpu"], f"b{o['batch']} p{o['prompt']} c{o['context']} tp{o['tp']} pp{o['pp']}",
                     o["prefill_ms"], o["decode_ms"], err, f"{o['prefill_bound']}/{o['decode_bound']}",
                     o["total_gib"], "yes" if o["fits"] else "NO", o["source"], o["profile"]])
    _table("perfcast predict", ["model", "gpu", "case", "prefill ms", "decode ms", "p90 err (pre/dec)",
                                "bound (pre/dec)", "GiB/GPU", "fits", "source", "profile"], rows)


# ----------------------------------------------------------------------------- op
@main.command()
@click.option("--cases", type=str, default=None, help="JSON Lines file of ops ('-' = stdin).")
@click.option("--op", "op_name", type=str, help="gemm, attention, rmsnorm, all_reduce, ...")
@click.option("--gpu", type=str)
@click.option("--dtype", type=str, default="bf16", show_default=True)
@click.option("--profile", type=str, default="auto", show_default=True)
@click.option("--m", type=int)
@click.option("--n", type=int)
@click.option("--k", type=int)
@click.option("--batch", type=int)
@click.option("--heads", type=int)
@click.option("--kv-heads", type=int)
@click.option("--head-dim", type=int)
@click.option("--q-len", type=int)
@click.option("--kv-len", type=int)
@click.option("--causal/--no-causal", default=None)
@click.option("--window", type=int)
@click.option("--tokens", type=int)
@click.option("--hidden", type=int)
@click.option("--bytes", "nbytes", type=int)
@click.option("--gpus", type=int)
@click.option("--json", "as_json", is_flag=True)
def op(cases, op_name, gpu, dtype, profile, as_json, nbytes, **fields):
    """Predict one kernel: time, bound and provenance."""
    if cases is not None:
        from perfcast.batch import op_lines

        outputs, ok = _run_cases(cases, op_lines, as_json)
        _emit_texts([json.dumps(o) for o in outputs], ok)
    if not op_name or not gpu:
        raise UserError("--op and --gpu are required (or --cases FILE)")
    from perfcast.ops.predict import predict_op

    f = {k: v for k, v in fields.items() if v is not None}
    if nbytes is not None:
        f["bytes"] = nbytes
    try:
        r = predict_op(op_name, gpu, dtype, profile, **f)
    except Exception as e:
        _fail(e)
    d = r.to_dict()
    if as_json:
        click.echo(json.dumps(d))
        return
    _table(f"perfcast op {op_name}", list(d), [list(d.values())])


# ----------------------------------------------------------------------------- catalogs
@main.command()
@click.option("--json", "as_json", is_flag=True)
def gpus(as_json):
    """List the GPU catalog with aliases and datasheet figures."""
    from perfcast.hardware import list_gpus
    from perfcast.profiles.registry import shipped_profiles

    measured = set(shipped_profiles())
    rows = []
    for g in list_gpus():
        rows.append({"id": g.id, "name": g.name, "bf16_tflops": g.peak_flops.get("bf16", 0) / 1e12,
                     "mem_gib": g.mem_capacity_bytes / 2**30, "mem_tbps": g.mem_bw_bytes_per_s / 1e12,
                     "sms": g.sm_count, "profile": "measured" if g.id in measured else "learned",
                     "aliases": ", ".join(g.aliases)})
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    _table("GPUs", list(rows[0]), [list(r.values()) for r in rows])


@main.command()
@click.option("--json", "as_json", is_flag=True)
def cpus(as_json):
    """List the CPU catalog (hosts for offload)."""
    from perfcast.hardware import list_cpus

    rows = [{"id": c.id, "name": c.name, "cores": c.cores, "simd": c.simd,
             "mem_gbps": c.mem_bw_bytes_per_s / 1e9, "aliases": ", ".join(c.aliases)} for c in list_cpus()]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    _table("CPUs", list(rows[0]) if rows else ["id"], [list(r.values()) for r in rows])


@main.command()
@click.option("--json", "as_json", is_flag=True)
def models(as_json):
    """List the model configs that ship with perfcast."""
    import warnings

    from perfcast.models import get_model, list_models

    rows = []
    for mid in list_models():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = get_model(mid)
        rows.append({"id": mid, "type": s.model_type, "params_b": s.total_params() / 1e9, "layers": s.n_layers,
                     "hidden": s.hidden, "heads": s.n_heads, "kv_heads": s.n_kv_heads,
                     "experts": s.n_experts, "max_pos": s.max_positions})
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    _table("models", list(rows[0]), [list(r.values()) for r in rows])


@main.command()
@click.option("--model", required=True)
@click.option("--gpu", required=True)
@click.option("--context", type=int, default=4096, show_default=True)
@click.option("--batch", type=int, default=None, help="Give a batch to get the longest context instead.")
@click.option("--tp", type=int, default=1)
@click.option("--pp", type=int, default=1)
@click.option("--dtype", default="bf16")
@click.option("--kv-dtype", default=None)
@click.option("--json", "as_json", is_flag=True)
def capacity(model, gpu, context, batch, tp, pp, dtype, kv_dtype, as_json):
    """The largest batch at a context, or the longest context at a batch, that fits."""
    from perfcast.step.memory import max_batch, max_context
    from perfcast.step.predict import make_config

    try:
        cfg = make_config(model, gpu, tp, pp, dtype)
        kvd = kv_dtype or ("bf16" if dtype in ("int4", "int8", "fp8") else dtype)
        if batch is not None:
            r = {"batch": batch, "max_context": max_context(cfg.model, cfg.gpu, batch, tp, pp, dtype, kvd)}
        else:
            r = {"context": context, "max_batch": max_batch(cfg.model, cfg.gpu, context, None, tp, pp, dtype, kvd)}
    except Exception as e:
        _fail(e)
    click.echo(json.dumps(r) if as_json else " ".join(f"{k}={v}" for k, v in r.items()))


# ----------------------------------------------------------------------------- GPU-side tools
@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def calibrate(ctx):
    """Measure this machine's GPU kernels into a profile directory (needs perfcast[gpu]).

    perfcast calibrate --out DIR [--power] [--fp8] [--quick] [--heldout] [--only FAMILIES] ...; the options
    are the harness's: `python -m perfcast.measure.calibrate --help` lists them (--power also fits the
    power cap, power.json; --fp8 times the FP8 GEMM grid, and with --power fits its cap). With --cpu,
    measure the host CPU instead (GEMV/GEMM, bandwidth, PCIe) for offload predictions."""
    args = list(ctx.args)
    if "--cpu" in args:
        args.remove("--cpu")
        from perfcast.measure import cpu_calibrate

        sys.exit(cpu_calibrate.main(args) or 0)
    try:
        from perfcast.measure import calibrate as cal
    except ImportError as e:
        _fail(RuntimeError(f"calibration needs torch with CUDA: pip install 'perfcast[gpu]' ({e})"))
    sys.exit(cal.main(args) or 0)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def measure(ctx):
    """Time a real model step on this GPU and compare with the prediction (needs perfcast[gpu])."""
    try:
        from perfcast.measure import model_step
    except ImportError as e:
        _fail(RuntimeError(f"measuring needs torch with CUDA: pip install 'perfcast[gpu]' ({e})"))
    sys.exit(model_step.main(list(ctx.args)) or 0)


@main.command("profile-step", add_help_option=False,
              context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def profile_step(ctx):
    """Profile a real model step kernel by kernel on this GPU and set it beside the per-op prediction
    (needs perfcast[gpu])."""
    from perfcast.measure import step_profile

    sys.exit(step_profile.main(list(ctx.args)) or 0)


if __name__ == "__main__":
    main()
