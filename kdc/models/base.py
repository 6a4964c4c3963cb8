"""The interface every teacher/student adapter implements."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdc.data.batching import EVAL_BATCH, map_by_length
from kdc.models.device import module_device, on_device


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
    def encode(
        self, features: Any, progress: Callable[[int], None] | None = None
    ) -> dict[str, np.ndarray]:
        """Model inputs (numpy, batch first) for a list of texts or an image array (`progress`
        told how many rows are encoded as they are)."""

    @abstractmethod
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """ONNX dynamic axes of inputs and of the output `logits`."""

    @abstractmethod
    def architecture(self) -> dict[str, Any]:
        """A JSON-able spec from which `load_student` rebuilds this model's shapes."""

    @abstractmethod
    def save(self, directory: Path) -> list[Path]:
        """Write weights (safetensors) and the architecture spec into `directory` (created if
        missing; a run's student directory is a fresh one, `kdc.stages.distill.save_student`);
        return the files written."""

    def exporting(self) -> contextlib.AbstractContextManager[None]:
        """Context in which `module` is exported to ONNX (a graph form the runtimes fuse)."""
        return contextlib.nullcontext()

    def feature_modules(self) -> dict[str, nn.Module]:
        """Named submodules whose outputs distillation losses and proxies may tap."""
        return {}

    def classifiers(self) -> list[nn.Linear]:
        """The Linear layer(s) whose outputs are the logits, averaged when several (one per
        token read); the last Linear layer unless a model says otherwise."""
        linears = [m for m in self.module.modules() if isinstance(m, nn.Linear)]
        return linears[-1:]

    def params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def forward_numpy(
        self,
        inputs: dict[str, np.ndarray],
        batch_size: int = EVAL_BATCH,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Run the PyTorch module in eval mode, on its device, over all rows of `inputs` (text
        by length; `progress` told each batch's rows); outputs on the host."""
        self.module.eval()
        device = module_device(self.module)

        def run(batch: dict[str, np.ndarray]) -> np.ndarray:
            feed = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
            return self.module(**on_device(feed, device)).float().cpu().numpy()

        with torch.inference_mode():
            return map_by_length(run, inputs, batch_size, progress=progress)
