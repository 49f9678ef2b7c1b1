"""The ``perfcast`` console script. ``perfcast predict --cases FILE --json`` (what batch pipelines run,
thousands of lines at a time) goes straight to the batch reader without importing click; every other
command line, and any batch call that fails before writing (a missing file, say), goes through
:mod:`perfcast.cli`, which prints the same output and errors."""

from __future__ import annotations

import sys


def _batch_json_path(argv: list[str]) -> str | None:
    """FILE when ``argv`` is exactly ``predict --cases FILE --json`` (options in either order)."""
    if len(argv) != 4 or argv[0] != "predict":
        return None
    rest = argv[1:]
    if rest[0] == "--json" and rest[1] == "--cases":
        return rest[2]
    if rest[0] == "--cases" and rest[2] == "--json":
        return rest[1]
    return None


def main() -> None:
    path = _batch_json_path(sys.argv[1:])
    if path is not None and (path == "-" or not path.startswith("-")):
        from perfcast.batch import emit_texts, predict_lines_json, read_lines

        try:
            lines = read_lines(path)
        except OSError:
            lines = None  # the click path below prints the contract's error message
        if lines is not None:
            emit_texts(*predict_lines_json(lines, workers=None))
    from perfcast.cli import main as cli_main

    cli_main()
