"""Hugging Face families kdc cannot compress are refused up front, one line and exit 2, by
`kdc init`, `kdc validate` and the start of a run: a hierarchical image model (Swin, ConvNeXt:
config.json `depths`), an image classifier without a ViT's patch geometry (HF ResNet,
MobileNetV2), ALBERT (layers sharing weights). Swin passed init and validate and crashed in
distillation (exit 3, a LayerNorm shape error after its stage 2 was dropped); ConvNeXt crashed in
the search (StopIteration); ALBERT failed only after the model was loaded."""

from __future__ import annotations

import json

import pytest
from tiny import bert_config, image_folder, vit_config, write_csv, write_yaml
from typer.testing import CliRunner

from kdc.cli import app
from kdc.hf_files import unsupported_teacher

runner = CliRunner()
GEOMETRY = {"image_size": 8, "patch_size": 2, "num_channels": 3}
LABELS = {"id2label": {"0": "cat", "1": "dog"}, "label2id": {"cat": 0, "dog": 1}}
UNSUPPORTED = [
    (
        "SwinForImageClassification",
        {**GEOMETRY, "depths": [2, 2], "num_layers": 2, "hidden_size": 32},
        "hierarchical",
    ),
    (
        "ConvNextForImageClassification",
        {**GEOMETRY, "depths": [1, 1], "hidden_sizes": [16, 32]},
        "hierarchical",
    ),
    ("MobileNetV2ForImageClassification", {"image_size": 8, "num_channels": 3}, "'patch_size'"),
    ("AlbertForSequenceClassification", {"num_hidden_layers": 4, "num_hidden_groups": 1}, "ALBERT"),
]


def _one_line(res) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


def _teacher(tmp_path, arch: str, conf: dict):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    conf = {"architectures": [arch], "model_type": arch[:5].lower(), **LABELS, **conf}
    (teacher / "config.json").write_text(json.dumps(conf))
    (teacher / "vocab.txt").write_text("[UNK]\n")
    return teacher


def _project(tmp_path, arch: str, conf: dict):
    _teacher(tmp_path, arch, conf)
    if "Image" in arch:
        image_folder(tmp_path, {"cat": 5, "dog": 5})
        data = {"source": "imgs", "eval_fraction": 0.4, "limit_train": None, "limit_eval": None}
        return write_yaml(tmp_path / "model.yaml", vit_config(data=data))
    write_csv(tmp_path / "d.csv", [("good film", "dog"), ("bad plot", "cat")] * 5)
    return write_yaml(tmp_path / "model.yaml", bert_config(data={"source": "d.csv", "eval": None}))


@pytest.mark.parametrize(("arch", "conf", "words"), UNSUPPORTED)
def test_init_names_why_a_family_is_not_one_kdc_compresses(tmp_path, arch, conf, words):
    teacher = _teacher(tmp_path, arch, conf)
    data = "sklearn:digits"
    if "Sequence" in arch:
        data = str(write_csv(tmp_path / "d.csv", [("good film", "dog"), ("bad plot", "cat")] * 5))
    res = runner.invoke(app, ["init", str(teacher), "--data", data, "--out", str(tmp_path / "m")])
    line = _one_line(res)
    assert f"'{arch}'" in line and words in line and "teacher.entrypoint" in line, line
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(("arch", "conf", "words"), UNSUPPORTED)
def test_validate_and_compress_refuse_the_family_before_the_run(tmp_path, arch, conf, words):
    cfg = _project(tmp_path, arch, conf)
    for cmd in (["validate", str(cfg)], ["compress", str(cfg), "--target", "host"]):
        line = _one_line(runner.invoke(app, cmd))
        assert line.startswith(f"error: {cfg}: field 'teacher.path'"), line
        assert f"'{arch}'" in line and words in line, line
    assert not (tmp_path / "runs").exists()


def test_vit_like_and_bert_like_configs_pass():
    vit = {"architectures": ["ViTForImageClassification"], **GEOMETRY, "num_hidden_layers": 4}
    assert unsupported_teacher(vit, image=True) is None
    bert = {"architectures": ["BertForSequenceClassification"], "num_hidden_layers": 4}
    assert unsupported_teacher(bert, image=False) is None


def test_a_model_without_a_layer_count_is_a_user_error_not_a_crash():
    """layer_list raised StopIteration (exit 3) for a config with no layer count."""
    from torch import nn

    from kdc.errors import UserError
    from kdc.models.hf import layer_list

    class Plain(nn.Module):
        config = type("Config", (), {})()

    with pytest.raises(UserError, match="cannot find the stacked transformer layers of Plain"):
        layer_list(Plain())
