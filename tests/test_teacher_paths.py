"""A teacher given by a field that does not take it: a weights file or the model's Python file
as `teacher.path`, a folder as `teacher.weights`, a CNN built by code for a text task. One line
naming the config, the field and the field that does take it; `kdc validate` refuses it too."""

from __future__ import annotations

import pytest
from preflight_projects import config, one_line, runner, weights

from kdc.cli import app


def _refused(cfg) -> str:
    """The one line `kdc validate` prints, which `kdc compress` prints too."""
    line = one_line(runner.invoke(app, ["validate", str(cfg)]))
    assert line == one_line(runner.invoke(app, ["compress", str(cfg), "-q"])), line
    return line


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("teacher.safetensors", ("a weights file is teacher.weights", "teacher.entrypoint")),
        ("mynet.py", ("teacher.entrypoint: 'mynet:FUNCTION'",)),
        ("notes.txt", ("save_pretrained wrote", "teacher.weights")),
    ],
)
def test_a_file_as_teacher_path_names_the_field_that_takes_it(tmp_path, name, says):
    (tmp_path / name).touch(exist_ok=True)
    cfg = config(tmp_path, teacher={"entrypoint": None, "weights": None, "path": name})
    line = _refused(cfg)
    where = f"field 'teacher.path': {tmp_path / name} is a file"  # the path, as for a folder
    assert line.startswith(f"error: {cfg}: {where}"), line
    assert all(s in line for s in says) and "give its directory" not in line, line


def test_a_file_in_a_model_directory_as_teacher_path_names_the_directory(tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text("{}")
    (tmp_path / "bert" / "model.safetensors").touch()
    cfg = config(tmp_path, teacher={"entrypoint": None, "path": "bert/model.safetensors"})
    assert f"give its directory: {tmp_path / 'bert'}" in _refused(cfg)


def test_a_folder_as_teacher_weights_names_the_weights_file_in_it(tmp_path):
    (tmp_path / "ckpt").mkdir()
    weights(tmp_path / "ckpt" / "model.safetensors")
    cfg = config(tmp_path, teacher={"weights": "ckpt"})
    line = _refused(cfg)
    assert f"field 'teacher.weights': {tmp_path / 'ckpt'} is a directory" in line, line
    assert f"give the file: {tmp_path / 'ckpt' / 'model.safetensors'}" in line, line
    assert "not found" not in line, line


@pytest.mark.parametrize("task", ["text-classification", "sentence-embedding"])
def test_a_cnn_built_by_code_for_a_text_task_is_refused_before_any_data_is_read(tmp_path, task):
    """Not "the teacher failed on the first row of data.source" once the run has started."""
    cfg = config(tmp_path, task=task, data={"source": "d.csv"})
    (tmp_path / "d.csv").write_text("text,label\n" + "good film,pos\nbad film,neg\n" * 5)
    line = _refused(cfg)
    assert line.startswith(f"error: {cfg}: field 'teacher.entrypoint': task '{task}'"), line
    assert "save_pretrained" in line and "teacher.path" in line, line


def test_validate_counts_a_cnn_built_by_codes_outputs_against_the_classes(tmp_path):
    """A teacher trained for 3 classes, its weights matching its kwargs, on data of 10: refused
    as the channels its first conv takes are, built on PyTorch's meta device; the run would
    refuse it once it loaded it."""
    from safetensors.torch import save_file

    from kdc.models.cnn import small_cnn

    kwargs = {"num_classes": 3, "channels": [16, 32]}
    cfg = config(tmp_path, teacher={"kwargs": kwargs, "weights": "three.safetensors"})
    save_file(small_cnn(**kwargs).state_dict(), str(tmp_path / "three.safetensors"))
    line = one_line(runner.invoke(app, ["validate", str(cfg)]))
    assert line.startswith(f"error: {cfg}: field 'data.source': the teacher has 3 outputs"), line
    assert "the data has 10 classes" in line, line
    assert runner.invoke(app, ["validate", str(config(tmp_path))]).exit_code == 0  # 10 outputs
