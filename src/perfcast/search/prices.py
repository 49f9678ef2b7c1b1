"""User price tables: $/GPU-hour by GPU, overriding the catalog's ``price_per_hour_usd``.

JSON: ``{"h100-sxm": 2.1, "a100-80gb": 1.2}``. CSV: columns ``gpu`` and ``price_per_hour_usd``.
GPU names may be any alias ``perfcast gpus`` knows.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path


def load_prices(path: str | Path) -> dict[str, float]:
    from perfcast.hardware import get_gpu

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"price file {str(path)!r} not found")
    if p.suffix.lower() == ".csv":
        with p.open() as f:
            rows = list(csv.DictReader(f))
        if not rows or "gpu" not in rows[0] or "price_per_hour_usd" not in rows[0]:
            raise ValueError(f"{p.name} needs the columns gpu and price_per_hour_usd")
        raw = {r["gpu"]: r["price_per_hour_usd"] for r in rows}
    else:
        try:
            raw = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p.name} is not JSON ({e}); give a JSON object or a CSV file") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{p.name} must hold an object {{gpu: price_per_hour_usd}}")
    out = {}
    for name, v in raw.items():
        try:
            price = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{p.name}: the price of {name!r} is not a number: {v!r}") from None
        if price < 0:
            raise ValueError(f"{p.name}: the price of {name!r} is negative")
        out[get_gpu(name).id] = price
    return out
