"""Whether a teacher built by code (entrypoint, torchvision, timm) exports to ONNX, checked
before a run's first stage: the student is built from the teacher's modules, so an operator
the TorchScript exporter cannot export (torch.fft in its forward) would otherwise be found at
the export stage, after the search and the distillation."""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

from kdc.config import KdcConfig

if TYPE_CHECKING:
    from torch import nn

# a larger teacher is left to the export stage: building and tracing it would slow every run
MAX_CHECKED_PARAMS = 5_000_000


def check_onnx_export(cfg: KdcConfig, meta: nn.Module, shape: tuple[int, ...]) -> None:
    """Raise the export stage's UserError (an operator the TorchScript exporter cannot export
    at `export.opset`) by exporting the teacher into memory on two inputs of `shape`, built
    again off the meta device `meta` was built on, with random weights; a teacher of more than
    MAX_CHECKED_PARAMS parameters is not checked, other failures are left to the run's checks."""
    import numpy as np

    from kdc.errors import UserError
    from kdc.export.onnx_export import torch_graph
    from kdc.models import vision_source
    from kdc.models.vision import VisionAdapter

    if cfg.export.exporter == "optimum" or sum(p.numel() for p in meta.parameters()) > (
        MAX_CHECKED_PARAMS
    ):
        return
    example = {"pixel_values": np.zeros((2, *shape), np.float32)}
    try:
        adapter = VisionAdapter.build(vision_source(cfg), None)
        with warnings.catch_warnings(), adapter.exporting():
            warnings.simplefilter("ignore")
            torch_graph(adapter, example, io.BytesIO(), cfg.export.opset, "logits")
    except UserError as e:
        raise e.located(cfg.source_file) from None
    except Exception:  # noqa: BLE001 - user code failing otherwise: the run's own checks say so
        return
