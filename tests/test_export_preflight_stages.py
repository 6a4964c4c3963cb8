"""The teacher's export check (`preflight_export.check_onnx_export`) runs before an invocation's
first stage only where that stage comes before export: from export on, the export stage has run
or says the same itself."""

from __future__ import annotations

import dataclasses

import yaml
from tiny import write_yaml

from kdc import api, pipeline, preflight_export
from kdc.pipeline import StageOutput


def test_a_resume_from_build_skips_the_export_check_a_fresh_run_makes(
    cnn_project, tmp_path, monkeypatch
):
    ran: list[str] = []

    def fake(ctx: pipeline.Context, name: str) -> StageOutput:  # a stage in no time
        ran.append(name)
        out = ctx.run / name / "out.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(name)
        return StageOutput([out])

    stages = [dataclasses.replace(s, fn=lambda c, n=s.name: fake(c, n)) for s in pipeline._stages()]
    monkeypatch.setattr(pipeline, "_stages", lambda: stages)
    checked: list[tuple] = []
    monkeypatch.setattr(preflight_export, "check_onnx_export", lambda *a: checked.append(a))
    cfg = yaml.safe_load(cnn_project.read_text())
    cfg["teacher"]["weights"] = str(cnn_project.parent / cfg["teacher"]["weights"])
    path, run = write_yaml(tmp_path / "model.yaml", cfg), tmp_path / "run"
    api.compress(path, "host", run, quiet=True)
    assert len(checked) == 1 and ran == list(pipeline.STAGE_NAMES)  # fresh: before its search

    def refused(*args: object) -> None:
        raise AssertionError("the export check ran on a resume from build")

    monkeypatch.setattr(preflight_export, "check_onnx_export", refused)
    cfg["quantize"]["calibration_size"] = 32  # read by build alone
    ran.clear()
    api.compress(write_yaml(path, cfg), "host", run, resume=True, quiet=True)
    assert ran[0] == "build"  # its first stage (verify skipped: the same fake outputs)
