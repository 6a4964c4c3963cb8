"""INT8 post-training quantization of an ONNX graph with NNCF (ONNX backend): standard
QuantizeLinear/DequantizeLinear nodes, like ONNX Runtime's static QDQ, by NNCF's own
algorithms (min-max with bias correction, per-row embedding scales).

Transformers use NNCF's generic scheme limited to the ops the build stage quantizes (MatMul,
Gemm, embedding Gather), not `ModelType.TRANSFORMER`: measured on a pruned 3-layer BERT student
(bench/RESULTS.md), the transformer scheme leaves MatMuls without activation quantizers and its
graph ran about 2x slower on ONNX Runtime CPU than the generic one, which flipped a few more of
the FP32 model's predictions than it but 2-4x fewer than ONNX Runtime's quantizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from kdc.compress.conv_outputs import GraphOps, convs_into_fused_activations, output_quantizer
from kdc.compress.nncf_quiet import import_nncf, quantize
from kdc.deploy.onnx_graph import constants
from kdc.deploy.qdq import finish_qdq
from kdc.deploy.qdq_gemm import dequantize_after
from kdc.rundir import atomic_path

if TYPE_CHECKING:
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

# NNCF PTQ's recipe version by model family (`ModelAdapter.family`), up whenever PTQ quantizes
# that family's graphs differently: build's input hash holds it from 2 on (a run of version 1
# hashes as before it existed), so a resumed run quantizes again, and another family's does not.
# cnn 2: every activation per tensor (`advanced_parameters`): a depthwise conv's input, the only
# one NNCF's CPU setup took per channel (a transformer's graphs quantize as they did)
# cnn 3: off TensorRT, a conv's output quantized before an activation ONNX Runtime cannot drop
# (Hardswish, Hardsigmoid, SiLU...: `quantize_conv_outputs`); asymmetric activations UINT8
# (`unsigned_activations`)
# cnn 4, transformer 2: off TensorRT, a Gemm's bias int32 and its input dequantized after a
# Flatten, so ONNX Runtime runs it as an int8 QGemm (`finish_qdq`, `qdq_gemm`)
# cnn 5: a conv's output quantized before a hard swish written out, x * relu6(x + 3) / 6
# cnn 6: and before a GELU (ONNX's Gelu from opset 20, or Div, Erf, Add, Mul, Mul below)
# cnn 7: and before a norm (GroupNorm, LayerNorm, InstanceNorm: `_read_by_norms`), and a conv
# reading a DequantizeLinear through a layout op (`LAYOUT_OPS`: a GroupNorm's Reshape) taken as
# an int8 one
# (a graph finished for another engine than before, `finish_qdq`, is `int8_engine_facets`')
RECIPE_VERSIONS = {"cnn": 7, "transformer": 2}
# the layout ops ONNX Runtime moves a per-tensor DequantizeLinear past (its QDQ propagation): a
# conv reading one of a DequantizeLinear runs int8 (`quantize_conv_outputs`)
LAYOUT_OPS = {"Reshape", "Squeeze", "Transpose", "Unsqueeze"}


def quantize_int8_nncf(
    src: Path | str,
    dst: Path | str,
    calib_inputs: list[dict[str, np.ndarray]],
    *,
    symmetric_activations: bool,
    op_types: list[str] | None = None,
    nodes_to_exclude: list[str] | None = None,
    reduce_range: bool = False,
    tensorrt: bool = False,
) -> Path:
    """Quantize `src` to `dst` (atomically) calibrated on `calib_inputs` (batches of named
    inputs). Symmetric activations use NNCF's PERFORMANCE preset with the overflow fix disabled
    (TensorRT's scheme); otherwise the MIXED preset (asymmetric activations, better on CPUs).
    `op_types` limits which ops are quantized (None: NNCF's default set); `nodes_to_exclude`
    (node names) stay in float. `reduce_range`: 7-bit weights in every layer (NNCF's overflow fix;
    its default applies it to the first layer only), for x86 int8 kernels without VNNI.
    Off `tensorrt`, in a graph with convs (a CNN's; a transformer's quantizes as before), each conv
    NNCF quantizes only after an activation ONNX Runtime cannot drop gets an output quantizer of
    its own (`quantize_conv_outputs`). The graph is finished for its engine
    (`kdc.deploy.qdq.finish_qdq`): signed Q/DQ only for `tensorrt`; else UINT8 activations,
    symmetric ones too, int32 Gemm biases and embedding rows gathered in INT8, scaled after."""
    nncf = import_nncf()
    from nncf.quantization.advanced_parameters import OverflowFix

    model = onnx.load(str(src))
    names = {i.name for i in model.graph.input}
    items = [{k: v for k, v in x.items() if k in names} for x in calib_inputs]
    preset = nncf.QuantizationPreset.PERFORMANCE if symmetric_activations else None
    fix = OverflowFix.ENABLE if reduce_range else OverflowFix.DISABLE
    # None: NNCF's default, where neither a TensorRT nor a 7-bit graph is made
    advanced = advanced_parameters(fix if symmetric_activations or reduce_range else None)
    other_types = sorted({n.op_type for n in model.graph.node} - set(op_types or ()))
    ignored = nncf.IgnoredScope(
        names=list(nodes_to_exclude or []),
        types=other_types if op_types else [],
        validate=False,
    )
    q = quantize(model, items, preset=preset, ignored_scope=ignored, advanced_parameters=advanced)
    if not tensorrt and any(n.op_type == "Conv" for n in q.graph.node):
        q = quantize_conv_outputs(q, items, symmetric_activations)
    with atomic_path(Path(dst)) as tmp:
        onnx.save(finish_qdq(q, tensorrt), str(tmp))
    return Path(dst)


def quantize_conv_outputs(
    model: onnx.ModelProto, items: list[dict[str, np.ndarray]], symmetric: bool
) -> onnx.ModelProto:
    """NNCF's Q/DQ `model` with each conv it quantized only after an activation ONNX Runtime
    cannot drop (`convs_into_fused_activations`: Hardswish, Hardsigmoid, Sigmoid, SiLU, GELU,
    LeakyRelu, a Clip from below 0) or after a norm (GroupNorm, LayerNorm, InstanceNorm), which
    ONNX Runtime ran in float, quantized at its output as NNCF quantizes an activation
    (symmetric or not), its range the conv's output's min-max on `items` (batches of inputs)
    in `model`. Asymmetric ones are UINT8 even where the range goes below 0, where NNCF's are
    INT8: ONNX Runtime makes an INT8 Q/DQ UINT8 for its x86 int8 kernels only where one
    DequantizeLinear reads the QuantizeLinear, and it gives each reader of a DequantizeLinear
    its own (a swish's Sigmoid and Mul), so such a conv ran in float. A conv reading NNCF's
    DequantizeLinear through a layout op (`LAYOUT_OPS`: a GroupNorm's last Reshape), which
    ONNX Runtime moves past it, is taken as reading it (the graph is left as it is: moved, the
    QuantizeLinear would no longer be one DequantizeLinear's, and stay INT8)."""
    from nncf.common.graph.transformations.commands import TargetType
    from nncf.common.graph.transformations.layout import TransformationLayout
    from nncf.onnx.graph.metatypes import onnx_metatypes as om
    from nncf.onnx.graph.metatypes.groups import (
        ATOMIC_ACTIVATIONS_OPERATIONS,
        CONVOLUTION_METATYPES,
    )
    from nncf.onnx.graph.model_transformer import ONNXModelTransformer
    from nncf.onnx.graph.nncf_graph_builder import GraphConverter
    from nncf.onnx.graph.node_utils import get_input_edges_mapping
    from nncf.onnx.graph.transformations.commands import (
        ONNXQuantizerInsertionCommand,
        ONNXTargetPoint,
    )
    from nncf.onnx.quantization.quantizer_parameters import convert_fq_params_to_onnx_params

    seen = onnx.ModelProto()  # as ONNX Runtime reads it (`LAYOUT_OPS`), the graph left as is
    seen.CopyFrom(model)
    dequantize_after(seen.graph, LAYOUT_OPS)
    graph = GraphConverter.create_nncf_graph(seen)
    ops = GraphOps(
        convs=CONVOLUTION_METATYPES,
        activations=ATOMIC_ACTIVATIONS_OPERATIONS,
        relus={om.ONNXReluMetatype},  # Relu, and Clip: `clip_bounds` tells those from 0
        muls={om.ONNXMulLayerMetatype},
        adds={om.ONNXAddLayerMetatype},
        divs={om.ONNXDivLayerMetatype},
        quantized=lambda node: node.metatype is om.ONNXDequantizeLinearMetatype,
        clip_bounds=lambda node: _clip_bounds(model.graph, node.node_name),
        erfs={om.ONNXErfMetatype},
        gelus={"Gelu"},
        norms={
            "BatchNormalization",
            "GroupNormalization",
            "InstanceNormalization",
            "LayerNormalization",
        },
        layouts={"Reshape", "Transpose"},
    )
    convs = convs_into_fused_activations(graph, ops)
    if not convs:
        return model
    layout = TransformationLayout()
    edges = get_input_edges_mapping(graph)
    for name, (low, high) in zip(convs, _output_ranges(model, convs, items), strict=True):
        _, params = output_quantizer(low, high, symmetric)
        signed = symmetric and low[0] < 0
        onnx_params = convert_fq_params_to_onnx_params(
            params, 8, np.int8 if signed else np.uint8, ()
        )
        point = ONNXTargetPoint(TargetType.POST_LAYER_OPERATION, name, 0)
        layout.register(ONNXQuantizerInsertionCommand(point, edges, onnx_params))
    return ONNXModelTransformer(model).transform(layout)


def _clip_bounds(graph: onnx.GraphProto, name: str) -> tuple[float, float] | None:
    """The (min, max) the Clip node `name` of `graph` clips to (-inf/inf where it sets none);
    None for another op or a bound computed in the graph."""
    node = next(n for n in graph.node if n.name == name)
    if node.op_type != "Clip":
        return None
    consts = constants(graph)
    attrs = {a.name: a.f for a in node.attribute}  # before opset 11
    bounds = []
    for port, key, default in ((1, "min", -np.inf), (2, "max", np.inf)):
        given = node.input[port] if len(node.input) > port else ""
        if given and given not in consts:
            return None
        bounds.append(float(consts[given]) if given else attrs.get(key, default))
    return bounds[0], bounds[1]


def _output_ranges(
    model: onnx.ModelProto, nodes: list[str], items: list[dict[str, np.ndarray]]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (min, max), as one-element float32 arrays, of the first output of each node named in
    `nodes`, run by ONNX Runtime (graph optimisations off) on `items`."""
    import tempfile

    from kdc.deploy.onnxruntime import make_session

    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    outputs = {n.name: n.output[0] for n in tapped.graph.node if n.name in nodes}
    names = [outputs[n] for n in nodes]
    tapped.graph.output.extend(onnx.ValueInfoProto(name=o) for o in names)
    with tempfile.TemporaryDirectory(prefix="kdc-conv-ranges-") as tmp:
        path = Path(tmp) / "tapped.onnx"
        onnx.save(tapped, str(path))
        session = make_session(path, threads=1, optimization="disable")
        runs = [session.run(names, x) for x in items]
    return [
        (
            np.array([min(r[i].min() for r in runs)], np.float32),
            np.array([max(r[i].max() for r in runs)], np.float32),
        )
        for i in range(len(names))
    ]


def advanced_parameters(overflow_fix: OverflowFix | None) -> AdvancedQuantizationParameters:
    """NNCF's advanced parameters with `overflow_fix` and every activation quantized per tensor:
    NNCF's CPU setup quantizes a depthwise conv's input per channel, which ONNX Runtime's int8
    conv (QLinearConv: one input scale) does not take, so that conv and the one before it ran
    in float (TensorRT takes activations per tensor only)."""
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        QuantizationParameters,
    )

    return AdvancedQuantizationParameters(
        overflow_fix=overflow_fix,
        activations_quantization_params=QuantizationParameters(per_channel=False),
    )
