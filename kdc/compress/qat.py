"""Quantization-aware training with NNCF: insert fake quantizers (`nncf.quantize`), train with the
distillation losses, then `nncf.strip` them into torch fake-quantize modules that export to ONNX
as standard QuantizeLinear/DequantizeLinear pairs (what TensorRT and ONNX Runtime read)."""

from __future__ import annotations

import copy
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import torch

from kdc.compress.nncf_quiet import import_nncf, quantize
from kdc.errors import UserError
from kdc.models.base import ModelAdapter

STANDARD_DOMAINS = {"", "ai.onnx"}
UNSUPPORTED = {
    # a ViT strips and exports, but its distillation fails first: the losses tap the Hugging
    # Face model's layers, which NNCF's quantized copy does not run
    "transformer": "NNCF's quantized copy of a Hugging Face model runs none of the layers the "
    "distillation losses tap (and NNCF 3.4 cannot strip a quantized text encoder)",
}


def _use_eager_kernels() -> None:
    """Run NNCF's pure-PyTorch fake-quantize kernels eagerly. NNCF otherwise compiles a C++
    extension on first use (minutes on a small CPU, a hang on a stale lock) or falls back to
    torch.compile; the numbers are the same."""
    import_nncf()
    from nncf.torch.quantization.extensions import QuantizedFunctionsCPU
    from nncf.torch.quantization.reference import torch_executor

    if getattr(QuantizedFunctionsCPU, "_loaded_namespace", None) is None:
        QuantizedFunctionsCPU._loaded_namespace = types.SimpleNamespace(
            Quantize_forward=torch_executor.forward, Quantize_backward=torch_executor.backward
        )


def _import_strip() -> None:
    """nncf.strip imports two observer classes from torchao only to build disabled observers;
    without torchao installed, lend it PyTorch's own (the same classes) for that import only."""
    import_nncf()
    try:
        import torchao  # noqa: F401

        return
    except ImportError:
        pass
    from torch.ao.quantization import observer

    names = ("torchao", "torchao.quantization", "torchao.quantization.pt2e")
    sys.modules.update({n: types.ModuleType(n) for n in names})
    sys.modules["torchao.quantization.pt2e.observer"] = observer
    try:
        import nncf.torch.quantization.strip  # noqa: F401
    finally:
        for n in (*names, "torchao.quantization.pt2e.observer"):
            sys.modules.pop(n, None)


def check_supported(family: str, source: str | None = None) -> None:
    """Fail early, before any training, for model families QAT cannot handle."""
    if family in UNSUPPORTED:
        raise UserError(
            f"quantization-aware training is not available for {family}s: {UNSUPPORTED[family]}",
            source=source,
            field="quantize.method",
            fix="use quantize.method: ptq",
        )


def _with_module(adapter: ModelAdapter, module: torch.nn.Module) -> ModelAdapter:
    out = copy.copy(adapter)
    out.module = module
    return out


def quantize_for_training(
    adapter: ModelAdapter,
    calibration: dict[str, np.ndarray],
    *,
    symmetric_activations: bool,
    tensorrt: bool,
    batch_size: int = 16,
) -> ModelAdapter:
    """A copy of `adapter` whose module carries NNCF fake quantizers (INT8, symmetric weights;
    activations symmetric when asked; no overflow fix for TensorRT targets), ranges calibrated
    on `calibration`. Train it like any student, then `export_qat`."""
    check_supported(adapter.family)
    nncf = import_nncf()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    _use_eager_kernels()
    names = adapter.input_names
    n = len(calibration[names[0]])
    items = [
        tuple(torch.from_numpy(calibration[k][s : s + batch_size]) for k in names)
        for s in range(0, n, batch_size)
    ]
    model = copy.deepcopy(adapter.module).eval()
    preset = (
        nncf.QuantizationPreset.PERFORMANCE
        if symmetric_activations
        else nncf.QuantizationPreset.MIXED
    )
    advanced = AdvancedQuantizationParameters(
        overflow_fix=OverflowFix.DISABLE if tensorrt else OverflowFix.FIRST_LAYER
    )
    quantized = quantize(
        model, items, preset=preset, fast_bias_correction=True, advanced_parameters=advanced
    )
    return _with_module(adapter, quantized)


def non_standard_ops(model: onnx.ModelProto) -> list[str]:
    """Op types outside the default ONNX domain (e.g. NNCF's FakeQuantize)."""
    return sorted(
        {f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in STANDARD_DOMAINS}
    )


def export_qat(
    adapter: ModelAdapter, example: dict[str, np.ndarray], path: Path, *, opset: int = 17
) -> Path:
    """Strip the trained quantizers (`nncf.strip`) and export a QDQ ONNX model of standard ops."""
    nncf = import_nncf()

    from kdc.export.onnx_export import export_onnx

    adapter.module.eval()
    args = tuple(torch.from_numpy(example[k][:2]) for k in adapter.input_names)
    _import_strip()
    stripped = nncf.strip(adapter.module, example_input=args if len(args) > 1 else args[0])
    out = export_onnx(_with_module(adapter, stripped.eval()), example, path, opset=max(opset, 13))
    bad = non_standard_ops(onnx.load(str(out)))
    if bad:
        out.unlink()
        raise UserError(
            f"the quantized model exported non-standard ops {bad}",
            field="quantize.method",
            fix="use quantize.method: ptq",
        )
    return out
