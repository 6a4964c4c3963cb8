"""INT8 fake quantization of a transformer's Linear layers for quantization-aware training, the
scheme NVIDIA ModelOpt and pytorch-quantization use for BERT-class models on TensorRT: each Linear
quantizes its weight per output channel (symmetric) and its input per tensor (symmetric INT8, or
asymmetric UINT8 where asked), input ranges calibrated by their maximum on training rows and then
fixed, gradients through the straight-through estimator; embedding tables are quantized per row
(weights only, as kdc's PTQ does). PyTorch's own fake-quantize ops export with the TorchScript
exporter as standard QuantizeLinear/DequantizeLinear pairs, the explicit quantization TensorRT 10
and 11 build INT8 from and ONNX Runtime runs with int8 kernels; `fold_weight_quantizers` then
stores the weights as int8. With `reduce_range` the Linear weights are 7-bit (scale amax / 63:
values in [-63, 63], as ONNX Runtime's reduce_range makes them), for x86 int8 kernels without
VNNI, whose 16-bit pair sums of u8 x s8 products saturate on 8-bit weights.

NNCF is not used for transformers: its quantizers are keyed by the n-th call of an op type, and a
Hugging Face model computes sizes with extra ops while it is traced for export, so a quantizer
trained on one op lands on another (an int64 add) in the exported graph."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

# the int8 range weights are stored in; torch exports only full 8-bit ranges (or 0..127) as
# Q/DQ, so 7-bit weights keep it and take a scale that maps their largest magnitude to 63
WEIGHT_RANGE = (-128, 127)  # symmetric: scales from amax / 127, so -128 is never produced
SEVEN_BIT = 63  # reduce_range: weights in [-63, 63], within ONNX Runtime's 7-bit [-64, 64]


def row_scales(w: torch.Tensor, levels: int = WEIGHT_RANGE[1]) -> torch.Tensor:
    """Symmetric INT8 scales of `w`, one per row (its largest magnitude / `levels`)."""
    return w.detach().abs().amax(dim=1).clamp_min(1e-8) / levels


def fake_quant_rows(
    w: torch.Tensor, scale: torch.Tensor | None = None, levels: int = WEIGHT_RANGE[1]
) -> torch.Tensor:
    """`w` fake-quantized to symmetric INT8 with one scale per row: `scale` (frozen for export)
    or the rows' current largest magnitudes over `levels` (in training)."""
    scale = row_scales(w, levels) if scale is None else scale
    zero = torch.zeros(scale.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, *WEIGHT_RANGE)


