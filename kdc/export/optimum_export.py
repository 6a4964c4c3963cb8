"""Hugging Face classifiers → ONNX through optimum-onnx (`onnx_export_from_model`)."""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import onnx

from kdc.models.base import ModelAdapter

TASK = "text-classification"


class NotExportable(Exception):
    """optimum-onnx cannot export this model; the message says why."""


def _onnx_config(model: Any, inputs: list[str]) -> Any:
    """optimum's OnnxConfig for `model`'s architecture, limited to the `inputs` kdc feeds
    (`token_type_ids` only for text pairs: for one text BERT's are all zero)."""
    try:
        import optimum.exporters.onnx.model_configs  # noqa: F401 - registers the architectures
        from optimum.exporters.tasks import TasksManager
    except ImportError:
        raise NotExportable("optimum-onnx is not installed") from None
    try:
        constructor = TasksManager.get_exporter_config_constructor(
            "onnx", model, task=TASK, library_name="transformers"
        )
    except (KeyError, ValueError) as e:
        raise NotExportable(str(e).splitlines()[0][:200]) from None
    base = type(constructor(model.config, task=TASK))

    class KdcInputs(base):
        @property
        def inputs(self):  # noqa: ANN202 - optimum's own signature
            d = super().inputs
            for k in [k for k in d if k not in inputs]:
                d.pop(k)
            return d

    return KdcInputs(model.config, task=TASK)


def check_exportable(adapter: ModelAdapter, output_name: str) -> None:
    """Raise NotExportable unless optimum-onnx exports this adapter's graph unchanged: a
    Hugging Face sequence classifier whose ONNX output is its logits."""
    from kdc.models.hf import HFTextAdapter

    if not isinstance(adapter, HFTextAdapter) or output_name != "logits":
        user_model = getattr(adapter, "model", adapter.module)  # not kdc's forward wrapper
        name = type(user_model).__name__
        raise NotExportable(f"{name} is not a Hugging Face sequence classifier")
    config = _onnx_config(adapter.model, adapter.input_names)
    if list(config.inputs) != list(adapter.input_names):
        raise NotExportable(f"optimum's inputs {list(config.inputs)} differ from kdc's")


def export_optimum(adapter: ModelAdapter, opset: int) -> onnx.ModelProto:
    """The ONNX model optimum-onnx exports for `adapter.model` (dynamic batch and sequence axes)
    at the requested opset, raised to optimum's recommended minimum for the architecture."""
    from optimum.exporters.onnx import onnx_export_from_model

    model = adapter.model.eval()
    config = _onnx_config(model, adapter.input_names)
    opset = max(opset, int(getattr(config, "DEFAULT_ONNX_OPSET", opset)))
    quiet = logging.getLogger("optimum")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_export_from_model(
                model,
                tmp,
                opset=opset,
                task=TASK,
                do_validation=False,  # kdc's parity check runs on real eval rows instead
                custom_onnx_configs={"model": config},
            )
            return onnx.load(str(Path(tmp) / "model.onnx"))
    finally:
        quiet.setLevel(level)
