"""report.md and report.json say what each figure is: the latency model of the predicted
column, no Pareto column nothing fills, the memory model of a predicted memory, and which wall
time `run.wall_s` is beside the real one of the command that wrote the report."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

from kdc.deploy.constraints import evaluate_constraints
from kdc.deploy.estimate import MEMORY_MODEL
from kdc.deploy.report import console_summary, render_markdown
from kdc.stages import verify
from kdc.stages.report import invocation

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "report_sample.json"


def _sample() -> dict:
    return json.loads(SAMPLE.read_text())


def _table_head(md: str, first: str) -> list[str]:
    """The header cells of the Markdown table whose first column is `first`."""
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {first} |"))
    return [c.strip() for c in line.strip("|").split(" | ")]


def test_the_predicted_latency_heading_names_its_model_as_the_console_does():
    report = _sample()
    head = _table_head(render_markdown(report), "model")
    assert "latency predicted (roofline-v1)" in head
    console = Console(record=True, width=250)
    console.print(console_summary(report))
    assert "latency predicted (roofline-v1)" in console.export_text()


def test_the_pareto_table_has_no_accuracy_column_the_search_never_fills():
    """The search scores candidates by the proxy alone: an accuracy column was always '–'."""
    head = _table_head(render_markdown(_sample()), "#")
    assert head == ["#", "architecture", "proxy", "predicted latency ms (roofline-v1)", "chosen"]


def test_a_predicted_memory_names_its_model_in_report_json_and_md(tmp_path, monkeypatch):
    monkeypatch.setattr(verify, "predict_memory_mb", lambda *a, **k: 41.0)
    monkeypatch.setattr(verify, "_shapes", lambda ctx: {"input_ids": [1, 16]})
    ctx = SimpleNamespace(cfg=SimpleNamespace(verify=SimpleNamespace(batch=4)))
    mem = verify._predicted_memory(ctx, tmp_path / "model.onnx", "int8")
    assert mem == {"kind": "predicted", "model": MEMORY_MODEL, "peak_mb": 41.0, "batch": 4}
    report = _sample()
    trt = next(e for e in report["engines"] if e["engine"] == "tensorrt")
    trt["memory"] = mem
    md = render_markdown(report)
    assert f"| 41.0 predicted ({MEMORY_MODEL}) at batch 4 |" in md
    rows = evaluate_constraints(report, {"max_memory_mb": 2048}, {})
    (memory,) = [r for r in rows if r["name"] == "memory_mb"]
    assert (
        memory["source"] == "predicted"
        and f"predicted peak_mb ({MEMORY_MODEL})" in (memory["note"])
    )


def test_run_wall_s_says_it_is_the_stages_sum_beside_the_commands_own():
    ctx = SimpleNamespace(started=time.perf_counter() - 3.0, ran=["verify"])
    inv = invocation(ctx, "report")
    assert inv["wall_s"] >= 3.0 and inv["stages_run"] == ["verify", "report"]
    assert "stages it did not run took it no time" in inv["wall_s_is"]
    assert invocation(SimpleNamespace(started=None, ran=[]), "report")["wall_s"] is None
    report = _sample()
    report["run"]["invocation"] = inv
    header = next(ln for ln in render_markdown(report).splitlines() if "wall time" in ln)
    assert header.endswith(
        f"wall time 612.4 s (sum of its stages), this command {inv['wall_s']:.1f} s to its "
        "report (ran verify, report)"
    )
