"""The interface every teacher/student adapter implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut the trailing sequence positions that no row of the batch attends to (text inputs are
    padded to `max_length`; a batch only needs its longest row). Masked positions do not change
    any output, so results equal the padded batch's up to float rounding."""
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return batch
    used = torch.nonzero(mask.any(dim=0))
    length = int(used[-1]) + 1 if len(used) else 1
    return cut_positions(batch, length)


def cut_positions(batch: dict, length: int) -> dict:
    """Text inputs (2-D, as wide as the attention mask; numpy or torch) cut to their first
    `length` positions; other inputs and batches without a 2-D mask unchanged."""
    mask = batch.get("attention_mask")
    if mask is None or mask.ndim != 2 or mask.shape[1] <= length:
        return batch
    width = mask.shape[1]
    return {
        k: v[:, :length] if v.ndim == 2 and v.shape[1] == width else v for k, v in batch.items()
    }


class ModelAdapter(ABC):
    """A model kdc can encode data for, distil, export, save and rebuild.

    `module(**inputs)` returns logits (B×K) for classification, or the embedding (B×D) for
    sentence-embedding. Inputs are named tensors whose names are `input_names`, encoded from a
    Split's features by `encode`.
    """

    family: str  # "transformer" | "cnn"
    module: nn.Module
    input_names: list[str]

    @abstractmethod
    def encode(self, features: Any) -> dict[str, np.ndarray]:
        """Model inputs (numpy, batch first) for a list of texts or an image array."""

    @abstractmethod
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """ONNX dynamic axes of inputs and of the output `logits`."""

    @abstractmethod
    def architecture(self) -> dict[str, Any]:
        """A JSON-able spec from which `load_student` rebuilds this model's shapes."""

    @abstractmethod
    def save(self, directory: Path) -> list[Path]:
        """Write weights (safetensors) and the architecture spec; return the files written."""

    def feature_modules(self) -> dict[str, nn.Module]:
        """Named submodules whose outputs distillation losses and proxies may tap."""
        return {}

    def params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def forward_numpy(self, inputs: dict[str, np.ndarray], batch_size: int = 64) -> np.ndarray:
        """Run the PyTorch module in eval mode over all rows of `inputs`."""
        self.module.eval()
        n = len(next(iter(inputs.values())))
        outs = []
        with torch.inference_mode():
            for s in range(0, n, batch_size):
                batch = trim_padding(
                    {k: torch.from_numpy(v[s : s + batch_size]) for k, v in inputs.items()}
                )
                outs.append(self.module(**batch).float().numpy())
        return np.concatenate(outs) if outs else np.zeros((0,), np.float32)
