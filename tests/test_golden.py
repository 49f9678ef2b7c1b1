"""Tier 2: whole predictions against a snapshot. A change here must be on purpose:
rerun `python tests/golden/regen.py` and say why in the commit."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "golden"))
from regen import compute

pytestmark = pytest.mark.golden
GOLDEN = json.loads((Path(__file__).parent / "golden" / "predictions.json").read_text())


def test_predictions_match_snapshot():
    now = compute()
    assert len(now) == len(GOLDEN)
    for got, want in zip(now, GOLDEN):
        assert got["case"] == want["case"]
        for k, v in want.items():
            if isinstance(v, float):
                assert got[k] == pytest.approx(v, rel=1e-9), (want["case"], k)
            else:
                assert got[k] == v, (want["case"], k)
