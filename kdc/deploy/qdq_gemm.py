"""A CPU Q/DQ graph's Gemms (a CNN's classifier, a BERT pooler) made int8 for ONNX Runtime.

NNCF quantizes a Gemm's input and weight but never its bias, and a classifier's input where
the pool before the flatten writes it: `DQ -> Flatten -> Gemm(A, DQ(W), float bias)`. ONNX
Runtime fuses a Q/DQ Gemm into its int8 QGemm only where every input, the bias too, comes
straight from a DequantizeLinear (its QDQ Gemm selector; the bias int32 at the input scale ×
the weight scale, as its own quantizer writes it) and its Q/DQ propagation does not cross a
Flatten: the digits student's classifier ran as a float Gemm in QAT and NNCF PTQ graphs alike
(ONNX Runtime's own PTQ graphs quantize the bias and requantize after the Flatten: QGemm).
`int8_gemms` rewrites both, keeping the values: a per-tensor DequantizeLinear commutes with a
Flatten, and a bias rounded to int32 steps of input × weight scale moves an output by at most
half a step (far below one int8 step of either).
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import onnx
from onnx import helper, numpy_helper

from kdc.deploy.kernels import attr
from kdc.deploy.onnx_graph import FreshNames, constants, reads

INT32 = np.iinfo(np.int32)


def int8_gemms(model: onnx.ModelProto) -> int:
    """Rewrite `model` in place so ONNX Runtime runs its Q/DQ Gemms as QGemm: each per-tensor
    DequantizeLinear read only by a Flatten moved after it (`dequantize_after`), then
    each float bias of a Gemm of dequantized input and weight stored as int32 behind a
    DequantizeLinear (`_quantize_biases`). Returns how many biases were quantized."""
    dequantize_after(model.graph, {"Flatten"})
    return _quantize_biases(model.graph)


def _per_tensor_dq(node: onnx.NodeProto | None, consts: dict[str, np.ndarray]) -> bool:
    """Whether `node` is a DequantizeLinear of one constant scale (and zero point)."""
    return (
        node is not None
        and node.op_type == "DequantizeLinear"
        and all(i in consts and consts[i].size == 1 for i in node.input[1:] if i)
    )


def dequantize_after(graph: onnx.GraphProto, op_types: Collection[str]) -> int:
    """Make each `DQ -> op` of `op_types` (layout ops: Flatten, Reshape, Transpose...) whose
    per-tensor DequantizeLinear only that op reads into `op -> DQ` (the op of the quantized
    tensor, the same values); the op's output keeps its name. Returns how many were moved."""
    consts = constants(graph)
    producer = {o: n for n in graph.node for o in n.output}
    readers, fresh, moved = reads(graph), FreshNames(graph), 0
    for op in [n for n in graph.node if n.op_type in op_types]:  # in order: a chain moves whole
        dq = producer.get(op.input[0])
        if not _per_tensor_dq(dq, consts) or readers[dq.output[0]] != 1:
            continue
        quantized, gone = fresh(f"{op.output[0]}_quantized"), dq.output[0]
        op.input[0], dq.input[0] = dq.input[0], quantized
        dq.output[0], op.output[0] = op.output[0], quantized
        graph.node.remove(dq)  # and back after the op it now reads (a copy: the next op's)
        at = list(graph.node).index(op) + 1
        graph.node.insert(at, dq)
        producer[dq.output[0]] = graph.node[at]
        for v in [v for v in graph.value_info if v.name in (gone, dq.output[0])]:
            graph.value_info.remove(v)
        moved += 1
    return moved


def _bias_scale(gemm: onnx.NodeProto, producer: dict, consts: dict) -> np.ndarray | None:
    """The int32 scale of `gemm`'s float bias, its input's scale × its weight's, where ONNX
    Runtime's QGemm takes it: beta 1, a constant 1-D bias, the input dequantized per tensor and
    the weight per tensor or per output channel (a 2-D weight's axis 0 with transB, 1 without);
    else None."""
    dq_a, dq_b, bias = producer.get(gemm.input[0]), producer.get(gemm.input[1]), gemm.input[2]
    if attr(gemm, "beta", 1.0) != 1.0 or bias not in consts or consts[bias].ndim != 1:
        return None
    if not _per_tensor_dq(dq_a, consts):
        return None
    if dq_b is None or dq_b.op_type != "DequantizeLinear" or dq_b.input[1] not in consts:
        return None
    scale = (consts[dq_a.input[1]].reshape(()) * consts[dq_b.input[1]]).astype(np.float32)
    if scale.size > 1 and attr(dq_b, "axis", 1) % 2 != 1 - attr(gemm, "transB", 0):
        return None  # per input channel: no per-output-channel bias scale
    return scale if scale.size in (1, consts[bias].size) else None


def _quantize_biases(graph: onnx.GraphProto) -> int:
    """Store the float bias of each Gemm that `_bias_scale` finds a scale for as int32 at that
    scale behind a DequantizeLinear (one beyond int32 there stays float). Returns how many were
    quantized."""
    consts = constants(graph)
    producer = {o: n for n in graph.node for o in n.output}
    fresh, replaced, done = FreshNames(graph), set(), 0
    for gemm in [n for n in graph.node if n.op_type == "Gemm" and len(n.input) == 3]:
        scale = _bias_scale(gemm, producer, consts)
        bias = gemm.input[2]
        steps = None if scale is None else np.rint(consts[bias].astype(np.float64) / scale)
        if steps is None or np.abs(steps).max(initial=0) > INT32.max:
            continue
        q, s, out = (fresh(f"{bias}_{k}") for k in ("int32", "scale", "dequantized"))
        graph.initializer.extend(
            [numpy_helper.from_array(steps.astype(np.int32), q), numpy_helper.from_array(scale, s)]
        )
        dq = helper.make_node("DequantizeLinear", [q, s], [out], out, axis=0)
        graph.node.insert(list(graph.node).index(gemm), dq)
        gemm.input[2] = out
        replaced.add(bias)
        done += 1
    unread = [t for t in graph.initializer if t.name in replaced - set(reads(graph))]
    for t in unread:
        graph.initializer.remove(t)
    return done
