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
from onnx import TensorProto, helper, numpy_helper

from kdc.compress.conv_outputs import GraphOps, convs_into_fused_activations, output_quantizer
from kdc.compress.nncf_quiet import import_nncf, quantize
from kdc.compress.qdq_gemm import int8_gemms
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
# cnn 6: and before a GELU written out (Div, Erf, Add, Mul, Mul: nn.GELU below opset 20)
RECIPE_VERSIONS = {"cnn": 6, "transformer": 2}


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
    and only signed Q/DQ (`signed_qdq`; TensorRT); otherwise the MIXED preset (asymmetric
    activations, better on CPUs), with each quantized embedding table gathered in INT8 and
    scaled after (`gather_then_dequantize`).
    `op_types` limits which ops are quantized (None: NNCF's default set); `nodes_to_exclude`
    (node names) stay in float. `reduce_range`: 7-bit weights in every layer (NNCF's overflow fix;
    its default applies it to the first layer only), for x86 int8 kernels without VNNI.
    Off `tensorrt`, in a graph with convs (a CNN's; a transformer's quantizes as before), each conv
    NNCF quantizes only after an activation ONNX Runtime cannot drop gets an output quantizer of
    its own (`quantize_conv_outputs`), and with asymmetric activations every activation is
    quantized UINT8 (`unsigned_activations`)."""
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
        if not symmetric_activations:
            q = unsigned_activations(q)
    with atomic_path(Path(dst)) as tmp:
        onnx.save(finish_qdq(q, symmetric_activations), str(tmp))
    return Path(dst)


def quantize_conv_outputs(
    model: onnx.ModelProto, items: list[dict[str, np.ndarray]], symmetric: bool
) -> onnx.ModelProto:
    """NNCF's Q/DQ `model` with each conv it quantized only after an activation ONNX Runtime
    cannot drop (`convs_into_fused_activations`: Hardswish, Hardsigmoid, Sigmoid, SiLU, GELU,
    LeakyRelu, a Clip from below 0), which ONNX Runtime ran in float, quantized at its output
    as NNCF quantizes an activation (symmetric or not), its range the conv's output's min-max
    on `items` (batches of inputs) in `model`. Asymmetric ones are UINT8 even where the range
    goes below 0, where NNCF's are INT8: ONNX Runtime makes an INT8 Q/DQ UINT8 for its x86 int8
    kernels only where one DequantizeLinear reads the QuantizeLinear, and it gives each reader
    of a DequantizeLinear its own (a swish's Sigmoid and Mul), so such a conv ran in float."""
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

    graph = GraphConverter.create_nncf_graph(model)
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


def unsigned_activations(model: onnx.ModelProto) -> onnx.ModelProto:
    """Make each INT8 QuantizeLinear of a computed tensor (an activation) UINT8 with zero point
    + 128, and the DequantizeLinears of its output with it: the same values. NNCF quantizes an
    activation that goes below 0 to INT8; ONNX Runtime's x86 int8 convs take UINT8 ones, and it
    converts an INT8 pair itself only where one DequantizeLinear reads the QuantizeLinear: where
    two did (a residual branch a conv and an Add read), the conv writing it and the one reading
    it ran in float. A zero point other nodes read too is left as it is."""
    g = model.graph
    init = {i.name: i for i in g.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    by_zero_point: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        zp = n.input[2] if n.op_type == "QuantizeLinear" and len(n.input) > 2 else ""
        if zp in init and n.input[0] not in init and init[zp].data_type == TensorProto.INT8:
            by_zero_point.setdefault(zp, []).append(n)
    fed = {i.name for i in g.input}
    outputs: set[str] = set()
    for zp, quantizers in by_zero_point.items():
        dqs = [r for q in quantizers for r in readers.get(q.output[0], [])]
        ids = {id(n) for n in quantizers + dqs}
        if (
            zp in fed
            or any(r.op_type != "DequantizeLinear" or r.input[2:3] != [zp] for r in dqs)
            or any(id(r) not in ids for r in readers[zp])
        ):
            continue
        shifted = numpy_helper.to_array(init[zp]).astype(np.int16) + 128
        init[zp].CopyFrom(numpy_helper.from_array(shifted.astype(np.uint8), zp))
        outputs |= {q.output[0] for q in quantizers}
    for info in [*g.value_info, *g.output]:
        if info.name in outputs:
            info.type.tensor_type.elem_type = TensorProto.UINT8
    return model


def _clip_bounds(graph: onnx.GraphProto, name: str) -> tuple[float, float] | None:
    """The (min, max) the Clip node `name` of `graph` clips to (-inf/inf where it sets none);
    None for another op or a bound computed in the graph."""
    node = next(n for n in graph.node if n.name == name)
    if node.op_type != "Clip":
        return None
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consts |= {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t)
        for n in graph.node
        if n.op_type == "Constant" and n.attribute[0].name == "value"
    }
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


def finish_qdq(model: onnx.ModelProto, symmetric: bool) -> onnx.ModelProto:
    """A Q/DQ graph made ready for its runtime: TensorRT (symmetric) takes signed Q/DQ and folds
    DQ of constants itself; CPU graphs gather embedding rows before dequantizing them and store
    Gemm biases as int32 for ONNX Runtime's int8 Gemm (`int8_gemms`)."""
    if symmetric:
        return signed_qdq(model)
    int8_gemms(model)
    return gather_then_dequantize(model)


def signed_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """Make every UINT8 Q/DQ with zero point 0 (NNCF's choice for a tensor it saw never go
    negative, such as a Softmax's output, even under the symmetric preset) INT8 with zero point
    0 and its scale × 255/127: the same range [0, 255 × scale], one bit coarser. A scale that
    other nodes read too (a signed pair sharing it) is copied, not widened in place. TensorRT
    takes INT8 Q/DQ only."""
    g = model.graph
    init = {i.name: i for i in g.initializer}
    qdq = [
        n
        for n in g.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear")
        and len(n.input) == 3
        and n.input[2] in init
    ]
    unsigned = {
        n.input[2]
        for n in qdq
        if init[n.input[2]].data_type == TensorProto.UINT8
        and not numpy_helper.to_array(init[n.input[2]]).any()  # else asymmetric: lint names it
    } - {  # a computed scale, or UINT8 data stored as such: left as they are
        n.input[2]
        for n in qdq
        if n.input[1] not in init or (n.op_type == "DequantizeLinear" and n.input[0] in init)
    }
    flipped = [n for n in qdq if n.input[2] in unsigned]
    ids = {id(n) for n in flipped}
    read_elsewhere = {i for n in g.node if id(n) not in ids for i in n.input}
    names = {*init, *(o for n in g.node for o in n.output), *(i.name for i in g.input)}
    widened: dict[str, str] = {}
    for n in flipped:
        scale = n.input[1]
        if scale not in widened:
            wide = (numpy_helper.to_array(init[scale]) * np.float32(255 / 127)).astype(np.float32)
            name = scale
            if scale in read_elsewhere:
                while name in names:
                    name += "_signed"
                names.add(name)
                g.initializer.append(numpy_helper.from_array(wide, name))
            else:
                init[scale].CopyFrom(numpy_helper.from_array(wide, name))
            widened[scale] = name
        n.input[1] = widened[scale]
    for name in unsigned:
        zp = init[name]
        zp.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(zp).astype(np.int8), name))
    quantized = {n.output[0] for n in flipped if n.op_type == "QuantizeLinear"}
    for info in [*g.value_info, *g.output]:
        if info.name in quantized:
            info.type.tensor_type.elem_type = TensorProto.INT8
    return model


