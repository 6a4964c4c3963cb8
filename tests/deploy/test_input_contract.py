"""A CNN bundle's input contract says what kdc's image readers do to an image."""

from __future__ import annotations

import numpy as np
from PIL import Image

from kdc.data.images import read_digits, read_imagefolder
from kdc.deploy.input_contract import image_input_contract
from kdc.image_processor import ImageReading


def test_an_image_folder_contract_matches_the_reader(tmp_path):
    for cls, mode, color in (("cat", "L", 200), ("dog", "RGBA", (200, 200, 200, 9))):
        (tmp_path / cls).mkdir()
        Image.new(mode, (12, 6), color).save(tmp_path / cls / "0.png")
    images, labels = read_imagefolder(tmp_path, ImageReading((4, 4), (4, 4)))
    c = image_input_contract("imagefolder:imgs", "pixel_values", [1, 3, 4, 4], ["cat", "dog"])
    inp = c["input"]
    assert list(images.shape[1:]) == [inp["channels"], inp["height"], inp["width"]] == [3, 4, 4]
    assert images.dtype == np.dtype(inp["dtype"]) and inp["layout"] == "NCHW"
    assert np.allclose(images, 200 / 255) and inp["scale"] == "x / 255.0"  # alpha dropped
    assert inp["mean"] is None and inp["std"] is None and inp["color"].startswith("RGB")
    assert any(
        "Image.resize((4, 4), Image.Resampling.BICUBIC)" in s for s in c["preprocessing"]["steps"]
    )
    assert c["preprocessing"]["resize"]["resample"] == "bicubic"  # Pillow's default, as read
    assert c["preprocessing"]["center_crop"] is None
    assert c["output"]["classes"] == labels and c["output"]["shape"] == [1, 2]


def test_the_digits_contract_is_one_channel_scaled_by_16():
    images, _ = read_digits()
    c = image_input_contract("sklearn:digits", "pixel_values", [1, 1, 8, 8], list("0123456789"))
    assert list(images.shape[1:]) == [c["input"]["channels"], 8, 8] == [1, 8, 8]
    assert images.max() == 1.0 and c["input"]["scale"] == "x / 16.0"
    assert c["input"]["value_range"] == [0.0, 1.0]


def test_a_grayscale_folder_contract_matches_the_reader(tmp_path):
    """data.channels: 1 reads an image folder as Pillow's mode L, for a one-channel teacher."""
    for cls, mode, color in (("cat", "L", 200), ("dog", "RGB", (200, 200, 200))):
        (tmp_path / cls).mkdir()
        Image.new(mode, (12, 6), color).save(tmp_path / cls / "0.png")
    images, _ = read_imagefolder(tmp_path, ImageReading((4, 4), (4, 4)), channels=1)
    c = image_input_contract("imagefolder:imgs", "x", [1, 1, 4, 4], ["cat", "dog"])
    assert images.shape == (2, 1, 4, 4) and np.allclose(images, 200 / 255)
    assert c["input"]["color"] == "grayscale (1 channel)"
    assert c["preprocessing"]["steps"][0].startswith("Image.convert('L')")


def test_a_text_contract_is_the_tokenizer_call_that_gives_kdcs_inputs(tmp_path):
    """The engine is built for exactly the shapes kdc encoded (padded to data.max_length); the
    contract's tokenizer call reproduces those inputs (a tokenizer at its defaults pads
    nothing, and the engine rejects its shapes)."""
    from tiny import tiny_bert

    from kdc.deploy.input_contract import text_input_contract
    from kdc.models.hf import HFTextAdapter

    model, tok = tiny_bert(tmp_path)
    texts = ["good", "bad and awful and poor"]
    ours = HFTextAdapter(model.eval(), tok, max_length=16).encode(texts)
    inputs = {k: ([1, *v.shape[1:]], str(v.dtype)) for k, v in ours.items()}
    c = text_input_contract(inputs, 16, ["neg", "pos"])
    assert c["tokenizer"]["max_length"] == 16 and c["output"]["classes"] == ["neg", "pos"]
    assert c["inputs"]["input_ids"] == {"shape": [1, 16], "dtype": "int64"}
    theirs = eval(c["tokenizer"]["call"], {"tokenizer": tok, "texts": texts})  # noqa: S307
    for name, spec in c["inputs"].items():
        np.testing.assert_array_equal(theirs[name].astype(spec["dtype"]), ours[name])
    assert c["batch"] == {"min": 1, "opt": 1, "max": 1, "note": "exactly 1 row(s) a call"}
    assert "exactly these shapes" in c["tokenizer"]["note"]
    ranged = text_input_contract(inputs, 16, ["neg", "pos"], max_batch=8)  # build.max_batch
    assert (ranged["batch"]["min"], ranged["batch"]["max"]) == (1, 8)
    assert "with 1 to 8 rows (see batch)" in ranged["tokenizer"]["note"]
