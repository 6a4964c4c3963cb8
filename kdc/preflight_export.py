"""Whether the teacher exports to ONNX, checked before a run's first stage (else found at the
export stage, after the search and the distillation): `export.exporter: optimum` with a teacher
optimum-onnx never exports; an operator the TorchScript exporter cannot export (torch.fft in
its forward) in a teacher built by code (entrypoint, torchvision, timm), whose modules the
student is built from. That graph is exported without its weights (ResNet-50: about 2 s and
320 MiB more, docs/internals.md), so teachers of any size are checked."""

from __future__ import annotations

import io
import warnings

from kdc.config import KdcConfig


def check_onnx_export(cfg: KdcConfig, shape: tuple[int, ...]) -> None:
    """Raise the export stage's UserError (an operator the TorchScript exporter cannot export
    at `export.opset`) by exporting the teacher's graph into memory on two inputs of `shape`,
    the teacher built with random weights; other failures are left to the run's checks."""
    import numpy as np

    from kdc.errors import UserError
    from kdc.export.onnx_export import torch_graph
    from kdc.models import vision_source
    from kdc.models.vision import VisionAdapter

    if cfg.export.exporter == "optimum":
        return
    example = {"pixel_values": np.zeros((2, *shape), np.float32)}
    try:
        adapter = VisionAdapter.build(vision_source(cfg), None)
        with warnings.catch_warnings(), adapter.exporting():
            warnings.simplefilter("ignore")
            torch_graph(adapter, example, io.BytesIO(), cfg.export.opset, "logits", weights=False)
    except UserError as e:
        raise e.located(cfg.source_file) from None
    except Exception:  # noqa: BLE001 - user code failing otherwise: the run's own checks say so
        return


def check_exporter(cfg: KdcConfig) -> None:
    """Raise the export stage's UserError for `export.exporter: optimum` with a teacher it never
    exports (kdc exports only a Hugging Face text classifier's logits with it), before the run
    rather than after its distillation."""
    from kdc.export.onnx_export import optimum_refused
    from kdc.models import teacher_kind

    kind = teacher_kind(cfg)
    if cfg.export.exporter == "optimum" and (
        cfg.task != "text-classification" or kind != "huggingface"
    ):
        why = f"the teacher ({kind}, task {cfg.task}) is not a Hugging Face sequence classifier"
        raise optimum_refused(why).located(cfg.source_file)
