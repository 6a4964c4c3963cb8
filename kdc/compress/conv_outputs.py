"""Which convs of an NNCF-quantized CNN ONNX Runtime would run in float, and the output quantizer
each is given, for QAT (NNCF's PyTorch graph, `kdc.compress.qat`) and NNCF's post-training INT8
(its ONNX graph, `kdc.compress.nncf_ptq`) alike.

NNCF takes a conv and the activation after it as one layer (OpenVINO runs the activation inside
its int8 conv) and quantizes only after the activation. ONNX Runtime runs a conv in int8
(QLinearConv) only where a QuantizeLinear reads it, or a Relu or a Clip from 0 it can drop before
one: after a Hardswish, Hardsigmoid, Sigmoid, LeakyReLU, a swish (SiLU), a GELU or a Clip from
below 0 it ran the conv in float (Conv/FusedConv), and so after a hard swish written out as older
MobileNetV3 code does, `x * F.relu6(x + 3) / 6`, which NNCF fuses with the conv too. Where NNCF
fuses no product with the activation (`x * F.hardsigmoid(x)`) it quantizes the Mul's input
instead, which ONNX Runtime reads in int8 while the activation reads the conv's float output:
that conv ran in float as well. TensorRT runs such a pair as one int8 layer: its graphs keep
NNCF's placement. NNCF quantizes only after a norm too (a GroupNorm, a LayerNorm in its ONNX
graph, an InstanceNorm in either), and that conv ran in float, slower than in the float graph.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch
    from nncf.common.graph import NNCFGraph, NNCFNode
    from nncf.common.quantization.structs import QuantizerConfig
    from nncf.quantization.fake_quantize import FakeQuantizeParameters


@dataclass(frozen=True)
class GraphOps:
    """One NNCF backend's metatypes of convs, of the activations it fuses after a conv, of the
    Relus among them, of Mul (a swish's `x * sigmoid(x)`), Add and Div (a hard swish's
    `x * relu6(x + 3) / 6`); whether a node is a quantizer's output (what an int8 conv's input
    and weight come from); the (min, max) a node clips to (None: no Clip); the metatypes of
    Erf, in a GELU written out, `x * (1 + erf(x / √2)) / 2`, and the op types of one in a single
    node NNCF has no metatype of (ONNX's Gelu from opset 20; none in NNCF's PyTorch graph, where
    GELU is an activation); the op types of normalizations (`_read_by_norms`) and of the layout
    ops one reads a conv's output through (a GroupNorm's Reshape, a channels-last LayerNorm's
    Transpose)."""

    convs: Collection[type]
    activations: Collection[type]
    relus: Collection[type]
    muls: Collection[type]
    adds: Collection[type]
    divs: Collection[type]
    quantized: Callable[[NNCFNode], bool]
    clip_bounds: Callable[[NNCFNode], tuple[float, float] | None]
    erfs: Collection[type] = field(default_factory=frozenset)
    gelus: Collection[str] = field(default_factory=frozenset)
    norms: Collection[str] = field(default_factory=frozenset)
    layouts: Collection[str] = field(default_factory=frozenset)


def _fused_activation(node: NNCFNode, ops: GraphOps) -> bool:
    """Whether `node` is an activation NNCF fuses with a conv before it that ONNX Runtime cannot
    drop before a QuantizeLinear: any but a Relu or a Clip from 0."""
    if node.metatype not in ops.activations:
        return False
    bounds = ops.clip_bounds(node)
    return bounds[0] != 0 if bounds is not None else node.metatype not in ops.relus


def _read_by_fused_activation(node: NNCFNode, graph: NNCFGraph, ops: GraphOps) -> bool:
    """Whether `node`'s output is read only by one `_fused_activation` and, for a swish (an
    ONNX SiLU: `x * sigmoid(x)`, `x * hardsigmoid(x)`), by products with its output
    (`_product_with`); or is a hard swish's x (`_hard_swish_input`)."""
    readers = graph.get_next_nodes(node)
    acts = [r for r in readers if _fused_activation(r, ops)]
    return (
        len(acts) == 1
        and all(r is acts[0] or _product_with(r, acts[0], graph, ops) for r in readers)
    ) or _hard_swish_input(node, graph, ops)


def _product_with(node: NNCFNode, act: NNCFNode, graph: NNCFGraph, ops: GraphOps) -> bool:
    """Whether `node` is a Mul of `act`'s output (read directly or through a quantizer), or a
    quantizer read only by such Muls: NNCF's of a Mul's input, where it fuses no product with
    the activation (`x * hardsigmoid(x)`)."""
    if ops.quantized(node):
        return all(_product_with(r, act, graph, ops) for r in graph.get_next_nodes(node))
    inputs = graph.get_previous_nodes(node)
    sources = [
        *inputs,
        *(p for q in inputs if ops.quantized(q) for p in graph.get_previous_nodes(q)),
    ]
    return node.metatype in ops.muls and act in sources


