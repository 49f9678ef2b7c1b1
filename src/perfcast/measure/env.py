"""Environment facts recorded in a profile's meta.json (GPU, clocks, driver, software, host)."""

from __future__ import annotations

import datetime
import platform
import re
import shlex
import socket
import subprocess
import sys

SMI_FIELDS = ("clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem", "power.limit", "temperature.gpu",
              "driver_version", "uuid")


def command_line() -> str:
    """The command that started this process (``python -m`` spelled out for module runs)."""
    argv = list(sys.argv)
    if argv and argv[0].replace("\\", "/").endswith("perfcast/measure/calibrate.py"):
        argv = ["python", "-m", "perfcast.measure.calibrate", *argv[1:]]
    return shlex.join(argv)


def gpu_id_guess(name: str, total_bytes: int) -> str:
    """A perfcast GPU id from the device name ('NVIDIA H100 80GB HBM3' -> 'h100-sxm')."""
    up = name.upper()
    if "H200" in up:
        return "h200-nvl" if "NVL" in up else "h200"
    sxm_like = "HBM3" in up or "SXM" in up or total_bytes > 79e9
    if "H100" in up and "PCIE" not in up and "NVL" not in up and sxm_like:
        return "h100-sxm"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower().replace("nvidia", "")).strip("-")
    return slug or "unknown-gpu"


def nvidia_smi(index: int = 0) -> dict:
    """Clocks, power limit, temperature and driver from nvidia-smi ({} when it is not available)."""
    try:
        r = subprocess.run(
            ["nvidia-smi", f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv,noheader,nounits", f"--id={index}"],
            capture_output=True, text=True, timeout=15, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    if r.returncode != 0 or not r.stdout.strip():
        return {}
    vals = [v.strip() for v in r.stdout.strip().splitlines()[0].split(",")]
    out = {}
    for k, v in zip(SMI_FIELDS, vals):
        try:
            out[k] = float(v)
        except ValueError:
            out[k] = v
    return out


def _smi_to_meta(smi: dict) -> dict:
    keys = {"clocks.sm": "sm_clock_mhz", "clocks.max.sm": "sm_clock_max_mhz", "clocks.mem": "mem_clock_mhz",
            "clocks.max.mem": "mem_clock_max_mhz", "power.limit": "power_limit_w",
            "temperature.gpu": "temperature_c"}
    return {new: smi[old] for old, new in keys.items() if old in smi}


def clocks_now(torch) -> dict:
    """Clocks and temperature now (meta.json keeps them at the start and at the end of a run)."""
    return _smi_to_meta(nvidia_smi(torch.cuda.current_device()))


def collect(torch, device: str = "cuda") -> dict:
    """Everything meta.json records about the machine and software (no timings)."""
    meta = {
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "python_version": platform.python_version(),
        "hostname": socket.gethostname(),
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command_line(),
        "device": device,
    }
    try:
        meta["cudnn_version"] = torch.backends.cudnn.version()
    except Exception:
        meta["cudnn_version"] = None
    if device != "cuda":
        meta.update(gpu_name=platform.processor() or platform.machine(), gpu_id="cpu", sm_count=0,
                    l2_bytes=0, total_memory_bytes=0, clocks={}, driver_version=None)
        return meta
    idx = torch.cuda.current_device()
    p = torch.cuda.get_device_properties(idx)
    smi = nvidia_smi(idx)
    meta.update(
        gpu_name=torch.cuda.get_device_name(idx),
        gpu_id=gpu_id_guess(p.name, int(p.total_memory)),
        compute_capability=f"{p.major}.{p.minor}",
        sm_count=int(p.multi_processor_count),
        l2_bytes=int(getattr(p, "L2_cache_size", 0) or 0),
        total_memory_bytes=int(p.total_memory),
        clocks=_smi_to_meta(smi),
        driver_version=smi.get("driver_version"),
        # which physical GPU: tells a re-measurement on the same chip from one on another of its kind
        gpu_uuid=smi.get("uuid"),
    )
    return meta


def sdpa_backend(torch, F) -> dict:
    """Which SDPA backend the default dispatch picks, read once from the profiler's kernel names."""
    out = {}
    cases = {"prefill": (1, 32, 8, 1024, 1024, True), "decode": (8, 32, 8, 1, 4096, False)}
    for label, (b, h, kvh, q_len, kv_len, causal) in cases.items():
        try:
            q = torch.randn(b, h, q_len, 128, dtype=torch.bfloat16, device="cuda")
            k = torch.randn(b, kvh, kv_len, 128, dtype=torch.bfloat16, device="cuda")
            v = torch.randn_like(k)

            def run(q=q, k=k, v=v, causal=causal):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)

            run()
            from perfcast.measure.timing import kernel_names

            names = kernel_names(torch, run)
            out[label] = classify_sdpa(names)
            out[f"{label}_kernels"] = sorted({n[:120] for n in names if "Memset" not in n})[:4]
        except Exception as e:
            out[label] = "unknown"
            out[f"{label}_error"] = str(e)[:200]
    return out


def classify_sdpa(kernel_names: list[str]) -> str:
    s = " ".join(kernel_names).lower()
    if "cudnn" in s:
        return "cudnn"
    if "flash" in s:
        return "flash"
    if "fmha" in s or "efficient" in s or "cutlass" in s:
        return "efficient"
    return "math" if s else "unknown"


def start_out_dir(torch, out):
    """Create the output folder ``out`` and write its meta.json (this machine's environment and the
    command line); returns the folder as a Path."""
    import json
    from pathlib import Path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = collect(torch)
    meta["command"] = command_line()
    (out / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    return out

