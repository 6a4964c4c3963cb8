"""Image teachers as users bring them: torchvision/timm's `forward(x)` and models returning
(logits, features) run as kdc calls image models; errors in the user's code are one line; an
entrypoint beside the config is imported afresh and hashed, so an edit re-runs stages."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from tiny import cnn_config, write_yaml
from typer.testing import CliRunner

from kdc import api
from kdc.cli import app
from kdc.config import load_config
from kdc.data import load_dataset
from kdc.fingerprint import inputs_fingerprint
from kdc.models import load_teacher

runner = CliRunner()

NET = """
import torch
from torch import nn


class Net(nn.Module):  # torchvision's convention: forward(x)
    def __init__(self, num_classes=10, width=WIDTH):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        )
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x, **kwargs):  # **kwargs: still takes the image positionally
        f = self.features(x).flatten(1)
        return self.fc(f), f  # (logits, features), as some models return


def build(num_classes=10):
    return Net(num_classes)


def boom():
    raise ValueError("no checkpoint here")


class Unlabelled(nn.Module):
    def forward(self, x):
        return {"image": x}  # no logits in what it returns


def unlabelled():
    return Unlabelled()


class OneRow(Net):
    def forward(self, x):
        return self.fc(self.features(x).reshape(1, -1))  # one image's features, never a batch's


def one_row():
    return OneRow()


class Spectral(Net):
    def forward(self, x):
        return self.fc(torch.fft.rfft2(self.features[0](x)).abs().mean((2, 3)))


def spectral():
    return Spectral()


class WideSpectral(Spectral):  # 5.3 M parameters: past the 5 M a teacher was checked up to
    def __init__(self):
        super().__init__()
        self.wide = nn.Sequential(nn.Linear(WIDTH, 2300), nn.Linear(2300, 2300))
        self.fc = nn.Linear(2300, 10)

    def forward(self, x):
        return self.fc(self.wide(torch.fft.rfft2(self.features[0](x)).abs().mean((2, 3))))


def wide_spectral():
    return WideSpectral()
