"""Hugging Face vision transformers (ViT, DeiT: `*ForImageClassification` models whose blocks
are one ModuleList) from a local model directory.

kdc's image data are float N×C×H×W in [0, 1]; `encode` does what the model's image processor
does after rescaling: resize to the model's image size and normalise with its mean and std
(preprocessor_config.json, else ViT's 0.5 / 0.5, which a run warns of: kdc.preflight). The
engines take those `pixel_values`, and the processor config is saved beside every student (and
so in a device bundle's preprocessing/). Images must have the model's channel count.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdc.data import channel_mismatch
from kdc.errors import UserError
from kdc.hf_files import PROCESSOR_FILE, VIT_GEOMETRY, VIT_MEAN_STD, check_model_dir
from kdc.models.hf import TransformerAdapter, load_model
from kdc.rundir import write_json

# heads that average the logits of one classifier per special token, by class: the classifier
# attributes in token order. Any other model's classifier is its last Linear layer.
TOKEN_CLASSIFIERS = {
    "DeiTForImageClassificationWithTeacher": ("cls_classifier", "distillation_classifier"),
}


class PixelLogits(nn.Module):
    """Wraps a HF image classifier so `forward(pixel_values)` returns the logits tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def _per_channel(values: Any, channels: int, path: Path, key: str) -> list[float]:
    """`values` (a number or a list) as one float per channel; a list of three for a
    one-channel model keeps its first."""
    vals = values if isinstance(values, list) else [values]
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals)
    if not numbers or not vals or 1 < len(vals) < channels:
        raise UserError(
            f"{key} is {json.dumps(values)[:40]}, not a number or {channels} numbers",
            source=str(path / PROCESSOR_FILE),
            field=key,
            fix="give one number per input channel",
        )
    vals = [float(v) for v in vals]
    return vals * channels if len(vals) == 1 else vals[:channels]


def read_processor(path: Path, channels: int) -> dict[str, Any]:
    """Normalisation of a model directory's image processor: {"image_mean", "image_std"} per
    channel (identity when `do_normalize` is false)."""
    conf: dict[str, Any] = {}
    file = path / PROCESSOR_FILE
    if file.is_file():
        try:
            conf = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(
                f"cannot read {PROCESSOR_FILE}: {e}",
                source=str(file),
                field="teacher.path",
                fix="save the model's image processor with save_pretrained",
            ) from None
        if not isinstance(conf, dict):
            raise UserError(
                f"{PROCESSOR_FILE} holds no JSON object",
                source=str(file),
                field="teacher.path",
                fix="save the model's image processor with save_pretrained",
            )
    if not conf.get("do_normalize", True):
        return {"image_mean": [0.0] * channels, "image_std": [1.0] * channels}
    return {
        k: _per_channel(conf.get(k, VIT_MEAN_STD), channels, path, k)
        for k in ("image_mean", "image_std")
    }


class HFImageAdapter(TransformerAdapter):
    """An image classifier (ViT-like) with its normalisation; input `pixel_values`. DeiT has a
    distillation token after [CLS]; its WithTeacher head averages a classifier on each."""

    adapter_name = "hf-image"
    input_names = ["pixel_values"]

    def __init__(self, model: nn.Module, processor: dict[str, Any]) -> None:
        self.model = model
        self.processor = processor
        self.module = PixelLogits(model)

    @classmethod
    def from_dir(cls, path: Path, *, trust_remote_code: bool = False) -> HFImageAdapter:
        from transformers import AutoModelForImageClassification

        check_model_dir(path, "teacher.path")
        kw: dict[str, Any] = {"local_files_only": True, "trust_remote_code": trust_remote_code}
        model = load_model(path, AutoModelForImageClassification, kw, trust_remote_code)
        for key in VIT_GEOMETRY:
            if not isinstance(getattr(model.config, key, None), int):
                raise UserError(
                    f"{type(model).__name__} has no integer '{key}' in its config",
                    source=str(path / "config.json"),
                    field="teacher.path",
                    fix="use a ViT-like model with square patches",
                )
        return cls(model, read_processor(path, model.config.num_channels))

    def _like(self, model: nn.Module) -> HFImageAdapter:
        return HFImageAdapter(model, self.processor)

    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    def encode(self, features: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        channels = int(self.config.num_channels)
        if x.dim() != 4 or x.shape[1] != channels:  # else a one-channel image broadcasts to three
            got = x.shape[1] if x.dim() == 4 else f"{x.dim()}-d"
            raise channel_mismatch(channels, got, "config.json num_channels")
        if x.shape[-2:] != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            x = nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True)
        mean = torch.tensor(self.processor["image_mean"]).view(1, -1, 1, 1)
        std = torch.tensor(self.processor["image_std"]).view(1, -1, 1, 1)
        return {"pixel_values": ((x - mean) / std).numpy()}

    @contextlib.contextmanager
    def exporting(self) -> Iterator[None]:
        """Export with the eager attention (scores scaled after Q·Kᵀ; the SDPA form scales Q and
        K apart), the pattern ONNX Runtime's transformer optimizer fuses into Attention."""
        config, was = self.config, self.config._attn_implementation
        config._attn_implementation = "eager"
        try:
            yield
        finally:
            config._attn_implementation = was

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {"pixel_values": {0: "batch"}, self.output_name: {0: "batch"}}

    def _inputs_meta(self) -> dict[str, Any]:
        return {k: getattr(self.config, k) for k in VIT_GEOMETRY}

    def _save_preprocessing(self, directory: Path) -> None:
        size = self.image_size
        write_json(
            directory / PROCESSOR_FILE,
            {
                "image_processor_type": "ViTImageProcessor",
                "do_resize": True,
                "size": {"height": size, "width": size},
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                **self.processor,
            },
        )

    @property
    def special_tokens(self) -> int:
        """Tokens before the patches ([CLS]; DeiT's distillation token too): the position
        embeddings' rows beyond one per patch; [CLS] alone without them (BEiT's are relative)."""
        emb = getattr(self.model.base_model, "embeddings", None)
        pos = getattr(emb, "position_embeddings", None)
        if not isinstance(pos, nn.Parameter):
            return 1
        return pos.shape[1] - (self.image_size // int(self.config.patch_size)) ** 2

    def classifiers(self) -> list[nn.Linear]:
        names = TOKEN_CLASSIFIERS.get(type(self.model).__name__)
        return [getattr(self.model, n) for n in names] if names else super().classifiers()

    def architecture(self) -> dict[str, Any]:
        return {
            **super().architecture(),
            "num_labels": self.config.num_labels,
            "special_tokens": self.special_tokens,
            "classifier_tokens": len(self.classifiers()),
            # BEiT-style heads read the mean of the patch tokens, not [CLS]
            "pooling": "mean" if getattr(self.config, "use_mean_pooling", False) else "cls",
        }

    @classmethod
    def load(cls, directory: Path) -> HFImageAdapter:
        """A student saved by `save`."""
        return cls.from_dir(directory)
