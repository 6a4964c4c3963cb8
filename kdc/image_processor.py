"""A Hugging Face image classifier's image processor (preprocessor_config.json) as kdc applies
it, read without importing transformers. kdc honours ViTImageProcessor, DeiTImageProcessor and
BeitImageProcessor (and their fast variants), each with its defaults as transformers defines
them: resize with Pillow and the processor's `resample` filter (`do_resize`, `size`), centre
crop (`do_center_crop`, `crop_size`), rescale (`do_rescale`, `rescale_factor`) and normalise
(`do_normalize`, `image_mean`, `image_std`). kdc's image-folder reader resizes and crops
(kdc.data.readers), the adapter rescales and normalises (kdc.models.hf_image). A setting kdc
cannot honour, or a processor whose images are not the size the model takes, is a UserError
naming the file and field. Without the file, ViTImageProcessor's defaults at the model's size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdc.errors import UserError
from kdc.hf_files import PROCESSOR_FILE, VIT_MEAN_STD

BILINEAR, BICUBIC = 2, 3  # PIL.Image.Resampling values, as preprocessor_config.json stores them
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
VIT = "ViTImageProcessor"
# each class's own defaults (transformers/models/*/image_processing_*.py); a class without
# do_center_crop never crops, whatever its file says
_COMMON = {
    "do_resize": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": VIT_MEAN_STD,  # IMAGENET_STANDARD_MEAN / _STD
    "image_std": VIT_MEAN_STD,
}
_CROPPING = {"size": 256, "resample": BICUBIC, "do_center_crop": True, "crop_size": 224}
CLASS_DEFAULTS: dict[str, dict[str, Any]] = {
    VIT: {**_COMMON, "size": 224, "resample": BILINEAR},
    "DeiTImageProcessor": {**_COMMON, **_CROPPING},
    "BeitImageProcessor": {**_COMMON, **_CROPPING},
}
# the class AutoImageProcessor picks by config.json model_type for a file that names none
MODEL_TYPE_CLASSES = {
    "vit": VIT,
    "vit_msn": VIT,
    "deit": "DeiTImageProcessor",
    "beit": "BeitImageProcessor",
    "data2vec-vision": "BeitImageProcessor",
}


@dataclass(frozen=True)
class ImageReading:
    """How kdc's image-folder reader turns a file into pixels: a Pillow resize to `resize`
    (height, width; None: as stored) with filter `resample`, then with `crop` a centre crop
    (zero-padded where smaller) to `size`, the (height, width) every image must end at."""

    size: tuple[int, int]
    resize: tuple[int, int] | None
    resample: int = BICUBIC  # Pillow's default for Image.resize
    crop: bool = False


def _fail(file: Path, field: str, message: str, fix: str) -> UserError:
    return UserError(message, source=str(file), field=field, fix=fix)


def _load(file: Path) -> dict[str, Any]:
    """The JSON object in `file`."""
    fix = "save the model's image processor with save_pretrained"
    try:
        conf = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(file, "teacher.path", f"cannot read {PROCESSOR_FILE}: {e}", fix) from None
    if not isinstance(conf, dict):
        raise _fail(file, "teacher.path", f"{PROCESSOR_FILE} holds no JSON object", fix)
    return conf


def _class_name(conf: dict[str, Any], model_type: str | None, file: Path) -> str:
    """The processor class (a fast variant as its Pillow one): the file's image_processor_type,
    else its legacy feature_extractor_type, else the class of config.json's model_type."""
    named = conf.get("image_processor_type")
    key = "image_processor_type"
    if named is None and conf.get("feature_extractor_type") is not None:
        key, named = "feature_extractor_type", conf["feature_extractor_type"]
        named = str(named).replace("FeatureExtractor", "ImageProcessor")
    if named is None:
        named = MODEL_TYPE_CLASSES.get(str(model_type))
        if named is None:
            raise _fail(
                file,
                key,
                f"names no image processor class and model_type {model_type!r} has none kdc knows",
                f'add "image_processor_type": "{VIT}" (or the class the model was trained with)',
            )
    name = str(named).removesuffix("Fast")
    if name not in CLASS_DEFAULTS:
        raise _fail(
            file,
            key,
            f"{named} is not an image processor kdc reads images as ({', '.join(CLASS_DEFAULTS)})",
            "save the teacher with one of these, its resize, crop and normalisation unchanged",
        )
    return name


def _flag(conf: dict[str, Any], key: str, file: Path) -> bool:
    value = conf[key]
    if not isinstance(value, bool):
        raise _fail(
            file, key, f"{key} is {json.dumps(value)[:40]}, not true or false", "give a boolean"
        )
    return value


def _size(value: Any, key: str, cls: str, file: Path) -> tuple[int, int]:
    """A size setting as (height, width): an int is a square, a list [height, width] (as
    transformers' get_size_dict reads them); {"shortest_edge": …} is refused, as these classes'
    resize refuses it."""
    if isinstance(value, list) and len(value) == 2:
        value = {"height": value[0], "width": value[1]}
    elif isinstance(value, int) and not isinstance(value, bool):
        value = {"height": value, "width": value}
    hw = [value.get(k) for k in ("height", "width")] if isinstance(value, dict) else [None]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in hw):
        raise _fail(
            file,
            key,
            f"{key} is {json.dumps(value)[:60]}; {cls} takes a height and width",
            f'give {key} as {{"height": H, "width": W}}',
        )
    return hw[0], hw[1]


