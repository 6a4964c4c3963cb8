"""A CNN student kdc saved (model.safetensors + kdc_model.json) is a teacher of its own:
`kdc init` on its directory writes `teacher.path`, the run loads it as the student it was
(pruned channels, dropped blocks), and a student of it keeps both runs' dropped blocks."""

from __future__ import annotations

import numpy as np
from tiny import cnn_config, write_yaml
from typer.testing import CliRunner

from kdc.cli import app
from kdc.compress.space import space_for
from kdc.compress.student import derive_student
from kdc.config import load_config, parse_config
from kdc.models import load_student, load_teacher, teacher_kind

runner = CliRunner()
IMAGES = {"pixel_values": np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)}


def _first_student(tmp_path):
    """A 2-stage CNN with a removable block per stage; its student drops stage 0's block and
    half of stage 1's channels, saved as the distill stage saves it."""
    cfg = parse_config(
        cnn_config(weights=None, teacher={"kwargs": {"channels": [16, 32], "depth": 2}}),
        base_dir=tmp_path,
    )
    teacher = load_teacher(cfg)
    space = space_for(teacher, IMAGES, 8)
    spec = space.decode({**space.largest(), "stage0_depth": 0, "stage1_width": 0.5}).spec
    student = derive_student(teacher, spec, IMAGES, 8)
    student.save(tmp_path / "student")
    return student


def test_kdc_init_and_the_run_take_a_kdc_cnn_student_as_the_teacher(tmp_path):
    first = _first_student(tmp_path)
    out = tmp_path / "again.yaml"
    res = runner.invoke(
        app, ["init", str(tmp_path / "student"), "--data", "sklearn:digits", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert "path: student" in text and "CHANGE" not in text and "entrypoint" not in text
    cfg = load_config(out)
    assert teacher_kind(cfg) == "kdc" and cfg.task == "image-classification"
    teacher = load_teacher(cfg)
    assert np.array_equal(teacher.forward_numpy(IMAGES), first.forward_numpy(IMAGES))
    assert runner.invoke(app, ["validate", str(out)]).exit_code == 0

    # a student of it drops stage 1's last block too, and loads back with both runs' gone
    space = space_for(teacher, IMAGES, 8)
    assert "stage0_depth" not in space.dims  # stage 0's only block went in the first run
    spec = space.decode({**space.largest(), "stage1_depth": space.dims["stage1_depth"][-2]}).spec
    second = derive_student(teacher, spec, IMAGES, 8)
    drop = second.source["drop"]
    assert drop[:3] == first.source["drop"] and len(set(drop)) == 6  # the first run's, then 3
    second.save(tmp_path / "second")
    loaded = load_student(tmp_path / "second")
    assert np.array_equal(loaded.forward_numpy(IMAGES), second.forward_numpy(IMAGES))


def test_a_kdc_teacher_directory_with_damaged_weights_is_one_line(tmp_path):
    _first_student(tmp_path)
    (tmp_path / "student" / "model.safetensors").write_bytes(b"\0" * 16)
    cfg = _kdc_config(tmp_path)
    res = runner.invoke(app, ["compress", str(cfg), "--out", str(tmp_path / "run"), "-q"])
    assert f"{cfg}: field 'teacher.path'" in _one_line(res)


def _kdc_config(tmp_path, teacher=None, **over):
    teacher = {"path": "student", "entrypoint": None, "kwargs": {}, **(teacher or {})}
    weights = teacher.pop("weights", None)  # cnn_config drops a teacher.weights of None
    return write_yaml(tmp_path / "m.yaml", cnn_config(weights=weights, teacher=teacher, **over))


def test_a_search_from_a_kdc_teacher_runs_without_the_untrained_teacher_warning(tmp_path):
    _first_student(tmp_path)
    search = {"strategy": "evolution", "population": 4, "cycles": 2, "batch_size": 32}
    cfg = _kdc_config(tmp_path, search=search, student={})
    res = runner.invoke(app, ["search", str(cfg), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert "teacher.weights is not set" not in res.output


def test_a_kdc_teacher_is_checked_by_validate(tmp_path):
    import json

    _first_student(tmp_path)
    line = _one_line(
        runner.invoke(
            app, ["validate", str(_kdc_config(tmp_path, {"weights": "student/model.safetensors"}))]
        )
    )
    assert "field 'teacher.weights'" in line and "remove teacher.weights" in line
    meta_file = tmp_path / "student" / "kdc_model.json"
    meta = json.loads(meta_file.read_text())
    meta["source"]["entrypoint"] = "nosuchmodule:build"
    meta_file.write_text(json.dumps(meta))
    line = _one_line(runner.invoke(app, ["validate", str(_kdc_config(tmp_path))]))
    assert "field 'teacher.path'" in line and "built by 'nosuchmodule:build'" in line, line


def _one_line(res) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]
