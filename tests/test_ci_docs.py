"""docs/ci.md's Jetson workflow (a): the runner's kdc venv sees JetPack's tensorrt."""

from __future__ import annotations

from pathlib import Path

CI = Path(__file__).resolve().parents[1] / "docs" / "ci.md"


def test_the_runners_venv_sees_jetpacks_tensorrt():
    text = " ".join(CI.read_text(encoding="utf-8").split())
    assert "python3 -m venv --system-site-packages ~/kdc" in text
    assert "PYTHON=/usr/bin/python3 bash bench.sh" in text
