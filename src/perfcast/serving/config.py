"""A serving run's configuration: deployment, scheduler limits, workload and SLA (JSON or YAML).

Everything is validated here, with messages that say what would be valid, so that the simulator
itself never meets a bad value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

SCHEDULERS = ("vllm", "static", "hf-cb")
ROUTERS = ("least_loaded", "round_robin")
ARRIVALS = ("poisson", "gamma")
DISTS = ("fixed", "uniform", "lognormal")


class ConfigError(ValueError):
    """A configuration perfcast cannot simulate; the message says how to fix it."""


@dataclass(frozen=True)
class TokenDist:
    """Token counts per request: ``fixed`` (value), ``uniform`` (min..max inclusive) or ``lognormal``
    (arithmetic ``mean`` and log-space ``sigma``, clipped to ``min``..``max``)."""

    dist: str = "fixed"
    value: int = 0
    min: int = 1
    max: int = 0  # 0: the model's max_position_embeddings
    mean: float = 0.0
    sigma: float = 0.5

    @staticmethod
    def parse(name: str, v) -> TokenDist:
        if isinstance(v, bool) or v is None:
            raise ConfigError(f"workload.{name} must be a positive integer or an object such as "
                              f'{{"dist": "lognormal", "mean": 512, "sigma": 0.8}}, got {v!r}')
        if isinstance(v, (int, float)):
            return TokenDist("fixed", _posint(f"workload.{name}", v))
        if not isinstance(v, dict):
            raise ConfigError(f"workload.{name} must be an integer or an object, got {v!r}")
        d = dict(v)
        kind = d.pop("dist", "fixed")
        if kind not in DISTS:
            raise ConfigError(f"workload.{name}.dist {kind!r} is unknown; choose one of {', '.join(DISTS)}")
        _no_extra(f"workload.{name}", d, ("value", "min", "max", "mean", "sigma"))
        if kind == "fixed":
            return TokenDist("fixed", _posint(f"workload.{name}.value", d.get("value")))
        lo = _posint(f"workload.{name}.min", d.get("min", 1))
        hi = int(d.get("max", 0) or 0)
        if kind == "uniform":
            hi = _posint(f"workload.{name}.max", d.get("max"))
            if hi < lo:
                raise ConfigError(f"workload.{name}: max ({hi}) must be >= min ({lo})")
            return TokenDist("uniform", min=lo, max=hi)
        mean = float(d.get("mean", 0))
        if mean <= 0:
            raise ConfigError(f"workload.{name}.mean must be > 0 for a lognormal, got {d.get('mean')!r}")
        sigma = float(d.get("sigma", 0.5))
        if sigma < 0:
            raise ConfigError(f"workload.{name}.sigma must be >= 0, got {sigma}")
        return TokenDist("lognormal", min=lo, max=hi, mean=mean, sigma=sigma)


@dataclass(frozen=True)
class Workload:
    arrival: str = "poisson"
    rate_per_s: float = 1.0
    requests: int = 100
    input_tokens: TokenDist = field(default_factory=lambda: TokenDist("fixed", 512))
    output_tokens: TokenDist = field(default_factory=lambda: TokenDist("fixed", 128))
    seed: int = 0
    cv: float = 1.0  # gamma arrivals: coefficient of variation of the inter-arrival times
    trace: str | None = None  # CSV or JSONL with arrival_s, input_tokens, output_tokens
    # arrival times divided by this (not a config key: the service-time sensitivity runs, see
    # perfcast.serving.simulator.sensitivity, use it to stand for service times multiplied by it)
    arrival_speedup: float = 1.0

    @staticmethod
    def parse(d: dict, base: Path | None = None) -> Workload:
        if not isinstance(d, dict):
            raise ConfigError(f"workload must be an object, got {d!r}")
        if "trace" in d:
            _no_extra("workload", d, ("trace",))
            p = Path(d["trace"])
            if not p.is_absolute() and base is not None and not p.exists():
                p = base / p
            if not p.is_file():
                raise ConfigError(f"workload.trace {d['trace']!r} is not a file")
            return Workload(trace=str(p))
        _no_extra("workload", d, ("arrival", "rate_per_s", "requests", "input_tokens", "output_tokens",
                                  "seed", "cv"))
        arrival = d.get("arrival", "poisson")
        if arrival not in ARRIVALS:
            raise ConfigError(f"workload.arrival {arrival!r} is unknown; choose one of "
                              f"{', '.join(ARRIVALS)}, or give a trace")
        rate = float(d.get("rate_per_s", 0))
        if not rate > 0:
            raise ConfigError(f"workload.rate_per_s must be > 0, got {d.get('rate_per_s')!r}")
        cv = float(d.get("cv", 1.0))
        if not cv > 0:
            raise ConfigError(f"workload.cv must be > 0, got {cv}")
        return Workload(arrival, rate, _posint("workload.requests", d.get("requests", 100)),
                        TokenDist.parse("input_tokens", d.get("input_tokens", 512)),
                        TokenDist.parse("output_tokens", d.get("output_tokens", 128)),
                        int(d.get("seed", 0)), cv)


@dataclass(frozen=True)
class Disaggregated:
    prefill_replicas: int = 1
    decode_replicas: int = 1
    kv_link_gbps: float = 100.0  # link carrying one request's KV cache from prefill to decode, Gbit/s


@dataclass(frozen=True)
class IterationOverhead:
    """Host time an engine spends per iteration outside the model forward (scheduling, building the
    batch's index tensors, reading back the sampled tokens), as measured on a real engine:
    ``base_ms + per_seq_us * sequences + per_token_us * tokens + per_kv_token_us * kv_tokens``, where
    ``kv_tokens`` counts the cached tokens the iteration reads (0 when every sequence is a fresh
    prefill). Not overlapped with the GPU (a synchronous engine loop)."""

    base_ms: float = 0.0
    per_seq_us: float = 0.0
    per_token_us: float = 0.0
    per_kv_token_us: float = 0.0

    def seconds(self, seqs: int, tokens: int, kv_tokens: float) -> float:
        return self.base_ms * 1e-3 + (self.per_seq_us * seqs + self.per_token_us * tokens
                                      + self.per_kv_token_us * kv_tokens) * 1e-6

    @staticmethod
    def parse(v) -> IterationOverhead:
        keys = ("base_ms", "per_seq_us", "per_token_us", "per_kv_token_us")
        if not isinstance(v, dict):
            raise ConfigError(f"iteration_overhead must be an object with {', '.join(keys)}, got {v!r}")
        _no_extra("iteration_overhead", v, keys)
        vals = {}
        for k in keys:
            x = v.get(k, 0.0)
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not x >= 0:
                raise ConfigError(f"iteration_overhead.{k} must be a number >= 0, got {x!r}")
            vals[k] = float(x)
        return IterationOverhead(**vals)


@dataclass(frozen=True)
class SLA:
    ttft_ms: float | None = None
    tpot_ms: float | None = None


@dataclass(frozen=True)
class ServingConfig:
    """One deployment serving one workload. Field names are the config file's keys."""

    model: str
    gpu: str
    tp: int = 1
    pp: int = 1
    replicas: int = 1
    dtype: str = "bf16"
    kv_dtype: str | None = None
    wdtype: str | None = None
    runtime: str = "cuda-graph"
    profile: str = "auto"
    scheduler: str = "vllm"
    max_num_seqs: int = 256
    max_batched_tokens: int = 8192
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    kv_blocks: int | None = None  # override the memory model's KV capacity (blocks per replica)
    router: str = "least_loaded"
    disaggregated: Disaggregated | None = None
    workload: Workload = field(default_factory=Workload)
    sla: SLA | None = None
    # a real engine's calibration (see docs/serving.md): host time per iteration outside the
    # forward, and a factor on the eager runtime's host dispatch times (1: the GPU profile's own)
    iteration_overhead: IterationOverhead | None = None
    eager_host_scale: float = 1.0
    safety_margin: float | None = None  # hf-cb: share of KV blocks kept free from new prefills

    @property
    def gpus(self) -> int:
        n = self.disaggregated.prefill_replicas + self.disaggregated.decode_replicas \
            if self.disaggregated else self.replicas
        return n * self.tp * self.pp


def parse_config(d: dict, base: Path | None = None) -> ServingConfig:
    """Validate a config mapping (as read from JSON/YAML) into a :class:`ServingConfig`."""
    if not isinstance(d, dict):
        raise ConfigError("the config must be a JSON/YAML object (mapping)")
    names = [f.name for f in fields(ServingConfig)]
    _no_extra("config", d, names)
    for key in ("model", "gpu", "workload"):
        if key not in d:
            raise ConfigError(f"config needs {key!r}")
    kw = {k: v for k, v in d.items() if k not in ("workload", "disaggregated", "sla", "iteration_overhead")}
    for k in ("tp", "pp", "replicas", "max_num_seqs", "max_batched_tokens", "block_size"):
        if k in kw:
            kw[k] = _posint(k, kw[k])
    if kw.get("kv_blocks") is not None:
        kw["kv_blocks"] = _posint("kv_blocks", kw["kv_blocks"])
    util = float(kw.get("gpu_memory_utilization", 0.9))
    if not 0 < util <= 1:
        raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {util}")
    kw["gpu_memory_utilization"] = util
    if kw.get("scheduler", "vllm") not in SCHEDULERS:
        raise ConfigError(f"scheduler {kw['scheduler']!r} is unknown; choose one of {', '.join(SCHEDULERS)}")
    if kw.get("router", "least_loaded") not in ROUTERS:
        raise ConfigError(f"router {kw['router']!r} is unknown; choose one of {', '.join(ROUTERS)}")
    seqs, toks = kw.get("max_num_seqs", 256), kw.get("max_batched_tokens", 8192)
    if toks < seqs:
        raise ConfigError(f"max_batched_tokens ({toks}) must be >= max_num_seqs ({seqs}), as in vLLM: "
                          "every running sequence must fit one decode token in an iteration")
    scale = kw.get("eager_host_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ConfigError(f"eager_host_scale must be a number > 0, got {scale!r}")
    kw["eager_host_scale"] = float(scale)
    margin = kw.get("safety_margin")
    if margin is not None:
        if kw.get("scheduler", "vllm") != "hf-cb":
            raise ConfigError("safety_margin applies to scheduler 'hf-cb' only (transformers keeps that share "
                              "of the KV blocks free from new prefills)")
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1:
            raise ConfigError(f"safety_margin must be a number in [0, 1), got {margin!r}")
        kw["safety_margin"] = float(margin)
    over = d.get("iteration_overhead")
    over = None if over is None else IterationOverhead.parse(over)
    dis = d.get("disaggregated")
    if dis is not None:
        if not isinstance(dis, dict):
            raise ConfigError("disaggregated must be an object {prefill_replicas, decode_replicas, kv_link_gbps}")
        _no_extra("disaggregated", dis, ("prefill_replicas", "decode_replicas", "kv_link_gbps"))
        gbps = float(dis.get("kv_link_gbps", 100.0))
        if not gbps > 0:
            raise ConfigError(f"disaggregated.kv_link_gbps must be > 0, got {gbps}")
        dis = Disaggregated(_posint("disaggregated.prefill_replicas", dis.get("prefill_replicas", 1)),
                            _posint("disaggregated.decode_replicas", dis.get("decode_replicas", 1)), gbps)
        if kw.get("scheduler", "vllm") != "vllm":
            raise ConfigError("disaggregated serving needs scheduler 'vllm' (continuous batching)")
    sla = d.get("sla")
    if sla is not None:
        if not isinstance(sla, dict):
            raise ConfigError("sla must be an object {ttft_ms, tpot_ms}")
        _no_extra("sla", sla, ("ttft_ms", "tpot_ms"))
        sla = SLA(*(None if sla.get(k) is None else float(sla[k]) for k in ("ttft_ms", "tpot_ms")))
    return ServingConfig(**kw, disaggregated=dis, workload=Workload.parse(d["workload"], base), sla=sla,
                         iteration_overhead=over)


def load_config(path: str | Path) -> ServingConfig:
    """Read a JSON or YAML config file (YAML needs PyYAML)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(path)!r} not found")
    text = p.read_text()
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError("reading YAML needs PyYAML (pip install pyyaml), or write the config "
                              "as JSON") from None
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{p.name} is not valid YAML: {str(e).splitlines()[0]}") from None
    else:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p.name} is not valid JSON ({e}); YAML files need a .yaml suffix") from None
    return parse_config(d, p.parent)


def _posint(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or v < 1:
        raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def _no_extra(where: str, d: dict, allowed) -> None:
    extra = sorted(set(d) - set(allowed))
    if extra:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(extra)}; valid: {', '.join(allowed)}")
