"""Whether the teacher exports to ONNX, checked before a run's first stage where that is search or
distill (else found at the export stage, after the search and the distillation):
`export.exporter: optimum` with a teacher optimum-onnx never exports; an operator the
TorchScript exporter cannot export (torch.fft in its forward) in a teacher built by code
(entrypoint, torchvision, timm), whose modules the student is built from. That graph is exported
without its weights (ResNet-50: about 2 s and 320 MiB more, docs/internals.md), so teachers of
any size are checked; a Hugging Face teacher's is at the search's start, from the teacher it
loads (`check_loaded_teacher`)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from kdc.config import KdcConfig
from kdc.errors import UserError

if TYPE_CHECKING:
    import numpy as np

    from kdc.models.base import ModelAdapter
    from kdc.pipeline import Context


def check_onnx_export(cfg: KdcConfig, shape: tuple[int, ...]) -> None:
    """Raise the export stage's UserError (an operator the TorchScript exporter cannot export
    at `export.opset`) by exporting the teacher's graph into memory on two inputs of `shape`,
    the teacher built with random weights; other failures are left to the run's checks."""
    import numpy as np

    from kdc.models import vision_source
    from kdc.models.vision import VisionAdapter

    with _as_export_stage(cfg):  # `export.exporter: optimum` is refused before (check_exporter)
        teacher = VisionAdapter.build(vision_source(cfg), None)
        _export_graph(teacher, {"pixel_values": np.zeros((2, *shape), np.float32)}, cfg, "logits")


def check_loaded_teacher(ctx: Context) -> None:
    """At the search's start, the export stage's UserError for a Hugging Face teacher the
    TorchScript exporter exports (a sentence encoder, an architecture optimum-onnx lacks, the
    teacher's own modelling code) with an operator it cannot export: its graph exported into
    memory without weights, as `check_onnx_export` does for a CNN built by code (which runs
    before the model is loaded); other failures are left to the export stage."""
    from kdc.export.onnx_export import choose_exporter
    from kdc.pipeline import EXAMPLE_ROWS
    from kdc.stages.export import output_name

    teacher, name = ctx.teacher, output_name(ctx.cfg.task)
    if teacher.family != "transformer":
        return
    with _as_export_stage(ctx.cfg):
        if choose_exporter(teacher, ctx.cfg.export.exporter, name)[0] == "torch":
            _export_graph(teacher, ctx.encode("train", EXAMPLE_ROWS), ctx.cfg, name)


@contextmanager
def _as_export_stage(cfg: KdcConfig) -> Iterator[None]:
    """A UserError raised inside, located in the config; any other failure ignored (the run's
    checks and the export stage say what it is)."""
    try:
        yield
    except UserError as e:
        raise e.located(cfg.source_file) from None
    except Exception:  # noqa: BLE001 - said by the run's checks or the export stage
        pass


def _export_graph(
    adapter: ModelAdapter, example: dict[str, np.ndarray], cfg: KdcConfig, name: str
) -> None:
    from kdc.export.onnx_export import torch_graph

    with warnings.catch_warnings(), adapter.exporting():
        warnings.simplefilter("ignore")
        torch_graph(adapter, example, io.BytesIO(), cfg.export.opset, name, weights=False)


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
