"""Explaining and showing predictions: ``perfcast explain``, ``perfcast report`` and ``perfcast ui``.

- :mod:`perfcast.report.explain`: one prediction taken apart (per op, per op family, memory, roofline);
  numpy only.
- :mod:`perfcast.report.tables` (rich) and :mod:`perfcast.report.plots` (matplotlib, extra ``plot``)
  print and draw an explanation.
- :mod:`perfcast.report.sweeps` and :mod:`perfcast.report.html`: the offline, self-contained HTML report.
- :mod:`perfcast.report.params` and :mod:`perfcast.report.web`: the local web UI (Flask, extra ``web``).
- ``static/``: the hand-written chart code, page templates and style; nothing is loaded from the internet.

Importing this package is free; :mod:`perfcast.report.cli` only registers the commands.
"""
