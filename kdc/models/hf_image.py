"""Hugging Face vision transformers (ViT, DeiT: `*ForImageClassification` models whose blocks
are one ModuleList) from a local model directory.

kdc's image data are float N×C×H×W in [0, 1] (x / 255), an image folder read as the model's
image processor reads images (kdc.image_processor: its resize filter, size and centre crop);
`encode` does the rest of what the processor does: rescale and normalise with its mean and std
(preprocessor_config.json, else ViTImageProcessor's defaults, which a run warns of:
kdc.preflight), after resizing data of another size (scikit-learn's digits) to the model's.
The engines take those `pixel_values`, and the processor config, every setting explicit, is
saved beside every student (and so in a device bundle's preprocessing/). Images must have the
model's channel count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdc.data import channel_mismatch
from kdc.errors import UserError
from kdc.hf_files import PROCESSOR_FILE, VIT_GEOMETRY, check_model_dir
from kdc.image_processor import pixel_scale, read_processor, vit_defaults
from kdc.models.hf import TransformerAdapter, load_model
from kdc.rundir import write_json

ENCODE_IMAGES = 128  # images resized and normalized at a time (77 MB each step at 3x224x224)

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


class HFImageAdapter(TransformerAdapter):
    """An image classifier (ViT-like) with its normalisation; input `pixel_values`. DeiT has a
    distillation token after [CLS]; its WithTeacher head averages a classifier on each.
    `processor` is kdc.image_processor.read_processor's; without it ViTImageProcessor's
    defaults at the model's size."""

    adapter_name = "hf-image"
    input_names = ["pixel_values"]

    def __init__(self, model: nn.Module, processor: dict[str, Any] | None = None) -> None:
        self.model = model
        c = model.config
        self.processor = processor or vit_defaults(c.image_size, c.num_channels)
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
        c = model.config
        return cls(model, read_processor(path, c.image_size, c.num_channels, c.model_type))

    def _like(self, model: nn.Module) -> HFImageAdapter:
        return HFImageAdapter(model, self.processor)

    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    def encode(
        self, features: np.ndarray, progress: Callable[[int], None] | None = None
    ) -> dict[str, np.ndarray]:
        """Pixel values resized and normalized as the image processor says, `ENCODE_IMAGES` rows
        at a time into the array returned (`progress` told each chunk's rows): 2,000 images
        resized to 224 px all at once took 3.6 GB at peak for the 1.2 GB returned."""
        features = np.asarray(features)
        channels, side = int(self.config.num_channels), self.image_size
        if features.ndim != 4 or features.shape[1] != channels:  # else one channel broadcasts
            got = features.shape[1] if features.ndim == 4 else f"{features.ndim}-d"
            raise channel_mismatch(channels, got, "config.json num_channels")
        out = np.empty((len(features), channels, side, side), np.float32)
        scale = pixel_scale(self.processor)
        mean = torch.tensor(self.processor["image_mean"]).view(1, -1, 1, 1)
        std = torch.tensor(self.processor["image_std"]).view(1, -1, 1, 1)
        for start in range(0, len(features), ENCODE_IMAGES):
            chunk = features[start : start + ENCODE_IMAGES]
            x = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32))
            if x.shape[-2:] != (side, side):
                x = nn.functional.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
            y = torch.mul(x, scale, out=torch.from_numpy(out[start : start + len(chunk)]))
            if self.processor["do_normalize"]:
                y.sub_(mean).div_(std)
            if progress is not None:
                progress(len(chunk))
        return {"pixel_values": out}

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
        write_json(directory / PROCESSOR_FILE, self.processor)

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
