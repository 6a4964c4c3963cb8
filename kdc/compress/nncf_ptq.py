"""INT8 post-training quantization of an ONNX graph with NNCF (ONNX backend): standard
QuantizeLinear/DequantizeLinear nodes, like ONNX Runtime's static QDQ, by NNCF's own
algorithms (min-max with bias correction; the transformer scheme for transformer models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from kdc.rundir import atomic_path


def quantize_int8_nncf(
    src: Path | str,
    dst: Path | str,
    calib_inputs: list[dict[str, np.ndarray]],
    *,
    symmetric_activations: bool,
    transformer: bool,
    nodes_to_exclude: list[str] | None = None,
) -> Path:
    """Quantize `src` to `dst` (atomically) calibrated on `calib_inputs` (batches of named
    inputs). Symmetric activations use NNCF's PERFORMANCE preset with the overflow fix disabled
    (TensorRT); otherwise the MIXED preset (asymmetric activations, better on CPUs).
    `nodes_to_exclude` (node names) stay in float."""
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
    )

    model = onnx.load(str(src))
    names = {i.name for i in model.graph.input}
    items = [{k: v for k, v in x.items() if k in names} for x in calib_inputs]
    preset = nncf.QuantizationPreset.PERFORMANCE if symmetric_activations else None
    advanced = (
        AdvancedQuantizationParameters(overflow_fix=OverflowFix.DISABLE)
        if symmetric_activations
        else None
    )
    q = nncf.quantize(
        model,
        nncf.Dataset(items),
        preset=preset,
        subset_size=len(items),
        model_type=nncf.ModelType.TRANSFORMER if transformer else None,
        ignored_scope=nncf.IgnoredScope(names=nodes_to_exclude, validate=False)
        if nodes_to_exclude
        else None,
        advanced_parameters=advanced,
    )
    with atomic_path(Path(dst)) as tmp:
        onnx.save(q, str(tmp))
    return Path(dst)
