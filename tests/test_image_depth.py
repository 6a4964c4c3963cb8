"""A 16-bit grayscale image (a 16-bit PNG: Pillow's mode I;16, or I) is read scaled to 8 bits
(value >> 8, as torchvision converts uint16 to uint8), not clipped at 255 by Pillow's convert."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_data_loading import cnn_cfg

from kdc.data.images import eight_bit, read_imagefolder
from kdc.errors import UserError
from kdc.fingerprint import _data_fingerprint
from kdc.image_processor import ImageReading

SPAN = np.linspace(0, 65535, 64).round().astype(np.uint16).reshape(8, 8)  # 0 .. 65535


@pytest.mark.parametrize("channels", [1, 3])
def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path, channels):
    for cls in ("dark", "light"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.fromarray(SPAN).save(tmp_path / "imgs" / cls / "a.png")
    with Image.open(tmp_path / "imgs" / "dark" / "a.png") as im:
        assert im.mode.startswith("I") and np.asarray(im).max() == 65535  # a 16-bit PNG
    x, _ = read_imagefolder(tmp_path / "imgs", ImageReading((8, 8), None), channels=channels)
    want = (SPAN >> 8).astype(np.float32) / 255.0
    for c in range(channels):
        np.testing.assert_allclose(x[0, c], want, atol=1e-6)
    assert (x == 1.0).mean() < 0.05  # clipped, all but the darkest pixels were 255


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_eight_bit_keeps_an_8_bit_image_saved_as_16_bits(mode):
    """v × 257 (an 8-bit image widened) reads back as v; an 8-bit image is left as it is."""
    values = np.arange(256, dtype=np.int64).reshape(16, 16) * 257
    wide = Image.fromarray(values.astype(np.uint16 if mode == "I;16" else np.int32))
    assert wide.mode == mode
    got = eight_bit(wide)
    assert got.mode == "L" and np.asarray(got).tolist() == np.arange(256).reshape(16, 16).tolist()
    rgb = Image.new("RGB", (2, 2), (1, 2, 3))
    assert eight_bit(rgb) is rgb


def test_an_image_folders_fingerprint_marks_its_16_bit_reading(tmp_path):
    """A run over an image folder read before 16-bit images were scaled is not resumed: its
    fingerprint marks the new reading (a saved `datasets` directory's does not)."""
    for cls in ("dark", "light"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.fromarray(SPAN).save(tmp_path / "imgs" / cls / "a.png")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset_dict.json").write_text('{"splits": ["train"]}')
    cfg = cnn_cfg(tmp_path, source="imgs", image_size=8)
    assert ("16-bit images", "scaled to 8 bits") in _data_fingerprint(cfg, "imgs")
    assert ("16-bit images", "scaled to 8 bits") not in _data_fingerprint(cfg, "ds")


def test_a_folder_of_jpegs_keeps_its_fingerprint(tmp_path):
    """JPEGs (BMP, GIF, WebP) hold no 16-bit grayscale: their reading did not change, so a run
    of them is resumed as before (no mark)."""
    for cls in ("dark", "light"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "imgs" / cls / "a.jpg")
    cfg = cnn_cfg(tmp_path, source="imgs", image_size=8)
    assert ("16-bit images", "scaled to 8 bits") not in _data_fingerprint(cfg, "imgs")


def test_a_32_bit_tiff_is_not_scaled_as_a_16_bit_image(tmp_path):
    """A 32-bit integer TIFF opens as mode I too; its 0..255 values are read as they are (value
    >> 8 read it black)."""
    values = np.arange(256, dtype=np.int32).reshape(16, 16)
    Image.fromarray(values).save(tmp_path / "a.tif")
    with Image.open(tmp_path / "a.tif") as im:
        assert im.mode == "I"
        got = eight_bit(im).convert("L")
    assert np.asarray(got).tolist() == values.tolist()


def test_a_16_bit_tiff_is_scaled(tmp_path):
    Image.fromarray(SPAN).save(tmp_path / "a.tif")
    with Image.open(tmp_path / "a.tif") as im:
        got = eight_bit(im)
    assert np.asarray(got).tolist() == (SPAN >> 8).tolist()


FLOATS = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)  # a float image's usual scale


def _float_folder(tmp_path, values: np.ndarray) -> None:
    for cls in ("dark", "light"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.fromarray(values).save(tmp_path / "imgs" / cls / "a.tif")


@pytest.mark.parametrize(("values", "scale"), [(FLOATS, 255.0), (FLOATS * 255, 1.0)])
def test_a_float_tiff_in_0_1_is_scaled_in_0_255_kept(tmp_path, values, scale):
    """A 32-bit float TIFF (Pillow's F): clipped by Pillow's convert, a [0, 1] image read black."""
    _float_folder(tmp_path, values)
    with Image.open(tmp_path / "imgs" / "dark" / "a.tif") as im:
        assert im.mode == "F"
    x, _ = read_imagefolder(tmp_path / "imgs", ImageReading((8, 8), None), channels=3)
    want = np.rint(values.astype(np.float64) * scale) / 255.0
    for c in range(3):
        np.testing.assert_allclose(x[0, c], want, atol=1e-6)


@pytest.mark.parametrize("bad", [-0.5, 300.0, np.nan])
def test_a_float_tiff_outside_0_255_is_refused_naming_it(tmp_path, bad):
    values = FLOATS.copy()
    values[0, 0] = bad
    _float_folder(tmp_path, values)
    with pytest.raises(UserError) as e:
        read_imagefolder(tmp_path / "imgs", ImageReading((8, 8), None))
    assert e.value.exit_code == 2 and "a.tif" in str(e.value) and "\n" not in str(e.value)
    assert "neither [0, 1] nor [0, 255]" in str(e.value) and "8- or 16-bit" in str(e.value)


def test_a_folder_of_float_tiffs_marks_its_fingerprint(tmp_path, monkeypatch):
    """Read scaled now, clipped before: a run of TIFFs is not resumed, known by the files' names
    (no image is opened to hash); a folder of PNGs has no float mark."""
    import PIL.Image

    _float_folder(tmp_path, FLOATS)
    cfg = cnn_cfg(tmp_path, source="imgs", image_size=8)
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: pytest.fail("opened an image"))
    assert ("float images", "scaled") in _data_fingerprint(cfg, "imgs")
    for f in (tmp_path / "imgs").rglob("a.tif"):
        f.rename(f.with_suffix(".png"))
    assert ("float images", "scaled") not in _data_fingerprint(cfg, "imgs")
