"""Q/DQ rewrites that make an INT8 graph (NNCF's post-training one, ONNX Runtime's, a QAT
export) ready for the engine it is built for: TensorRT takes signed Q/DQ only; ONNX Runtime's
x86 int8 kernels take UINT8 activations and int32 Gemm biases (`qdq_gemm`), and its CPU graphs
gather embedding rows before dequantizing them."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from kdc.deploy.onnx_graph import FreshNames, reads
from kdc.deploy.qdq_gemm import int8_gemms


def unsigned_activations(model: onnx.ModelProto) -> onnx.ModelProto:
    """In a graph with convs (a CNN's, a ViT's patch embedding; a text transformer's is left as
    it is), make each INT8 QuantizeLinear of a computed tensor (an activation) UINT8 with zero
    point + 128, and the DequantizeLinears of its output with it: the same values. NNCF
    quantizes an activation that goes below 0 to INT8, and every symmetric one (as ONNX Runtime's
    quantizer does); ONNX Runtime's x86 int8 convs take UINT8 ones, and it converts an INT8 pair
    itself only where one DequantizeLinear reads the QuantizeLinear: where two did (a residual
    branch a conv and an Add read, a conv's output a GELU's Div and Mul read), the conv writing it
    and the one reading it ran in float. A zero point other nodes read too is left as it is."""
    g = model.graph
    if not any(n.op_type == "Conv" for n in g.node):
        return model
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


def finish_qdq(model: onnx.ModelProto, tensorrt: bool) -> onnx.ModelProto:
    """A Q/DQ graph made ready for the engine it is built for, whatever its activations' scheme:
    TensorRT takes signed Q/DQ and folds DQ of constants itself; ONNX Runtime's CPU graphs take
    UINT8 activations (`unsigned_activations`), store Gemm biases as int32 for its int8 Gemm
    (`int8_gemms`, after: a DequantizeLinear it moves past a Flatten no longer reads its
    QuantizeLinear) and gather embedding rows before dequantizing them."""
    if tensorrt:
        return signed_qdq(model)
    model = unsigned_activations(model)
    int8_gemms(model)
    return gather_then_dequantize(model)


def signed_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """Make every UINT8 Q/DQ with zero point 0 (NNCF's choice for a tensor it saw never go
    negative, such as a Softmax's output, even under the symmetric preset) INT8 with zero point
    0 and its scale × 255/127: the same range [0, 255 × scale], one bit coarser. Not for ONNX
    Runtime: after a Relu, a zero point 0 INT8 pair keeps the Relu (a UINT8 one from 0 lets
    ONNX Runtime drop it), and that conv ran in float. A scale that other nodes read too (a
    signed pair sharing it) is copied, not widened in place. TensorRT takes INT8 Q/DQ only."""
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
    fresh, widened = FreshNames(g), {}
    for n in flipped:
        scale = n.input[1]
        if scale not in widened:
            wide = (numpy_helper.to_array(init[scale]) * np.float32(255 / 127)).astype(np.float32)
            if scale in read_elsewhere:
                widened[scale] = fresh(f"{scale}_signed")
                g.initializer.append(numpy_helper.from_array(wide, widened[scale]))
            else:
                widened[scale] = scale
                init[scale].CopyFrom(numpy_helper.from_array(wide, scale))
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
    readers, fresh = reads(g), FreshNames(g)
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
    read = set(reads(g))
    stale = {i for dq in dropped for i in dq.input[1:] if i and i not in read}
    for i in [i for i in g.initializer if i.name in stale]:
        g.initializer.remove(i)
    return model


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
