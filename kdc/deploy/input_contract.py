"""The input contract of an engine, for the person deploying it. An image classifier's: how
kdc's image readers (kdc.data.readers: for a vision transformer its image processor's resize
filter, size and centre crop) and, for a vision transformer, its adapter (kdc.models.hf_image:
the processor's rescaling and mean/std) turned images into the engine's input, and which class
each output is; a CNN student has no other preprocessing file, a vision transformer's bundle
also carries its image processor config, which describes the same steps. A text model's: the
token inputs' shapes and dtypes and the tokenizer call that makes them."""

from __future__ import annotations

from typing import Any

from kdc.image_processor import RESAMPLE_NAMES, ImageReading, pixel_scale, processor_reading

INPUT_CONTRACT = "input.json"  # its name in a device bundle's preprocessing/

# What kdc.data.images does per data format (read_digits, read_imagefolder).
_DIGITS = {
    "source": "scikit-learn's 8x8 digits (sklearn.datasets.load_digits().images)",
    "steps": [
        "8x8 grayscale intensities 0..16 (scikit-learn's digits), no resize",
        "divide by 16.0: float32 in [0, 1]",
        "add the channel axis: 1x8x8, stack into N x 1 x 8 x 8",
    ],
    "color": "grayscale (1 channel)",
    "scale": "x / 16.0",
}
# what kdc.data.images.eight_bit does first
_WIDE = (
    "; a 16-bit grayscale image, Pillow's I;16 or I, first to 8 bits as value >> 8; a float"
    " image, Pillow's F, first to 8 bits rounded, values within [0, 1] times 255"
)
_FOLDER = {
    "source": "an image folder (<folder>/<class>/<image>), read with Pillow",
    "steps": [f"Image.convert('RGB') (grayscale replicated to 3 channels, alpha dropped{_WIDE})"],
    "color": "RGB (3 channels, R first)",
    "scale": "x / 255.0",
}
_FOLDER_GRAY = {  # data.channels: 1
    **_FOLDER,
    "steps": [f"Image.convert('L') (grayscale: ITU-R 601-2 luma of RGB, alpha dropped{_WIDE})"],
    "color": "grayscale (1 channel)",
}


def _reading_steps(reading: ImageReading, processor: bool) -> list[str]:
    """read_imagefolder's resize, crop and scaling as `reading` says (`processor`: as an image
    processor's preprocessor_config.json gives them, else Pillow's default filter)."""
    height, width = reading.size
    crop = "" if reading.crop else ", no crop"
    if reading.resize:
        h, w = reading.resize
        name = RESAMPLE_NAMES[reading.resample]
        why = (
            f"preprocessor_config.json resample {reading.resample}" if processor else "its default"
        )
        steps = [
            f"Image.resize(({w}, {h}), Image.Resampling.{name.upper()}) (Pillow's {name} filter, "
            f"{why}): aspect ratio not kept{crop}"
        ]
    else:
        steps = [f"no resize (preprocessor_config.json do_resize false){crop}"]
    if reading.crop:
        steps.append(
            f"centre crop to {width}x{height}: top (height - {height}) // 2, left "
            f"(width - {width}) // 2, zero-padded where smaller (transformers' center_crop)"
        )
    return [*steps, "float32, HWC to CHW, divide by 255.0: values in [0, 1]"]


def batch_range(batch: int, max_batch: int | None) -> dict[str, Any]:
    """The contract's `batch` entry: the rows an engine takes per call."""
    if max_batch is None:
        return {"min": batch, "opt": batch, "max": batch, "note": f"exactly {batch} row(s) a call"}
    return {
        "min": 1,
        "opt": batch,
        "max": max_batch,
        "note": f"1 to {max_batch} rows a call (the first dimension of every input and of the "
        f"output; the engine is tuned for {batch}); the other dimensions are as given",
    }


