"""The input contract of an engine, for the person deploying it. An image classifier's: how
kdc's image readers (kdc.data.readers) and, for a vision transformer, its adapter
(kdc.models.hf_image: resize to the model's size, the image processor's mean/std) turned images
into the engine's input, and which class each output is; a CNN student has no other
preprocessing file, a vision transformer's bundle also carries its image processor config. A
text model's: the token inputs' shapes and dtypes and the tokenizer call that makes them."""

from __future__ import annotations

from typing import Any

INPUT_CONTRACT = "input.json"  # its name in a device bundle's preprocessing/

# What kdc.data.readers does per data format (read_digits, read_imagefolder), step by step.
_DIGITS = {
    "source": "scikit-learn's 8x8 digits (sklearn.datasets.load_digits().images)",
    "steps": [
        "8x8 grayscale intensities 0..16 (scikit-learn's digits), no resize",
        "divide by 16.0: float32 in [0, 1]",
        "add the channel axis: 1x8x8, stack into N x 1 x 8 x 8",
    ],
    "color": "grayscale (1 channel)",
    "scale": "x / 16.0",
    "size": 8,  # read as it is, whatever the model's size
}
_FOLDER = {
    "source": "an image folder (<folder>/<class>/<image>), read with Pillow",
    "steps": [
        "Image.convert('RGB') (grayscale replicated to 3 channels, alpha dropped)",
        "Image.resize(({width}, {height})) with Pillow's default bicubic filter: aspect ratio "
        "not kept, no crop",
        "float32, HWC to CHW, divide by 255.0: values in [0, 1]",
    ],
    "color": "RGB (3 channels, R first)",
    "scale": "x / 255.0",
}
_FOLDER_GRAY = {  # data.channels: 1
    **_FOLDER,
    "steps": [
        "Image.convert('L') (grayscale: ITU-R 601-2 luma of RGB, alpha dropped)",
        *_FOLDER["steps"][1:],
    ],
    "color": "grayscale (1 channel)",
}


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
    read_size: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    max_batch: int | None = None,
) -> dict[str, Any]:
    """The contract of an engine taking `input_name` of `input_shape` (N x C x H x W) read from
    `data_source` (a Dataset's `source`: `sklearn:digits` or `imagefolder:<path>`) at
    `read_size` (default: the input's), then resized to the input's size where that differs and
    normalised by `mean`/`std` per channel where given (a vision transformer's adapter); the
    engine takes batches of N rows, or 1 to `max_batch` where given."""
    _, channels, height, width = input_shape
    how = _DIGITS if data_source == "sklearn:digits" else _FOLDER_GRAY if channels == 1 else _FOLDER
    size = how.get("size") or read_size  # as the reader read it
    read = (size or height, size or width)
    steps = [step.format(width=read[1], height=read[0]) for step in how["steps"]]
    if read != (height, width):
        steps.append(
            f"resize to {width}x{height}: bilinear with antialiasing "
            "(torch.nn.functional.interpolate(..., mode='bilinear', antialias=True))"
        )
    if mean is not None and std is not None:
        steps.append(f"per channel: (x - mean) / std, mean {mean}, std {std}")
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
            "value_range": [0.0, 1.0] if mean is None else None,
            "scale": how["scale"],
            "mean": mean,
            "std": std,
            "normalization": "none beyond the scaling (no mean/std subtracted)"
            if mean is None
            else "(x - mean) / std per channel, after the scaling",
        },
        "batch": batch_range(input_shape[0], max_batch),
        "preprocessing": {"source": how["source"], "steps": steps},
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
) -> dict[str, Any]:
    """The contract of a text engine taking `inputs` (name → (shape, dtype)): every row padded
    and truncated to `max_length` tokens, as kdc encoded the rows it trained and verified on;
    the engine is built for exactly these shapes (batches 1 to `max_batch` where given), so a
    tokenizer left at its defaults (no padding, its own model_max_length) gives inputs it
    rejects."""
    batch = next(iter(inputs.values()))[0][0]
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
            "call": f"tokenizer(texts, padding='max_length', truncation=True, "
            f"max_length={max_length}, padding_side='right', return_tensors='np')",
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