def _per_channel(values: Any, channels: int, key: str, file: Path) -> list[float]:
    """`values` (a number or a list) as one float per channel; a list of three for a
    one-channel model keeps its first."""
    vals = values if isinstance(values, list) else [values]
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals)
    if not numbers or not vals or 1 < len(vals) < channels:
        raise _fail(
            file,
            key,
            f"{key} is {json.dumps(values)[:40]}, not a number or {channels} numbers",
            "give one number per input channel",
        )
    vals = [float(v) for v in vals]
    return vals * channels if len(vals) == 1 else vals[:channels]


def read_processor(
    path: Path, image_size: Any, channels: Any, model_type: str | None = None
) -> dict[str, Any]:
    """The image processor of model directory `path` (whose config.json gives `image_size`,
    `channels`, `model_type`) as kdc applies it: a preprocessor_config.json with every setting
    explicit (what is saved with a student). A UserError where kdc cannot honour it, or where
    its images are not image_size x image_size."""
    file = path / PROCESSOR_FILE
    for key, value in (("image_size", image_size), ("num_channels", channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _fail(
                path / "config.json",
                key,
                f"{key} is {json.dumps(value)[:40]}, not a positive integer",
                "use a ViT-like model with square patches",
            )
    if not file.is_file():  # kdc's assumption, which a run warns of (kdc.preflight)
        return vit_defaults(image_size, channels)
    raw = _load(file)
    cls = _class_name(raw, model_type, file)
    defaults = CLASS_DEFAULTS[cls]
    # a null size or mean/std is the class default, as transformers reads it (a null do_* flag
    # skips that step there, a null resample is refused by some classes: refused here)
    nullable = ("size", "crop_size", "image_mean", "image_std")
    conf = {
        **defaults,
        **{k: v for k, v in raw.items() if k in defaults and (v is not None or k not in nullable)},
    }
    # the Pillow class, also for a Fast one's file: with torchvision installed, the Fast class
    # resizes with torchvision and its pixels would differ from those kdc trained on
    out: dict[str, Any] = {"image_processor_type": cls}
    for key in defaults:
        if key.startswith("do_"):
            out[key] = _flag(conf, key, file)
    resample = conf["resample"]
    if not isinstance(resample, int) or resample not in RESAMPLE_NAMES:
        names = ", ".join(f"{n} ({name})" for n, name in RESAMPLE_NAMES.items())
        raise _fail(
            file,
            "resample",
            f"resample {json.dumps(resample)[:40]} is not a Pillow filter",
            f"give one of {names}",
        )
    factor = conf["rescale_factor"]
    if not isinstance(factor, int | float) or isinstance(factor, bool) or factor <= 0:
        raise _fail(
            file,
            "rescale_factor",
            f"rescale_factor is {json.dumps(factor)[:40]}",
            "give a positive number, 1/255 for 8-bit images",
        )
    height, width = _size(conf["size"], "size", cls, file)
    out.update(
        size={"height": height, "width": width}, resample=resample, rescale_factor=float(factor)
    )
    last = "size" if out["do_resize"] else None
    if "crop_size" in defaults:
        height, width = _size(conf["crop_size"], "crop_size", cls, file)
        out["crop_size"] = {"height": height, "width": width}
        last = "crop_size" if out["do_center_crop"] else last
    for key in ("image_mean", "image_std"):
        out[key] = _per_channel(conf[key], channels, key, file)
    if last and (out[last]["height"], out[last]["width"]) != (image_size, image_size):
        got = f"{out[last]['width']}x{out[last]['height']}"
        raise _fail(
            file,
            last,
            f"{cls} makes {got} images but the model takes {image_size}x{image_size} "
            "(config.json image_size)",
            f'set {last} to {{"height": {image_size}, "width": {image_size}}}',
        )
    return out


def vit_defaults(image_size: int, channels: int) -> dict[str, Any]:
    """ViTImageProcessor's settings at `image_size` x `image_size`: what kdc assumes of a model
    without preprocessor_config.json."""
    side = {"height": image_size, "width": image_size}
    vit = {**CLASS_DEFAULTS[VIT], "size": side, "image_processor_type": VIT}
    return {**vit, **{k: [VIT_MEAN_STD] * channels for k in ("image_mean", "image_std")}}


def processor_reading(processor: dict[str, Any], image_size: int) -> ImageReading:
    """How an image folder is read for a model taking `image_size` squares with `processor`
    (read_processor's)."""
    resize = processor["size"] if processor["do_resize"] else None
    return ImageReading(
        (image_size, image_size),
        (resize["height"], resize["width"]) if resize else None,
        processor["resample"],
        bool(processor.get("do_center_crop")),
    )


def pixel_scale(processor: dict[str, Any]) -> float:
    """What kdc's pixels in [0, 1] (x / 255) are multiplied by to be the processor's rescaled
    ones: 255 x rescale_factor, 255 without rescaling."""
    return 255.0 * processor["rescale_factor"] if processor["do_rescale"] else 255.0
