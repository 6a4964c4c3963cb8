"""report.html renders in a real browser: headless Chromium screenshots the sample report (no
network; skipped where Chromium is not installed)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from kdc.deploy.report import write_report

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
SAMPLE = Path(__file__).parent.parent / "fixtures" / "report_sample.json"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1280,2000",
]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_html_renders_in_chromium(tmp_path):
    write_report(json.loads(SAMPLE.read_text()), tmp_path / "run")
    html, png = tmp_path / "run" / "report.html", tmp_path / "shot.png"
    subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={png}",
            html.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 2000)
    assert len(data) > 30_000  # a blank page of this size compresses to a few kB
    from matplotlib.image import imread

    inked = (imread(png)[..., :3] < 0.9).any(axis=-1).mean()
    assert inked > 0.03  # text, tables and the plot: not a blank or error page