def _hard_swish_input(node: NNCFNode, graph: NNCFGraph, ops: GraphOps) -> bool:
    """Whether `node`'s output is x of a hard swish written out, `x * relu6(x + 3) / 6` (its
    scaling before or after the product, whatever its constants): read by one Add and one Mul
    only, the Add read by a Clip from 0 alone, whose output reaches that Mul through Muls and
    Divs each read by the next alone."""
    readers = graph.get_next_nodes(node)
    add = next((r for r in readers if r.metatype in ops.adds), None)
    mul = next((r for r in readers if r.metatype in ops.muls), None)
    if len(readers) != 2 or add is None or mul is None:
        return False
    step = graph.get_next_nodes(add)
    if len(step) != 1 or (ops.clip_bounds(step[0]) or (None,))[0] != 0:
        return False
    while step[0] is not mul:
        step = graph.get_next_nodes(step[0])
        if len(step) != 1 or step[0].metatype not in {*ops.muls, *ops.divs}:
            return False
    return True


def _read_by_gelu(node: NNCFNode, graph: NNCFGraph, ops: GraphOps) -> bool:
    """Whether `node`'s output is read only by a GELU: one node (ONNX's Gelu, as torch.onnx
    exports nn.GELU from opset 20), or written out (below opset 20: Div, Erf, Add, Mul, Mul;
    NNCF fuses it as one activation), one Div or Mul read only by an Erf, and Muls. NNCF
    quantizes only after either."""
    readers = graph.get_next_nodes(node)
    if len(readers) == 1 and readers[0].node_type in ops.gelus:
        return True
    scaled = [
        r
        for r in readers
        if (r.metatype in ops.divs or r.metatype in ops.muls)
        and [n.metatype in ops.erfs for n in graph.get_next_nodes(r)] == [True]
    ]
    return len(scaled) == 1 and all(r is scaled[0] or r.metatype in ops.muls for r in readers)


def _read_by_norms(node: NNCFNode, graph: NNCFGraph, ops: GraphOps) -> bool:
    """Whether `node`'s output is read only by normalizations (a GroupNorm, LayerNorm,
    InstanceNorm, a BatchNorm left unfolded), directly or through layout ops each read only so:
    NNCF quantizes only after the norm (a GroupNorm's in its ONNX graph, an InstanceNorm's in
    either), and ONNX Runtime ran that conv in float."""
    readers = graph.get_next_nodes(node)
    return bool(readers) and all(
        r.node_type in ops.norms or (r.node_type in ops.layouts and _read_by_norms(r, graph, ops))
        for r in readers
    )


def convs_into_fused_activations(graph: NNCFGraph, ops: GraphOps) -> list[str]:
    """The names of the convs of NNCF's quantized `graph` read only by a fused activation
    (`_read_by_fused_activation`, `_read_by_gelu`) or by normalizations (`_read_by_norms`)
    whose input and weight are both quantized: NNCF leaves a squeeze-and-excitation gate's
    convs float, where an output quantizer would only add error."""
    readers = (_read_by_fused_activation, _read_by_gelu, _read_by_norms)
    names = []
    for node in graph.get_all_nodes():
        if node.metatype not in ops.convs:
            continue
        sources = {e.input_port_id: e.from_node for e in graph.get_input_edges(node)}
        into = any(read(node, graph, ops) for read in readers)
        if into and all(p in sources and ops.quantized(sources[p]) for p in (0, 1)):
            names.append(node.node_name)
    return names


def output_quantizer(
    low: np.ndarray | torch.Tensor, high: np.ndarray | torch.Tensor, symmetric: bool
) -> tuple[QuantizerConfig, FakeQuantizeParameters]:
    """NNCF's per-tensor activation quantizer (symmetric or asymmetric) and its min-max
    parameters for values seen within [`low`, `high`] (one-element arrays of the backend's)."""
    from nncf.common.quantization.structs import QuantizationScheme, QuantizerConfig, QuantizerGroup
    from nncf.common.tensor_statistics.statistics import MinMaxTensorStatistic
    from nncf.quantization.fake_quantize import calculate_quantizer_parameters
    from nncf.tensor import Tensor

    mode = QuantizationScheme.SYMMETRIC if symmetric else QuantizationScheme.ASYMMETRIC
    config = QuantizerConfig(mode=mode, per_channel=False)
    stat = MinMaxTensorStatistic(min_values=Tensor(low), max_values=Tensor(high))
    return config, calculate_quantizer_parameters(stat, config, QuantizerGroup.ACTIVATIONS)
