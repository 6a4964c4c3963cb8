"""A Hugging Face image teacher's image folder read as its saved image processor reads images
(kdc.image_processor): kdc's pixel_values against transformers' own processor for resample
filters, centre crops and rescaling (kdc resized with Pillow's bicubic default, ignored the
crop, and a tiny ViT lost accuracy); settings kdc cannot honour refused as one line; a bundle's
input.json and the student's preprocessor_config.json describe the same reading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import vit_config, write_yaml
from transformers import (
    AutoImageProcessor,
    DeiTImageProcessor,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from kdc.config import load_config
from kdc.data import image_reading
from kdc.data.images import read_imagefolder
from kdc.deploy.input_contract import image_input_contract
from kdc.errors import UserError
from kdc.hf_files import PROCESSOR_FILE
from kdc.models import load_teacher

SIDE = {"height": 16, "width": 16}  # the tiny ViT's image_size
SIZES = [(37, 23), (16, 16), (12, 30), (64, 48)]  # the images' (width, height)


def _project(root, processor):
    """A random 3-channel ViT taking 16x16 images (ViTConfig) in root/teacher with `processor`
    (saved with save_pretrained, or a dict written as preprocessor_config.json), and an image
    folder of noise PNGs of assorted sizes; its config."""
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=2,
        id2label={0: "a", 1: "b"},
        label2id={"a": 0, "b": 1},
    )
    ViTForImageClassification(config).save_pretrained(str(root / "teacher"))
    if isinstance(processor, dict):
        (root / "teacher" / PROCESSOR_FILE).write_text(json.dumps(processor))
    else:
        processor.save_pretrained(str(root / "teacher"))
    rng = np.random.default_rng(0)
    for cls in "ab":
        (root / "imgs" / cls).mkdir(parents=True)
        for i, (w, h) in enumerate(SIZES):
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "imgs" / cls / f"{i}.png")
    data = {"source": "imgs", "eval_fraction": 0.5, "limit_train": None, "limit_eval": None}
    return load_config(write_yaml(root / "model.yaml", vit_config(data=data)))


def _ours_and_theirs(cfg, processor):
    """The pixel_values kdc feeds its teacher for the image folder (read as kdc.data reads it,
    then the teacher's encode), and those of transformers' processor (`processor`, or for a
    hand-written file the slow class AutoImageProcessor loads from it)."""
    images = cfg.resolve("imgs")
    x, _ = read_imagefolder(images, image_reading(cfg))
    ours = load_teacher(cfg).encode(x)["pixel_values"]
    if isinstance(processor, dict):
        processor = AutoImageProcessor.from_pretrained(cfg.resolve("teacher"), use_fast=False)
    files = sorted(images.glob("*/*.png"))  # read_imagefolder's order: class, then file
    pil = [Image.open(f).convert("RGB") for f in files]
    return ours, processor(pil, return_tensors="np")["pixel_values"]


BICUBIC, LANCZOS = Image.Resampling.BICUBIC, Image.Resampling.LANCZOS
CASES = {
    "bilinear (ViT's default)": ViTImageProcessor(size=SIDE),
    "bicubic, ImageNet mean/std": ViTImageProcessor(
        size=SIDE,
        resample=BICUBIC,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ),
    "DeiT: resize 20x24, centre crop 16": DeiTImageProcessor(
        size={"height": 20, "width": 24}, crop_size=SIDE
    ),
    "crop larger than the resize (zero-padded), rescaled, not normalised": DeiTImageProcessor(
        size={"height": 12, "width": 14},
        crop_size=SIDE,
        resample=LANCZOS,
        rescale_factor=1 / 127.5,
        do_normalize=False,
    ),
    "resample dropped from the file: bilinear": {
        "image_processor_type": "ViTImageProcessor",
        "size": SIDE,
    },
    "legacy feature extractor, sizes as ints": {
        "feature_extractor_type": "DeiTFeatureExtractor",
        "size": 20,
        "crop_size": 16,
        "resample": 0,
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_pixel_values_are_the_image_processors(case, tmp_path):
    processor = CASES[case]
    ours, theirs = _ours_and_theirs(_project(tmp_path, processor), processor)
    assert ours.shape == theirs.shape == (8, 3, 16, 16) and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() < 1e-5


@pytest.mark.parametrize(
    ("processor", "field", "words"),
    [
        ({"image_processor_type": "ViTImageProcessor"}, "size", "makes 224x224 images"),
        ({"image_processor_type": "DeiTImageProcessor", "size": 16}, "crop_size", "224x224"),
        (
            {"image_processor_type": "ViTImageProcessor", "size": {"shortest_edge": 16}},
            "size",
            "takes a height and width",
        ),
        ({"image_processor_type": "CLIPImageProcessor"}, "image_processor_type", "CLIPImage"),
        ({"image_processor_type": "ViTImageProcessor", "size": 16, "resample": 9}, "resample", "9"),
    ],
)
def test_a_setting_kdc_cannot_honour_is_one_line(tmp_path, processor, field, words):
    """Default sizes that are not the model's (ViT's 224; DeiT's crop 224), a shortest edge
    (ViTImageProcessor refuses it too), another processor class, an unknown filter: refused by
    the data reader and the teacher loader alike, naming the file and the field."""
    cfg = _project(tmp_path, processor)
    for attempt in (lambda: image_reading(cfg), lambda: load_teacher(cfg)):
        with pytest.raises(UserError, match=words) as e:
            attempt()
        assert e.value.source == str(cfg.resolve("teacher") / PROCESSOR_FILE)
        assert e.value.field == field and "\n" not in str(e.value) and e.value.fix


def test_images_not_resized_must_be_the_models_size(tmp_path):
    """do_resize false and no crop: the images are taken as stored; one of another size is a
    UserError naming it (np.stack failed, or the adapter resized it)."""
    cfg = _project(tmp_path, {"image_processor_type": "ViTImageProcessor", "do_resize": False})
    with pytest.raises(UserError, match="is 37x23, not the 16x16") as e:
        read_imagefolder(cfg.resolve("imgs"), image_reading(cfg))
    assert e.value.source == str(cfg.resolve("imgs") / "a" / "0.png")


@pytest.mark.parametrize(
    ("case", "resize", "crop"),
    [
        ("resample dropped from the file: bilinear", [16, 16, "bilinear", 2], None),
        ("DeiT: resize 20x24, centre crop 16", [20, 24, "bicubic", 3], SIDE),
    ],
)
def test_input_json_and_the_shipped_processor_config_say_the_same(case, resize, crop, tmp_path):
    """The contract states the resize filter and the crop (it said "bicubic, no crop" for every
    ViT); the preprocessor_config.json saved with the student states them too (a dropped
    resample is written out) and gives the pixel values kdc trained on."""
    cfg = _project(tmp_path, CASES[case])
    teacher = load_teacher(cfg)
    c = image_input_contract(
        "imagefolder:imgs", "pixel_values", [1, 3, 16, 16], ["a", "b"], processor=teacher.processor
    )
    pre = c["preprocessing"]
    assert list(pre["resize"].values()) == resize and pre["center_crop"] == crop
    name = f"Image.Resampling.{resize[2].upper()}"
    assert any(name in s for s in pre["steps"])
    assert any(s.startswith("centre crop to 16x16") for s in pre["steps"]) == bool(crop)
    teacher.save(tmp_path / "student")
    saved = json.loads((tmp_path / "student" / PROCESSOR_FILE).read_text())
    assert saved["resample"] == pre["resize"]["pil_resample"]
    assert saved["size"] == {"height": resize[0], "width": resize[1]}
    assert saved.get("do_center_crop", False) == bool(crop)
    shipped = AutoImageProcessor.from_pretrained(tmp_path / "student", use_fast=False)
    ours, theirs = _ours_and_theirs(cfg, shipped)
    assert np.abs(ours - theirs).max() < 1e-5


def test_a_fast_class_and_null_settings_are_read_as_the_pillow_class_reads_them(tmp_path):
    """`ViTImageProcessorFast` is shipped as `ViTImageProcessor` (the Fast one resizes with
    torchvision where it is installed); a null size or mean/std is its class default."""
    import json

    from kdc.errors import UserError
    from kdc.image_processor import read_processor

    conf = {"image_processor_type": "ViTImageProcessorFast", "image_mean": None, "size": None}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(conf))
    out = read_processor(tmp_path, 224, 3, "vit")
    assert out["image_processor_type"] == "ViTImageProcessor"
    assert out["image_mean"] == [0.5] * 3 and out["size"] == {"height": 224, "width": 224}
    # transformers skips a step whose flag is null: not taken as the default (True) here
    conf["do_normalize"] = None
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(conf))
    with pytest.raises(UserError, match="do_normalize is null"):
        read_processor(tmp_path, 224, 3, "vit")
