"""Fixtures shared by the `kdc check` tests (test_check.py, test_check_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "report_sample.json"


@pytest.fixture
def baseline() -> dict:
    """The sample report (tests/fixtures/report_sample.json) as a fresh dict."""
    return json.loads(SAMPLE.read_text())
