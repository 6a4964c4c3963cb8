"""Image data: a folder of class folders (`<folder>/<class>/<image>`) read as torchvision's
ImageFolder reads it, and scikit-learn's bundled digits."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kdc.data.readers import HELD_SPLITS, TRAIN_SPLITS, subfolders, train_and_held, visible
from kdc.errors import UserError, first_line
from kdc.image_processor import ImageReading

if TYPE_CHECKING:
    from PIL import Image

# files an image folder's classes hold (torchvision's ImageFolder reads these, and .gif); others,
# such as notes.txt, are passed over
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
LAYOUT_FIX = "lay images out as <folder>/<class>/<image>"


def image_files(path: Path, field: str = "data.source") -> dict[str, list[Path]]:
    """The image files of folder `path/<class>/<image>` by class name, classes A→Z, a class
    folder's subfolders read too (as torchvision's ImageFolder does); a class folder without
    images is a UserError (leaving it out would shift the later classes' indices)."""
    folders = subfolders(path)
    if folders and all(d.name.lower() in SPLIT_NAMES for d in folders):
        train, held = split_folders(path) or (None, None)
        fix = (
            f"give the split's folder: data.source: {path / train}"
            + (f", data.eval: {path / held}" if held else "")
            if train
            else "give the training split's folder as data.source, another as data.eval"
        )
        raise UserError(
            f"its folders ({', '.join(d.name for d in folders)}) look like splits of a dataset, "
            "not classes (class folders' subfolders are read as their images)",
            source=str(path),
            field=field,
            fix=fix,
        )
    classes = {d.name: _class_images(d) for d in folders}
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise UserError(
            f"class folder '{empty[0]}' holds no images ({', '.join(IMAGE_SUFFIXES)})",
            source=str(path / empty[0]),
            field=field,
            fix="add its images, or remove the folder",
        )
    if not classes:
        raise UserError("no class folders", source=str(path), field=field, fix=LAYOUT_FIX)
    return classes


# folder names that are a dataset's splits, never classes (`data/train/<class>/…`): whole names,
# not split words as in file names (`kdc.data.shards.split_names`): a class may be `train_cars`
SPLIT_NAMES = set(TRAIN_SPLITS + HELD_SPLITS)


def split_folders(path: Path) -> tuple[str, str | None] | None:
    """Of a folder whose folders are all a dataset's splits (`train/`, `test/`, …), one of them
    `train/`: its name and its test (else validation) split's name; None for any other folder."""
    names = [d.name for d in subfolders(path)]
    if not names or any(n.lower() not in SPLIT_NAMES for n in names):
        return None
    return train_and_held(names)


def _class_images(folder: Path) -> list[Path]:
    """The images under a class folder, subfolders (linked ones too) included, hidden entries
    left out, in path order."""
    found = []
    for top, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if visible(Path(d))]
        found += [
            Path(top) / f
            for f in files
            if Path(f).suffix.lower() in IMAGE_SUFFIXES and visible(Path(f))
        ]
    return sorted(found)


@contextmanager
def _image_errors(img: Path, field: str) -> Iterator[None]:
    """A file that PIL cannot identify or decode as an image is a UserError naming it."""
    from PIL import UnidentifiedImageError

    try:
        yield
    except (OSError, ValueError) as e:  # UnidentifiedImageError is an OSError
        unknown = isinstance(e, UnidentifiedImageError)
        raise UserError(
            "not an image" if unknown else f"a damaged image ({first_line(e, 80)})",
            source=str(img),
            field=field,
            fix="replace or remove the file",
        ) from None


def image_sizes(files: dict[str, list[Path]], field: str) -> set[tuple[int, int]]:
    """The (width, height) sizes of the files of `image_files`, from their headers (pixels are
    not decoded); a file that does not open as an image is a UserError naming it."""
    from PIL import Image

    sizes = set()
    for img in (f for fs in files.values() for f in fs):
        with _image_errors(img, field), Image.open(img) as im:
            sizes.add(im.size)
    return sizes


