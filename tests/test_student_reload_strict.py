"""A kdc transformer student (shapes.json beside the weights) reloads only when its weights are
exactly the tensors its config builds: it was loaded with `strict=False`, so a weights file
missing a layer, or a config.json that says more layers than were saved, loaded with randomly
initialised layers and no word."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file, save_file
from tiny import tiny_text_adapter

from kdc.errors import UserError
from kdc.models import load_student


def _saved_student(tmp_path):
    teacher = tiny_text_adapter(tmp_path, layers=4)
    student = teacher.sliced({"layers": [1, 3], "hidden_size": 16, "num_attention_heads": 1})
    student.save(tmp_path / "student")
    return student, tmp_path / "student"


def _drop_layer(d):
    state = load_file(str(d / "model.safetensors"))
    kept = {k: v for k, v in state.items() if ".layer.1." not in k}
    save_file(kept, str(d / "model.safetensors"), metadata={"format": "pt"})


def _more_layers(d):
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))


def _extra_tensor(d):
    state = load_file(str(d / "model.safetensors"))
    state["bert.extra.weight"] = state["classifier.bias"].clone()
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (_drop_layer, "missing bert.encoder.layer.1."),
        (_more_layers, "missing bert.encoder.layer.2."),
        (_extra_tensor, "unexpected bert.extra.weight"),
    ],
)
def test_weights_that_do_not_match_the_config_are_a_one_line_error(tmp_path, damage, named):
    _, d = _saved_student(tmp_path)
    damage(d)
    with pytest.raises(UserError) as e:
        load_student(d, max_length=16)
    text = str(e.value)
    assert "\n" not in text and str(d) in text and named in text


def test_a_student_as_saved_reloads_to_the_same_logits(tmp_path):
    student, d = _saved_student(tmp_path)
    x = student.encode(["a good film", "an awful plot"])
    np.testing.assert_array_equal(
        load_student(d, max_length=16).forward_numpy(x), student.forward_numpy(x)
    )
