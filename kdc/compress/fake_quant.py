"""INT8 fake quantization of a transformer's Linear layers for quantization-aware training, the
scheme NVIDIA ModelOpt and pytorch-quantization use for BERT-class models on TensorRT: each Linear
quantizes its weight per output channel (symmetric) and its input per tensor (symmetric INT8, or
asymmetric UINT8 where asked), input ranges calibrated by their maximum on training rows and then
fixed, gradients through the straight-through estimator. PyTorch's own fake-quantize ops export
with the TorchScript exporter as standard QuantizeLinear/DequantizeLinear pairs, the explicit
quantization TensorRT 10 and 11 build INT8 from and ONNX Runtime runs with int8 kernels.

NNCF is not used for transformers: its quantizers are keyed by the n-th call of an op type, and a
Hugging Face model computes sizes with extra ops while it is traced for export, so a quantizer
trained on one op lands on another (an int64 add) in the exported graph."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

WEIGHT_RANGE = (-128, 127)  # symmetric: scales from amax / 127, so -128 is never produced


class QuantLinear(nn.Linear):
    """An nn.Linear (same parameters, hooks and isinstance) whose input and weight are
    fake-quantized to INT8; made from a Linear in place by `quantize_linears`."""

    input_scale: torch.Tensor
    input_zero_point: torch.Tensor
    input_range: tuple[int, int]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.input_range
        x = torch.fake_quantize_per_tensor_affine(
            x, self.input_scale, self.input_zero_point, lo, hi
        )
        w = self.weight
        scale = w.detach().abs().amax(dim=1).clamp_min(1e-8) / WEIGHT_RANGE[1]
        zero = torch.zeros(len(scale), dtype=torch.int32, device=w.device)
        w = torch.fake_quantize_per_channel_affine(w, scale, zero, 0, *WEIGHT_RANGE)
        return F.linear(x, w, self.bias)


def _input_ranges(
    model: nn.Module, linears: list[nn.Linear], batches: Iterable[tuple[torch.Tensor, ...]]
) -> dict[nn.Linear, tuple[float, float]]:
    """The smallest and largest input value each of `linears` sees on `batches`."""
    seen: dict[nn.Linear, tuple[float, float]] = {}

    def hook(module: nn.Module, args: tuple) -> None:
        x = args[0].detach()
        lo, hi = float(x.min()), float(x.max())
        old = seen.get(module, (lo, hi))
        seen[module] = (min(old[0], lo), max(old[1], hi))

    handles = [m.register_forward_pre_hook(hook) for m in linears]
    try:
        with torch.no_grad():
            for batch in batches:
                model(*batch)
    finally:
        for h in handles:
            h.remove()
    return seen


def quantize_linears(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, ...]],
    *,
    symmetric_activations: bool,
    skip: Iterable[nn.Module] = (),
) -> int:
    """Turn every nn.Linear of `model` but `skip` (the classifier heads) into a QuantLinear, its
    input range calibrated on `batches` (the model's positional inputs). Returns how many."""
    skipped = {id(m) for m in skip}
    linears = [
        m
        for m in model.modules()
        if type(m) is nn.Linear and id(m) not in skipped  # exact type: not already quantized
    ]
    was_training = model.training
    model.eval()
    ranges = _input_ranges(model, linears, batches)
    model.train(was_training)
    for m in linears:
        lo, hi = ranges.get(m, (0.0, 0.0))  # a Linear the forward never reached stays exact
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        if symmetric_activations:
            scale = max(-lo, hi, 1e-8) / 127
            zero, qrange = 0, (-128, 127)
        else:
            scale = max(hi - lo, 1e-8) / 255
            zero, qrange = int(round(-lo / scale)), (0, 255)
        m.__class__ = QuantLinear
        m.register_buffer("input_scale", torch.tensor([scale], dtype=torch.float32))
        m.register_buffer("input_zero_point", torch.tensor([zero], dtype=torch.int32))
        m.input_range = qrange
    return len(linears)