def image_input_contract(
    data_source: str,
    input_name: str,
    input_shape: list[int],
    class_names: list[str],
    output_name: str = "logits",
    *,
    processor: dict[str, Any] | None = None,
    max_batch: int | None = None,
    normalize: tuple[list[float], list[float]] | None = None,
) -> dict[str, Any]:
    """The contract of an engine taking `input_name` of `input_shape` (N x C x H x W) read from
    `data_source` (a Dataset's `source`: `sklearn:digits` or `imagefolder:<path>`): a vision
    transformer's image folder read as its `processor` (kdc.image_processor.read_processor's)
    resizes and crops, then rescaled and normalised by it, a CNN's read at the input's size;
    the engine takes batches of N rows, or 1 to `max_batch` where given; `normalize`: a CNN's
    (data.mean, data.std)."""
    _, channels, height, width = input_shape
    digits = data_source == "sklearn:digits"
    how = _DIGITS if digits else _FOLDER_GRAY if channels == 1 else _FOLDER
    reading = None
    if not digits:
        reading = (
            processor_reading(processor, height)
            if processor
            else ImageReading((height, width), (height, width))
        )
    steps = list(how["steps"]) + (_reading_steps(reading, bool(processor)) if reading else [])
    read = (8, 8) if digits else (height, width)
    if read != (height, width):
        steps.append(
            f"resize to {width}x{height}: bilinear with antialiasing "
            "(torch.nn.functional.interpolate(..., mode='bilinear', antialias=True))"
        )
    scale, mean, std = 1.0, None, None
    if processor:
        scale = pixel_scale(processor)
        if not processor["do_rescale"]:
            steps.append("multiply by 255 (preprocessor_config.json do_rescale false)")
        elif scale != 1.0:
            steps.append(
                f"multiply by {scale:g} (preprocessor_config.json rescale_factor "
                f"{processor['rescale_factor']:g} x 255)"
            )
        if processor["do_normalize"]:
            mean, std = processor["image_mean"], processor["image_std"]
            steps.append(f"per channel: (x - mean) / std, mean {mean}, std {std}")
    elif normalize:  # a CNN's data.mean and data.std
        mean, std = normalize
        steps.append(f"per channel: (x - mean) / std, mean {mean}, std {std} (data.mean, data.std)")
    resize = reading.resize if reading else None
    return {
        "input": {
            "name": input_name,
            "shape": input_shape,
            "layout": "NCHW",
            "dtype": "float32",
            "channels": channels,
            "height": height,
            "width": width,
            "color": how["color"],
            "value_range": [0.0, scale] if mean is None else None,
            "scale": how["scale"] + (f", then x {scale:g}" if scale != 1.0 else ""),
            "mean": mean,
            "std": std,
            "normalization": "none beyond the scaling (no mean/std subtracted)"
            if mean is None
            else "(x - mean) / std per channel, after the scaling",
        },
        "batch": batch_range(input_shape[0], max_batch),
        "preprocessing": {
            "source": how["source"],
            "resize": {
                "height": resize[0],
                "width": resize[1],
                "resample": RESAMPLE_NAMES[reading.resample],
                "pil_resample": reading.resample,
            }
            if reading and resize
            else None,
            "center_crop": {"height": height, "width": width} if reading and reading.crop else None,
            "steps": steps,
        },
        "output": {
            "name": output_name,
            "shape": [input_shape[0], len(class_names)],
            "meaning": "one score per class, in `classes` order (the model's own outputs, as kdc "
            "verified them); the highest is the predicted class",
            "classes": class_names,
        },
    }


def text_input_contract(
    inputs: dict[str, tuple[list[int], str]],
    max_length: int,
    class_names: list[str],
    output_name: str = "logits",
    max_batch: int | None = None,
    pair_columns: list[str] | None = None,
    lower_case: bool = False,
) -> dict[str, Any]:
    """The contract of a text engine taking `inputs` (name → (shape, dtype)): every row padded
    and truncated to `max_length` tokens, as kdc encoded the rows it trained and verified on;
    the engine is built for exactly these shapes (batches 1 to `max_batch` where given), so a
    tokenizer left at its defaults (no padding, its own model_max_length) gives inputs it
    rejects. With `pair_columns` each row is a pair of texts (those data columns, in order);
    with `lower_case` the texts are lower-cased first (a sentence-transformers model's
    do_lower_case, which its tokenizer does not do)."""
    batch = next(iter(inputs.values()))[0][0]
    lowered = "[t.lower() for t in {}]" if lower_case else "{}"
    texts = lowered.format("texts") + (", " + lowered.format("text_pairs") if pair_columns else "")
    out = {"name": output_name}
    if class_names:
        out.update(
            shape=[batch, len(class_names)],
            meaning="one score per class, in `classes` order; the highest is the predicted class",
            classes=class_names,
        )
    else:
        out["meaning"] = "the text's embedding (one vector per row)"
    return {
        "inputs": {k: {"shape": shape, "dtype": dtype} for k, (shape, dtype) in inputs.items()},
        "batch": batch_range(batch, max_batch),
        "tokenizer": {
            "files": "preprocessing/ (load with transformers.AutoTokenizer.from_pretrained)",
            "padding": "max_length",
            "truncation": True,
            "max_length": max_length,
            "padding_side": "right",
            "call": f"tokenizer({texts}, "
            f"padding='max_length', truncation=True, max_length={max_length}, "
            "padding_side='right', return_tensors='np')",
            **(
                {
                    "text_pair": f"each row is a pair of texts: `texts` the first (data column "
                    f"'{pair_columns[0]}'), `text_pairs` the second ('{pair_columns[1]}'); "
                    "truncation cuts the longer one first"
                }
                if pair_columns
                else {}
            ),
            "note": (
                "the engine takes exactly these shapes"
                if max_batch is None
                else f"the engine takes these shapes with 1 to {max_batch} rows (see batch)"
            )
            + ": pad every row to max_length on the right (the tokenizer's default pads "
            "nothing), then feed the inputs named here, each cast to its dtype",
        },
        "output": out,
    }