def gather_then_dequantize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite `DequantizeLinear(table) -> Gather(ids)` of a 2-D row-wise symmetric INT8 table into
    `Gather(table, ids) -> Cast -> Mul(Gather(row scales, ids))`: the same values, but only the
    gathered rows are dequantized, not the whole vocabulary at every call (NNCF's embedding
    quantization otherwise made a BERT student's graph 40 % slower on ONNX Runtime)."""
    g = model.graph
    init = {i.name: i for i in g.initializer}
    fed = {i.name for i in g.input}  # an initializer that is also an input may be overridden
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, int] = {}
    for name in [*node_inputs(g), *(o.name for o in g.output)]:
        readers[name] = readers.get(name, 0) + 1
    taken = {*readers, *init, *producer, *(n.name for n in g.node)}

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        return name

    nodes, dropped, row_scales = [], [], {}
    for n in g.node:
        dq = producer.get(n.input[0]) if n.op_type == "Gather" else None
        rows = _row_scales(dq, n, init, readers, fed) if dq is not None else None
        if rows is None:
            nodes.append(n)
            continue
        if dq.input[1] not in row_scales:
            row_scales[dq.input[1]] = fresh(f"{dq.input[1]}_rows")
            g.initializer.append(
                numpy_helper.from_array(rows.reshape(-1, 1), row_scales[dq.input[1]])
            )
        out = n.output[0]
        base = n.name or out
        q, f, sc = fresh(f"{out}_int8"), fresh(f"{out}_float"), fresh(f"{out}_scale")
        nodes += [
            helper.make_node("Gather", [dq.input[0], n.input[1]], [q], fresh(f"{base}_int8")),
            helper.make_node("Cast", [q], [f], fresh(f"{base}_cast"), to=TensorProto.FLOAT),
            helper.make_node(
                "Gather", [row_scales[dq.input[1]], n.input[1]], [sc], fresh(f"{base}_scale")
            ),
            helper.make_node("Mul", [f, sc], [out], fresh(f"{base}_dequantize")),
        ]
        dropped.append(dq)
    gone = {id(dq) for dq in dropped}
    keep = [n for n in nodes if id(n) not in gone]
    del g.node[:]
    g.node.extend(keep)
    read = set(node_inputs(g)) | {o.name for o in g.output}
    stale = {i for dq in dropped for i in dq.input[1:] if i and i not in read}
    for i in [i for i in g.initializer if i.name in stale]:
        g.initializer.remove(i)
    return model


def node_inputs(graph: onnx.GraphProto) -> list[str]:
    """Every input name read by a node of `graph` or of its subgraphs."""
    names = []
    for n in graph.node:
        names += list(n.input)
        for a in n.attribute:
            for sub in [a.g] if a.HasField("g") else list(a.graphs):
                names += node_inputs(sub)
    return names


def _row_scales(
    dq: onnx.NodeProto,
    gather: onnx.NodeProto,
    init: dict,
    readers: dict[str, int],
    fed: set[str],
) -> np.ndarray | None:
    """The float32 per-row scales of a DequantizeLinear read only by `gather` (axis 0) that
    dequantizes a constant 2-D table symmetrically along axis 0, else None."""
    consts = [i for i in dq.input if i]
    if dq.op_type != "DequantizeLinear" or any(i not in init or i in fed for i in consts):
        return None
    dq_axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    gather_axis = next((a.i for a in gather.attribute if a.name == "axis"), 0)
    if readers.get(dq.output[0]) != 1 or dq_axis != 0 or gather_axis != 0:
        return None
    if len(init[dq.input[0]].dims) != 2 or init[dq.input[1]].data_type != TensorProto.FLOAT:
        return None
    if len(dq.input) > 2 and dq.input[2] and numpy_helper.to_array(init[dq.input[2]]).any():
        return None
    scale = numpy_helper.to_array(init[dq.input[1]])
    return scale if scale.ndim == 1 and scale.size > 1 else None
