"""Config validation: every bad input is a one-line ConfigError naming file, field and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny import cnn_config, write_yaml

from kdc.config import load_config
from kdc.errors import ConfigError


def _err(tmp_path, data) -> str:
    path = write_yaml(tmp_path / "model.yaml", data) if isinstance(data, dict) else None
    if path is None:
        path = tmp_path / "model.yaml"
        path.write_text(data)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_valid_config_resolves_paths_relative_to_file(tmp_path):
    cfg = load_config(write_yaml(tmp_path / "model.yaml", cnn_config()))
    assert cfg.resolve("teacher.safetensors") == tmp_path.resolve() / "teacher.safetensors"
    assert cfg.distill.epochs == 4 and cfg.quantize.precision == "int8"


def test_unknown_key_suggests_the_right_one(tmp_path):
    data = cnn_config()
    data["distil"] = data.pop("distill")
    msg = _err(tmp_path, data)
    assert "field 'distil'" in msg and "did you mean 'distill'" in msg


def test_nested_unknown_key(tmp_path):
    data = cnn_config()
    data["data"]["limt_train"] = 3
    assert "did you mean 'limit_train'" in _err(tmp_path, data)


def test_a_section_with_every_key_commented_out_takes_its_defaults(tmp_path):
    data = cnn_config(student={"width": 0.25})
    del data["student"], data["constraints"]
    path = write_yaml(tmp_path / "model.yaml", data)
    path.write_text(path.read_text() + "student:\n  # width: 0.25\nconstraints:\n")  # nulls
    cfg = load_config(path)
    assert cfg.student.width == 0.5 and cfg.constraints.max_accuracy_drop is None  # defaults
    assert "field 'teacher'" in _err(tmp_path, {**cnn_config(), "teacher": None})  # required


def test_wrong_type_names_the_field(tmp_path):
    data = cnn_config()
    data["distill"]["epochs"] = "many"
    assert "field 'distill.epochs'" in _err(tmp_path, data)


def test_bad_task_lists_choices(tmp_path):
    msg = _err(tmp_path, {**cnn_config(), "task": "regression"})
    assert "field 'task'" in msg and "image-classification" in msg


def test_missing_section(tmp_path):
    data = cnn_config()
    del data["data"]
    assert "field 'data'" in _err(tmp_path, data)


def test_not_yaml_and_not_mapping(tmp_path):
    assert "not valid YAML" in _err(tmp_path, "name: [unclosed")
    assert "YAML mapping" in _err(tmp_path, "- a\n- b\n")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_bad_entrypoint_form(tmp_path):
    data = cnn_config()
    data["teacher"]["entrypoint"] = "no_colon"
    assert "teacher.entrypoint" in _err(tmp_path, data)


def test_a_hub_id_as_teacher_name_says_to_use_a_local_path(tmp_path):
    """`name: prajjwal1/bert-tiny` was read as a torchvision name ("pip install torchvision")."""
    data = cnn_config()
    data["teacher"] = {"name": "prajjwal1/bert-tiny"}
    msg = _err(tmp_path, data)
    assert "teacher.name" in msg and "hub id" in msg and "teacher.path" in msg
    data["teacher"] = {"name": "timm/resnet18"}
    load_config(write_yaml(tmp_path / "ok.yaml", data))


def test_a_loss_may_be_given_by_its_name_alone(tmp_path):
    """`losses: [logits, hidden]`, as README.md writes the default recipes: a bare name is
    `{name: <name>}`, beside full entries."""
    data = cnn_config()
    data["distill"]["losses"] = ["logits", {"name": "ce", "weight": 0.5}]
    cfg = load_config(write_yaml(tmp_path / "model.yaml", data))
    assert [(x.name, x.weight) for x in cfg.distill.losses] == [("logits", 1.0), ("ce", 0.5)]


def test_a_teacher_kind_needs_its_source(tmp_path):
    """`kind: entrypoint` without `entrypoint` (it crashed when the teacher was built)."""
    data = cnn_config()
    data["teacher"] = {"kind": "entrypoint", "name": "resnet18"}
    msg = _err(tmp_path, data)
    assert "field 'teacher'" in msg and "kind 'entrypoint' needs 'entrypoint'" in msg


def test_split_seed_holds_the_eval_split_while_the_seed_changes(tmp_path):
    from kdc.config import parse_config
    from kdc.data import load_dataset

    def eval_rows(**over):
        d = cnn_config()
        d.update({k: v for k, v in over.items() if k != "data"})
        d["data"] = {**d["data"], **over.get("data", {})}
        return load_dataset(parse_config(d, base_dir=tmp_path)).eval.features

    fixed = eval_rows(seed=0)
    assert (eval_rows(seed=1, data={"split_seed": 0}) == fixed).all()
    assert not (eval_rows(seed=1) == fixed).all()  # unset: the run's seed draws the split


def test_the_api_takes_a_config_as_a_dict(tmp_path, monkeypatch):
    """model.yaml's content as a dict (paths relative to the working directory); a bad one is a
    ConfigError like a bad file."""
    from tiny import cnn_config

    from kdc import api

    monkeypatch.chdir(tmp_path)
    assert api.plan(cnn_config(weights=None))["data"]["num_labels"] == 10
    with pytest.raises(ConfigError, match="<dict config>: field 'task'"):
        api.plan({"name": "x"})


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"distill": {"losses": []}}, "distill.losses"),  # no loss: training crashed (exit 3)
        ({"student": {"layers": True}}, "student.layers"),  # was read as 1 layer
        ({"student": {"layers": 1.5}}, "student.layers"),  # not 'student.layers.int'
    ],
)
def test_values_of_the_right_shape_but_no_meaning_are_refused(tmp_path, over, field):
    data = cnn_config()
    for section, values in over.items():
        data[section] = {**data.get(section, {}), **values}
    assert f"field '{field}':" in _err(tmp_path, data)


def test_a_student_layer_count_is_the_architectures_layer_count(tmp_path):
    """`student.layers: 2` (as kdc init writes it) beside a `student.architecture` of widths
    only was ignored: the student kept every teacher layer. It is now the architecture's
    num_hidden_layers where that gives none."""
    from tiny import bert_config

    arch = {"hidden_size": 16, "num_attention_heads": 1}
    cfg = load_config(
        write_yaml(tmp_path / "a.yaml", bert_config(student={"layers": 2, "architecture": arch}))
    )
    assert cfg.student.architecture == {**arch, "num_hidden_layers": 2}
    given = {"layers": 2, "architecture": {**arch, "num_hidden_layers": 1}}
    cfg = load_config(write_yaml(tmp_path / "b.yaml", bert_config(student=given)))
    assert cfg.student.architecture["num_hidden_layers"] == 1


def test_the_readme_documents_every_config_key():
    """README's configuration table has a row naming each key of model.yaml (a row names a
    section's first key in full, its others bare: `distill.epochs`, `batch_size`)."""
    import re

    from pydantic import BaseModel

    from kdc.config import KdcConfig

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Configuration (`model.yaml`)")[1].split("## Targets")[0]
    named = [
        re.findall(r"`([^`]+)`", r.split("|")[1]) for r in table.splitlines() if r[:3] == "| `"
    ]
    for name, field in KdcConfig.model_fields.items():
        section = field.annotation
        if field.exclude:
            continue
        if not (isinstance(section, type) and issubclass(section, BaseModel)):
            assert any(name in row for row in named), name
            continue
        for key in section.model_fields:
            full = f"{name}.{key}"
            in_row = (
                full in row or (key in row and any(n.startswith(f"{name}.") for n in row))
                for row in named
            )
            assert any(in_row), f"README's configuration table lacks {full}"


@pytest.mark.parametrize(
    ("space", "says"),
    [
        ({"stage_width": {"min": 0.9, "max": 0.1}}, "min 0.9 is above max 0.1"),
        ({"stage_width": {}}, "give min, max or both"),
    ],
)
def test_a_bad_search_space_range_says_what_is_wrong_with_it(tmp_path, space, says):
    """A range ({min, max}) that does not validate names the range's fault, not that a list
    (the other form a search.space entry takes) was expected."""
    msg = _err(tmp_path, cnn_config(search={"strategy": "evolution", "space": space}))
    assert "field 'search.space.stage_width'" in msg and says in msg, msg
    assert "valid list" not in msg, msg


def test_a_misspelt_key_of_a_search_space_range_suggests_the_right_one(tmp_path):
    space = {"stage_width": {"min": 0.25, "maxx": 0.5}}
    msg = _err(tmp_path, cnn_config(search={"strategy": "evolution", "space": space}))
    assert "field 'search.space.stage_width.maxx'" in msg and "did you mean 'max'" in msg, msg
