"""The console script's fast path for `perfcast predict --cases FILE --json` prints exactly what the
click command prints, errors and exit codes included."""

import subprocess
import sys

import pytest

from perfcast._entry import _batch_json_path

LINES = [
    '{"model": "meta-llama/Llama-3.1-8B", "gpu": "h100", "batch": 8, "prompt": 1024, "context": 2048}',
    "not json",
    '{"model": "meta-llama/Llama-3.1-70B", "gpu": "h200", "tp": 4, "batch": 16, "prompt": 512, "context": 512}',
    '{"model": "meta-llama/Llama-3.1-8B", "gpu": "h100", "batch": 0, "prompt": 1, "context": 1}',
]


def run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)


@pytest.mark.parametrize("order", [("--cases", "F", "--json"), ("--json", "--cases", "F")])
def test_fast_path_equals_the_click_command(tmp_path, order):
    f = tmp_path / "cases.jsonl"
    f.write_text("\n".join(LINES) + "\n")
    args = ["predict", *[str(f) if a == "F" else a for a in order]]
    fast, slow = run("perfcast", *args), run("perfcast.cli", *args)
    assert fast.stdout == slow.stdout and fast.returncode == slow.returncode == 1
    assert len(fast.stdout.splitlines()) == 4 and '"error"' in fast.stdout.splitlines()[1]


def test_missing_file_and_other_commands_go_through_click(tmp_path):
    r = run("perfcast", "predict", "--cases", str(tmp_path / "nope.jsonl"), "--json")
    assert r.returncode == 1 and r.stdout == "" and r.stderr.startswith("perfcast: error:")
    assert run("perfcast", "--help").returncode == 0


def test_only_the_exact_batch_command_is_taken():
    assert _batch_json_path(["predict", "--cases", "f", "--json"]) == "f"
    assert _batch_json_path(["predict", "--json", "--cases", "f"]) == "f"
    assert _batch_json_path(["predict", "--cases", "f"]) is None  # table output: click
    assert _batch_json_path(["op", "--cases", "f", "--json"]) is None
    assert _batch_json_path(["predict", "--cases", "f", "--json", "--breakdown"]) is None


def test_op_cases_with_overflowing_sizes_print_an_error_line(tmp_path):
    f = tmp_path / "ops.jsonl"
    f.write_text('{"op": "gemm", "gpu": "h100", "m": 1e305, "n": 4096000, "k": 4096}\n'
                 '{"op": "gemm", "gpu": "h100", "m": 16, "n": 4096, "k": 4096}\n')
    r = run("perfcast.cli", "op", "--cases", str(f), "--json")
    out = r.stdout.splitlines()
    assert r.returncode == 1 and len(out) == 2
    assert "too large" in out[0] and '"ms"' in out[1]


def test_table_cache_key_follows_the_interpolation_code(tmp_path, monkeypatch):
    from pathlib import Path

    import perfcast.profiles.interp as interp
    from perfcast.profiles import measured

    monkeypatch.setenv("PERFCAST_CACHE_DIR", str(tmp_path))
    prof = Path(measured.__file__).parent / "data" / "h100-sxm"
    k1 = measured._disk_cache_path(str(prof), "h100-sxm")
    fake = tmp_path / "interp.py"
    fake.write_text(Path(interp.__file__).read_text() + "\n# changed\n")
    monkeypatch.setattr(interp, "__file__", str(fake))
    assert measured._disk_cache_path(str(prof), "h100-sxm") != k1
