"""Long steps say how far they got: a bar on a terminal, lines in a log."""

from __future__ import annotations

import io
import re

import yaml
from rich.console import Console
from tiny import config_of, write_yaml

import kdc.models.hf
import kdc.progress
from kdc import api
from kdc.progress import progress


def test_a_log_gets_a_line_now_and_then_and_a_terminal_a_bar(monkeypatch):
    log = Console(file=io.StringIO(), width=200)
    with progress(log, "working", None) as advance:
        advance(3, total=10)  # within the interval: no line
    assert log.file.getvalue() == ""
    monkeypatch.setattr(kdc.progress, "LINE_EVERY_S", 0.0)
    with progress(log, "working", 10) as advance:
        advance(3)
        advance(0, epoch="1/2", loss=0.5)
        advance(7, total=20)
    lines = [re.sub(r" \(\d\d:\d\d:\d\d\)$", "", s) for s in log.file.getvalue().splitlines()]
    assert lines == [
        "  working: 3/10",
        "  working: 3/10 epoch=1/2 loss=0.5",
        "  working: 10/20 epoch=1/2 loss=0.5",
    ]
    terminal = Console(file=io.StringIO(), force_terminal=True, width=100)
    with progress(terminal, "working", 4) as advance:
        advance(4)
    drawn = terminal.file.getvalue()
    assert "working" in drawn and "\x1b[" in drawn  # a bar, drawn then cleared (transient)
    assert "working: 4/4" not in drawn  # not the log's lines


def test_distillation_and_verification_report_their_rows_and_batches(
    cnn_project, tmp_path, monkeypatch, capsys
):
    """The teacher's pass over the training rows, each batch of distillation, each evaluation
    of the eval split and each latency timing advance a progress report (here a log's lines,
    one per advance)."""
    cfg = yaml.safe_load(cnn_project.read_text())
    cfg["teacher"]["weights"] = str(cnn_project.parent / "teacher.safetensors")
    cfg["distill"]["epochs"] = 2
    monkeypatch.setattr(kdc.progress, "LINE_EVERY_S", 0.0)
    api.compress(write_yaml(tmp_path / "model.yaml", cfg), "host", tmp_path / "run")
    out = capsys.readouterr().out
    lines = {s.split(" (")[0].strip() for s in out.splitlines()}
    assert "teacher on the training rows: 600/600" in lines  # limit_train 600
    # 2 epochs of 9 batches (540 rows: 60 held out for validation)
    assert {f"distilling: {n}/18" for n in range(1, 19)} <= {s.split(" epoch")[0] for s in lines}
    assert any(s.startswith("distilling: 18/18 epoch=2/2 loss=") for s in lines)
    for graph in ("teacher.onnx", "model_fp32.onnx", "model_int8.onnx"):
        assert f"evaluating {graph}: 200/200" in lines  # limit_eval 200
    assert "timing latency: 9/9" in lines  # 3 models, 3 rounds


def test_encoding_a_whole_split_reports_its_rows(bert_project, tmp_path, monkeypatch, capsys):
    """Tokenizing every row of a split (30,000 rows took ~13 s) is a long step like the
    others: each chunk of rows tokenized advances its progress report; a few rows are not."""
    monkeypatch.setattr(kdc.models.hf, "ENCODE_ROWS", 128)
    monkeypatch.setattr(kdc.progress, "LINE_EVERY_S", 0.0)
    path = write_yaml(tmp_path / "model.yaml", config_of(bert_project))
    ctx = api.open_run(path, "host", tmp_path / "run")
    ctx.encode("train", 2)
    assert "encoding" not in capsys.readouterr().out  # a head of rows: no report
    ctx.encode("train")
    lines = [s.split(" (")[0].strip() for s in capsys.readouterr().out.splitlines()]
    assert lines == [f"encoding the train rows: {n}/400" for n in (128, 256, 384, 400)]
