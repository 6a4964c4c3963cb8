"""The fused kernel list of a graph or of an architecture, as the latency model costs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from kdc.deploy.arch_cost import analyze_architecture
from kdc.deploy.graph_cost import analyze_onnx
from kdc.deploy.kernels import Kernel, materialize


def kernels_from_onnx(
    model_or_path: onnx.ModelProto | str | Path,
    *,
    batch: int = 1,
    input_shapes: dict[str, list[int]] | None = None,
    precision: str = "fp32",
    padding: float = 0.0,
) -> list[Kernel]:
    """The kernel list of an ONNX graph at `precision` (`padding`: see `materialize`)."""
    cost = analyze_onnx(model_or_path, batch=batch, input_shapes=input_shapes)
    return materialize(cost, precision, None, padding)


def kernels_from_architecture(
    arch: dict[str, Any],
    batch: int = 1,
    input_shapes: dict[str, list[int]] | None = None,
    *,
    precision: str = "fp32",
    padding: float = 0.0,
) -> list[Kernel]:
    """The kernel list `kernels_from_onnx` gives for the exported model, computed directly."""
    cost = analyze_architecture(arch, batch=batch, input_shapes=input_shapes)
    return materialize(cost, precision, None, padding)
