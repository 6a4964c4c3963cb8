"""Image classifiers given as torchvision/timm names or `module:function` entrypoints."""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from kdc.errors import UserError
from kdc.models.base import ModelAdapter
from kdc.models.shapes import apply_shapes, tensor_shapes
from kdc.models.weights import load_into, load_state_dict
from kdc.rundir import atomic_path, write_json


def _entrypoint(source: dict) -> nn.Module:
    mod_name, fn_name = source["entrypoint"].split(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise UserError(f"cannot import '{source['entrypoint']}' ({e})", field="teacher.entrypoint",
                        fix="use 'package.module:function' importable from the config's folder"
                        ) from None
    model = fn(**source.get("kwargs", {}))
    if not isinstance(model, nn.Module):
        raise UserError(f"'{source['entrypoint']}' returned {type(model).__name__}, not a Module",
                        field="teacher.entrypoint", fix="return a torch.nn.Module")
    return model


def _torchvision(source: dict) -> nn.Module:
    try:
        import torchvision
    except ImportError:
        raise UserError("torchvision is not installed", field="teacher.name",
                        fix="pip install torchvision matching your torch") from None
    return torchvision.models.get_model(source["name"], weights=None, **source.get("kwargs", {}))


def _timm(source: dict) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise UserError("timm is not installed", field="teacher.name",
                        fix="pip install timm") from None
    return timm.create_model(source["name"], pretrained=False, **source.get("kwargs", {}))


BUILDERS = {"entrypoint": _entrypoint, "torchvision": _torchvision, "timm": _timm}


class VisionAdapter(ModelAdapter):
    """An nn.Module taking `pixel_values` (B×C×H×W float32) and returning logits."""

    family = "cnn"
    input_names = ["pixel_values"]

    def __init__(self, module: nn.Module, source: dict[str, Any]) -> None:
        self.module = module
        self.source = source

    @classmethod
    def build(cls, source: dict[str, Any], weights: Path | None) -> VisionAdapter:
        module = BUILDERS[source["kind"]](source)
        if weights is not None:
            load_into(module, load_state_dict(weights), str(weights))
        return cls(module, source)

    def encode(self, features: np.ndarray) -> dict[str, np.ndarray]:
        return {"pixel_values": np.ascontiguousarray(features, dtype=np.float32)}

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {"pixel_values": {0: "batch"}, "logits": {0: "batch"}}

    def architecture(self) -> dict[str, Any]:
        convs = [m.out_channels for m in self.module.modules() if isinstance(m, nn.Conv2d)]
        return {"adapter": "vision", "family": "cnn", "conv_channels": convs,
                "params": self.params()}

    def feature_modules(self) -> dict[str, nn.Module]:
        """The input of the last Linear layer is the pooled feature."""
        linears = [(n, m) for n, m in self.module.named_modules() if isinstance(m, nn.Linear)]
        return {"classifier": linears[-1][1]} if linears else {}

    def shrink(self, width: float, divisor: int, example: dict[str, np.ndarray]) -> VisionAdapter:
        """A copy with each conv's channels cut to `width` (rounded to `divisor`) by L2 magnitude
        with torch-pruning, weights kept from this model."""
        import torch_pruning as tp

        student = copy.deepcopy(self.module).eval()
        ex = torch.from_numpy(example["pixel_values"][:1])
        head = [m for m in student.modules() if isinstance(m, nn.Linear)][-1:]
        min_c = min((m.out_channels for m in student.modules() if isinstance(m, nn.Conv2d)),
                    default=divisor)
        pruner = tp.pruner.MetaPruner(
            student, ex, importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=1.0 - width, ignored_layers=head,
            round_to=divisor if min_c * width >= divisor else None)
        pruner.step()
        return VisionAdapter(student, self.source)

    def save(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / "model.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in self.module.state_dict().items()}, str(tmp))
        meta = {"adapter": "vision", "source": self.source,
                "shapes": tensor_shapes(self.module), "architecture": self.architecture()}
        return [directory / "model.safetensors", write_json(directory / "kdc_model.json", meta)]

    @classmethod
    def load(cls, directory: Path) -> VisionAdapter:
        meta = json.loads((directory / "kdc_model.json").read_text())
        module = BUILDERS[meta["source"]["kind"]](meta["source"])
        apply_shapes(module, meta["shapes"])
        load_into(module, load_state_dict(directory / "model.safetensors", "student"),
                  str(directory), field="student")
        return cls(module, meta["source"])