def center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The centre `height` x `width` of an H×W×C `image`, zero-padded where it is smaller, as
    transformers' image_transforms.center_crop takes it."""
    h, w = image.shape[:2]
    canvas = np.zeros((max(h, height), max(w, width), *image.shape[2:]), image.dtype)
    top, left = -(-(canvas.shape[0] - h) // 2), -(-(canvas.shape[1] - w) // 2)
    canvas[top : top + h, left : left + w] = image
    top, left = top + (h - height) // 2, left + (w - width) // 2
    return canvas[top : top + height, left : left + width]


# Pillow's modes of a 16-bit grayscale image (a 16-bit PNG opens as I;16, in older Pillow as I),
# which its convert to L or RGB clips at 255
WIDE_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# the image files that may hold one (a JPEG, BMP, GIF or WebP never does)
WIDE_GRAY_SUFFIXES = (".png", ".tif", ".tiff", ".pgm", ".ppm")


def _tiff_bits(im: Image.Image) -> int:
    """A TIFF's bits per sample (a 32-bit integer TIFF opens as mode I too, as 16-bit PNGs and
    PGMs do in some Pillow releases); 16 for any other image."""
    bits = im.tag_v2.get(258, (16,)) if im.format == "TIFF" else (16,)
    return int(bits[0] if isinstance(bits, tuple) else bits)


def eight_bit(im: Image.Image, source: str = "", field: str = "data.source") -> Image.Image:
    """A 16-bit grayscale image as 8-bit L, value >> 8 (torchvision's uint16 to uint8, which
    reads an 8-bit image widened as v x 257 back as v); a float image as 8-bit L
    (`float_eight_bit`); any other image as it is (a 32-bit integer TIFF too: Pillow's convert
    clips it at 255, as before 16-bit images were scaled)."""
    from PIL import Image

    if im.mode == "F":
        return float_eight_bit(im, source, field)
    if im.mode not in WIDE_GRAY_MODES or _tiff_bits(im) > 16:
        return im
    wide = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
    return Image.fromarray((wide >> 8).astype(np.uint8))


FLOAT_SUFFIXES = (".tif", ".tiff")  # the image files that may hold a float image (Pillow's F)


def float_eight_bit(im: Image.Image, source: str, field: str) -> Image.Image:
    """A float image (Pillow's mode F: a 32-bit float TIFF) as 8-bit L, rounded: values all
    within [0, 1] times 255, within [0, 255] as they are (Pillow's convert clips at 0 and 255,
    reading a [0, 1] image black); others (negative, above 255, NaN) are a UserError naming
    `source`."""
    from PIL import Image

    values = np.asarray(im, np.float64)
    finite, lo, hi = bool(np.isfinite(values).all()), values.min(), values.max()
    if not finite or lo < 0 or hi > 255:
        shown = f"from {lo:g} to {hi:g}" if finite else "NaN or infinite"
        raise UserError(
            f"a float image whose values ({shown}) are within neither [0, 1] nor [0, 255]",
            source=source,
            field=field,
            fix="save it as an 8- or 16-bit image",
        )
    return Image.fromarray(np.rint(values * (255.0 if hi <= 1 else 1.0)).astype(np.uint8))


def read_imagefolder(
    path: Path, reading: ImageReading, field: str = "data.source", channels: int = 3
) -> tuple[np.ndarray, list[str]]:
    """`path/<class>/<image>` → float32 N×channels×H×W in [0, 1] (1: grayscale, Pillow's mode
    L; 3: RGB; a 16-bit or float image read as 8 bits, `eight_bit`), resized and cropped as
    `reading` says, and class names; an image file that does not decode, or that ends at another
    size than `reading.size`, is a UserError naming it.
    Written into one array as they are read: memory is the result's, not a multiple of it."""
    from PIL import Image

    labels: list[str] = []
    height, width = reading.size
    classes = image_files(path, field)
    images = np.empty((sum(map(len, classes.values())), channels, height, width), np.float32)
    for cls, files in classes.items():
        for img in files:
            with _image_errors(img, field), Image.open(img) as im:
                im = eight_bit(im, str(img), field).convert("L" if channels == 1 else "RGB")
                if reading.resize:
                    im = im.resize(reading.resize[::-1], reading.resample)
                arr = np.asarray(im, dtype=np.float32).reshape(im.height, im.width, channels)
            if reading.crop:
                arr = center_crop(arr, height, width)
            if arr.shape[:2] != (height, width):
                raise UserError(
                    f"the image is {arr.shape[1]}x{arr.shape[0]}, not the {width}x{height} the "
                    "teacher takes, and its image processor neither resizes nor crops",
                    source=str(img),
                    field=field,
                    fix="resize the images, or set do_resize: true in preprocessor_config.json",
                )
            images[len(labels)] = arr.transpose(2, 0, 1) / 255.0
            labels.append(cls)
    return images, labels


def read_digits() -> tuple[np.ndarray, list[str]]:
    """scikit-learn's bundled 8×8 digits as float32 N×1×8×8 in [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[:, None, :, :] / 16.0).astype(np.float32), [str(t) for t in d.target]