class QuantEmbedding(nn.Embedding):
    """An nn.Embedding whose table is fake-quantized per row (made in place by quantize_layers).
    Always 8-bit, reduce_range or not: a table is gathered, its int8 rows dequantized, never
    multiplied in an int8 kernel, so nothing sums its products in 16 bits."""

    weight_scale: torch.Tensor | None  # a buffer, None until frozen
    weight_levels = WEIGHT_RANGE[1]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.weight_scale is None:  # training: the gathered rows only (scales are per row)
            rows = self._lookup(ids, self.weight)
            return fake_quant_rows(rows.reshape(-1, rows.shape[-1])).reshape(rows.shape)
        # frozen for export: Q/DQ of the constant table, folded to int8 and gathered first later
        return self._lookup(ids, fake_quant_rows(self.weight, self.weight_scale))

    def _lookup(self, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return F.embedding(
            ids,
            table,
            self.padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse,
        )


class QuantLinear(nn.Linear):
    """An nn.Linear (same parameters, hooks and isinstance) whose input and weight are
    fake-quantized to INT8; made from a Linear in place by `quantize_layers`."""

    input_scale: torch.Tensor
    input_zero_point: torch.Tensor
    input_range: tuple[int, int]
    weight_scale: torch.Tensor | None  # a buffer, None until frozen
    weight_levels: int  # the largest weight magnitude's int8 value: 127, or SEVEN_BIT

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.input_range
        x = torch.fake_quantize_per_tensor_affine(
            x, self.input_scale, self.input_zero_point, lo, hi
        )
        w = fake_quant_rows(self.weight, self.weight_scale, self.weight_levels)
        return F.linear(x, w, self.bias)


def freeze_weight_scales(model: nn.Module) -> nn.Module:
    """Fix each fake-quantized layer's weight scales at their current values (buffers), so that
    the export carries them as constants and `fold_weight_quantizers` can store int8 weights
    (computed from the weights, they were graph ops only onnxslim folded). Returns `model`."""
    for m in model.modules():
        if isinstance(m, (QuantLinear, QuantEmbedding)):
            m.weight_scale = row_scales(m.weight, m.weight_levels)
    return model


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


def quantize_layers(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, ...]],
    *,
    symmetric_activations: bool,
    skip: Iterable[nn.Module] = (),
    reduce_range: bool = False,
) -> int:
    """Turn every nn.Linear of `model` but `skip` (the classifier heads) into a QuantLinear, its
    input range calibrated on `batches` (the model's positional inputs; a Linear they never
    reach stays float), its weights 7-bit with `reduce_range`, and every nn.Embedding into a
    QuantEmbedding. Returns how many Linear layers were quantized."""
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
        if m not in ranges:  # the forward never reached it: no range to quantize its input to
            continue
        lo, hi = min(ranges[m][0], 0.0), max(ranges[m][1], 0.0)
        if symmetric_activations:
            scale = max(-lo, hi, 1e-8) / 127
            zero, qrange = 0, (-128, 127)
        else:
            scale = max(hi - lo, 1e-8) / 255
            zero, qrange = int(round(-lo / scale)), (0, 255)
        m.__class__ = QuantLinear
        m.register_buffer("weight_scale", None)
        m.register_buffer("input_scale", torch.tensor([scale], dtype=torch.float32))
        m.register_buffer("input_zero_point", torch.tensor([zero], dtype=torch.int32))
        m.input_range = qrange
        m.weight_levels = SEVEN_BIT if reduce_range else WEIGHT_RANGE[1]
    for m in model.modules():
        if type(m) is nn.Embedding:
            m.__class__ = QuantEmbedding
            m.register_buffer("weight_scale", None)
    return sum(m in ranges for m in linears)


def fold_weight_quantizers(model: onnx.ModelProto) -> int:
    """Replace each QuantizeLinear of constants (a weight, its scales and zero points, held in
    initializers or Constant nodes) by its int8 result, as ONNX Runtime's quantizer writes
    weights: DequantizeLinear reads 1 byte per weight instead of the float weight being quantized
    at load. Returns how many were folded."""
    from onnx import numpy_helper

    from kdc.deploy.onnx_graph import constants, reads

    graph = model.graph
    fed = {i.name for i in graph.input}  # an initializer that is also an input may be overridden
    consts = constants(graph)
    kept, folded = [], []
    for node in graph.node:
        ins = list(node.input)
        if node.op_type != "QuantizeLinear" or len(ins) != 3 or not all(i in consts for i in ins):
            kept.append(node)
            continue
        w, scale, zero = (consts[i] for i in ins)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.size > 1:  # per axis: broadcast along `axis`
            shape = [1] * w.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        info = np.iinfo(zero.dtype)
        q = np.rint(w.astype(np.float32) / scale.astype(np.float32)) + zero  # half to even
        q = np.clip(q, info.min, info.max).astype(zero.dtype)
        folded.append(numpy_helper.from_array(q, node.output[0]))
    del graph.node[:]
    graph.node.extend(kept)
    read = set(reads(graph)) | fed
    kept = [n for n in kept if n.op_type != "Constant" or n.output[0] in read]  # folded scales
    inits = [t for t in [*graph.initializer, *folded] if t.name in read]
    del graph.node[:], graph.initializer[:]
    graph.node.extend(kept)
    graph.initializer.extend(inits)
    return len(folded)
