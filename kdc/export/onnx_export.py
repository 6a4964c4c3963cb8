"""PyTorch → ONNX (TorchScript exporter, opset ≥ 17, dynamic batch), checked and simplified."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from kdc.models.base import ModelAdapter
from kdc.rundir import atomic_path


def export_onnx(
    adapter: ModelAdapter,
    example: dict[str, np.ndarray],
    path: Path,
    *,
    opset: int = 17,
    output_name: str = "logits",
    simplify: bool = True,
) -> Path:
    """Export `adapter.module` with named inputs and dynamic axes, run onnx.checker and shape
    inference, and simplify with onnxslim when available. Written atomically."""
    module = adapter.module.eval()
    args = tuple(torch.from_numpy(example[k][:2]) for k in adapter.input_names)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(tmp),
            input_names=adapter.input_names,
            output_names=[output_name],
            dynamic_axes=adapter.dynamic_axes(),
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
        model = onnx.load(str(tmp))
        if simplify:
            model = _slim(model)
        onnx.checker.check_model(model)
        model = onnx.shape_inference.infer_shapes(model)
        onnx.save(model, str(tmp))
    return path


def _slim(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        import onnxslim
    except ImportError:
        return model
    try:
        return onnxslim.slim(model)
    except Exception:  # a failed simplification must not fail the export
        return model