"""


def _project(tmp_path, module: str, width: int = 8, entry: str = "build"):
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(NET.replace("WIDTH", str(width))))
    cfg = cnn_config(weights=None, distill={"epochs": 1})
    cfg["teacher"] = {"entrypoint": f"{module}:{entry}", "kwargs": {}}
    return write_yaml(tmp_path / "model.yaml", cfg)


def test_a_positional_forward_returning_a_tuple_runs_as_kdc_calls_it(tmp_path):
    cfg = load_config(_project(tmp_path, "tvnet_a"))
    teacher = load_teacher(cfg)
    ds = load_dataset(cfg)
    logits = teacher.forward_numpy(teacher.encode(ds.eval.features[:4]))
    assert logits.shape == (4, 10) and np.isfinite(logits).all()
    # the module keeps its own parameter names (a torchvision weights file loads as is)
    assert "fc.weight" in teacher.module.state_dict()


def test_a_positional_forward_student_searches_distills_and_exports(tmp_path):
    path = _project(tmp_path, "tvnet_b", width=16)
    run = tmp_path / "run"
    for stage in (api.search, api.distill, api.export):
        stage(path, "host", run, quiet=True)
    assert (run / "export" / "model.onnx").is_file()


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("boom", "'tvnet_c:boom' raised ValueError: no checkpoint here"),
        ("unlabelled", "the model returned dict, not a logits tensor"),
        ("one_row", "field 'teacher.entrypoint': the teacher takes one image but not a batch of 2"),
    ],
)
def test_errors_in_the_users_model_code_are_one_line(tmp_path, entry, says):
    """The entrypoint raising, a model returning no logits, or one whose forward takes a single
    image: exit 2 naming the teacher, not an internal error (exit 3)."""
    path = _project(tmp_path, "tvnet_c", entry=entry)
    res = runner.invoke(app, ["search", str(path), "--out", str(tmp_path / "run"), "-q"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert "teacher.weights is not set" in lines.pop(0)  # the run's warning, before it starts
    assert len(lines) == 1 and says in lines[0] and "teacher" in lines[0], res.output


def test_an_edited_entrypoint_is_imported_afresh_and_changes_the_inputs_hash(tmp_path):
    path = _project(tmp_path, "tvnet_d", width=8)
    cfg = load_config(path)
    before = inputs_fingerprint(cfg)
    assert load_teacher(cfg).module.fc.in_features == 8
    _project(tmp_path, "tvnet_d", width=12)  # the user edits the model file
    assert inputs_fingerprint(cfg) != before
    assert load_teacher(cfg).module.fc.in_features == 12  # not the cached module


def test_only_the_users_own_module_is_hashed_and_reimported(tmp_path):
    """A config folder holding kdc itself (a checkout, a link) with kdc's own CNN entrypoint:
    kdc's modules are not evicted and re-imported mid-run, nor hashed as the user's code; a
    weights folder named like the module beside `teacher.py` does not hide the module file."""
    import kdc
    from kdc.models import entrypoint_files

    (tmp_path / "kdc").symlink_to(Path(kdc.__file__).parent, target_is_directory=True)
    cfg = load_config(write_yaml(tmp_path / "model.yaml", cnn_config(weights=None)))
    assert entrypoint_files(cfg) == []
    loaded = sys.modules["kdc.errors"]
    load_teacher(cfg)
    assert sys.modules["kdc.errors"] is loaded
    path = _project(tmp_path, "teacher")
    (tmp_path / "teacher").mkdir()  # its weights folder, no .py files in it
    assert entrypoint_files(load_config(path)) == [(tmp_path / "teacher.py").resolve()]


def test_a_torchvision_teacher_without_weights_is_named_random(tmp_path):
    from kdc.preflight import config_warnings

    data = cnn_config(weights=None)
    data["teacher"] = {"name": "resnet18", "kwargs": {"num_classes": 10}}
    (note,) = [
        n
        for n in config_warnings(load_config(write_yaml(tmp_path / "m.yaml", data)))
        if "weights" in n
    ]
    assert "kdc builds torchvision's resnet18 without pretrained weights" in note


@pytest.mark.parametrize("data_channels", [None, 3])
def test_validate_refuses_images_of_other_channels_than_an_entrypoints_first_conv(
    tmp_path, data_channels
):
    """A 1-channel entrypoint CNN (`small_cnn`) on an image folder read as RGB: validate and
    --dry-run said "valid", compress refused it at once (its conv built on the meta device)."""
    from tiny import image_folder

    image_folder(tmp_path, {"cat": 3, "dog": 3})
    data = {"source": "imgs", "eval_fraction": 0.5, "limit_train": None, "limit_eval": None}
    if data_channels:
        data["channels"] = data_channels
    cfg = write_yaml(tmp_path / "m.yaml", cnn_config(weights=None, data=data))
    for args in (["validate", str(cfg)], ["compress", str(cfg), "--dry-run"]):
        res = runner.invoke(app, args)
        said = " ".join(res.output.split())
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert "field 'data.channels'" in said and "takes 1-channel images (its first conv" in said


def test_an_image_folder_of_one_small_size_read_at_224_is_noted(tmp_path):
    """16x16 images and no data.image_size: read at the 224 default (a CNN trained at 16
    scored chance and still PASSED on its relative drop); validate says so."""
    from tiny import image_folder

    image_folder(tmp_path, {"cat": 3, "dog": 3})
    data = {"source": "imgs", "eval_fraction": 0.5, "limit_train": None, "limit_eval": None}
    teacher = {"kwargs": {"num_classes": 2, "channels": [4], "in_channels": 3}}
    cfg = write_yaml(tmp_path / "m.yaml", cnn_config(weights=None, data=data, teacher=teacher))
    said = " ".join(runner.invoke(app, ["validate", str(cfg)]).output.split())
    assert "the images are 8x8, read at 224x224 as data.image_size is unset" in said, said
    cfg = write_yaml(
        tmp_path / "m.yaml",
        cnn_config(weights=None, data={**data, "image_size": 8}, teacher=teacher),
    )
    assert "read at" not in runner.invoke(app, ["validate", str(cfg)]).output


@pytest.mark.parametrize(
    ("module", "entry"), [("tvnet_e", "spectral"), ("tvnet_f", "wide_spectral")]
)
def test_an_operator_onnx_cannot_export_is_refused_before_a_stage_runs(tmp_path, module, entry):
    """torch.fft in the teacher's code (so in the student built from it), in a small teacher and
    one of over 5 M parameters (was: not checked, found at the export stage after the search and
    the whole distillation): `kdc validate` and `kdc compress` exit 2 with one line naming the
    operator and the fix before the search runs, without the graph the TorchScript exporter
    prints as it fails; the run directory gets no manifest and no stage's outputs."""
    path = _project(tmp_path, module, entry=entry)
    res = runner.invoke(app, ["validate", str(path)])
    assert res.exit_code == 2 and "'aten::fft_rfft2'" in res.output, res.output
    run = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "kdc", "compress", str(path), "--out", str(run), "-q"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert "teacher.weights is not set" in lines.pop(0)
    assert len(lines) == 1, lines[:5]
    assert f"{path}: field 'teacher'" in lines[0] and "'aten::fft_rfft2'" in lines[0], lines[0]
    assert not (run / "manifest.json").exists()
    assert not (run / "search").exists() and not (run / "distill").exists()


def test_export_exporter_optimum_with_a_cnn_teacher_is_refused_before_a_stage_runs(tmp_path):
    """optimum-onnx exports only a Hugging Face text classifier: `kdc validate` says so, in the
    export stage's words (was: found at the export stage, after the distillation)."""
    path = _project(tmp_path, "tvnet_g")
    cfg = load_config(path).model_dump(exclude_unset=True, mode="json")
    res = runner.invoke(
        app, ["validate", str(write_yaml(path, cfg | {"export": {"exporter": "optimum"}}))]
    )
    said = " ".join(res.output.split())
    assert res.exit_code == 2, said
    assert f"{path}: field 'export.exporter': optimum-onnx cannot export this model" in said
    assert "use auto or torch" in said
