"""`data.mean` / `data.std`: a CNN teacher trained with torchvision's Normalize reads its images
normalized per channel; the engine's input contract says so; misuse is a one-line error."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_data_loading import cnn_cfg
from tiny import cnn_config, image_folder, write_yaml

from kdc.config import load_config, parse_config
from kdc.data import load_dataset
from kdc.deploy.input_contract import image_input_contract
from kdc.errors import ConfigError, UserError


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"mean": [0.5]}, "give mean and std together"),
        ({"mean": [0.5, 0.5, 0.5], "std": [0.2]}, "one value per image channel"),
        ({"mean": [0.5, 0.5], "std": [0.2, 0.2]}, "one value per image channel"),
        ({"mean": [0.5], "std": [0.0]}, "std values must be positive"),
    ],
)
def test_mean_and_std_are_checked(data, words):
    cfg = cnn_config(weights=None)
    cfg["data"] = {"source": "sklearn:digits", **data}
    with pytest.raises(ConfigError, match=words) as e:
        parse_config(cfg)
    assert e.value.field == "data"


def test_images_are_normalized_per_channel(tmp_path):
    folder = image_folder(tmp_path, {"a": 3, "b": 3})
    plain = load_dataset(cnn_cfg(tmp_path, source=str(folder), image_size=8, eval_fraction=0.5))
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    cfg = cnn_cfg(tmp_path, source=str(folder), image_size=8, eval_fraction=0.5, mean=mean, std=std)
    ds = load_dataset(cfg)
    m, s = np.reshape(mean, (1, 3, 1, 1)), np.reshape(std, (1, 3, 1, 1))
    for a, b in ((plain.train, ds.train), (plain.eval, ds.eval)):
        assert b.features.dtype == np.float32
        np.testing.assert_allclose(b.features, (a.features - m) / s, rtol=1e-6, atol=1e-6)


def test_channel_count_and_hugging_face_teachers_are_refused(tmp_path):
    with pytest.raises(UserError, match=r"have 3 value\(s\), the images 1 channel") as e:
        load_dataset(cnn_cfg(tmp_path, mean=[0.5] * 3, std=[0.5] * 3))
    assert e.value.field == "data.mean"
    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "config.json").write_text(json.dumps({"model_type": "vit"}))
    cfg = cnn_config(weights=None)
    cfg["teacher"] = {"path": "vit"}
    cfg["data"] = {"source": "sklearn:digits", "mean": [0.5], "std": [0.5]}
    with pytest.raises(UserError, match="preprocessor_config.json") as e:
        load_dataset(load_config(write_yaml(tmp_path / "m.yaml", cfg)))
    assert e.value.field == "data.mean"


def test_contract_states_the_normalization():
    c = image_input_contract(
        "imagefolder:imgs",
        "pixel_values",
        [1, 3, 8, 8],
        ["a", "b"],
        normalize=([0.5] * 3, [0.25] * 3),
    )
    assert (c["input"]["mean"], c["input"]["std"]) == ([0.5] * 3, [0.25] * 3)
    assert c["input"]["value_range"] is None
    assert any("(data.mean, data.std)" in step for step in c["preprocessing"]["steps"])
    plain = image_input_contract("imagefolder:imgs", "pixel_values", [1, 3, 8, 8], ["a", "b"])
    assert plain["input"]["mean"] is None
