"""Masked softmax without slow exponentials, for ONNX Runtime's CPU engine.

An attention mask adds a huge negative number (a Hugging Face export: float32's minimum) to the
scores of padded keys, and ONNX Runtime's CPU Softmax takes a slow path for every exponential
that underflows: a 256-token row with 165 padded keys ran its Softmax 3-5x slower than unmasked,
and a padded INT8 BERT layer about 2x slower than the same layer unpadded. Raising every score to
at least its row's maximum less 80 (`Max(S, ReduceMax(S) - 80)`) keeps each exponential a normal
float: a masked key's weight becomes at most exp(-80) = 1.8e-35 of the largest one's instead of
0, far below float32's resolution, so the model's outputs are unchanged (bit-identical logits
in the tests).

Only Softmaxes over the last axis whose input is an `Add` of the scores and a mask (computed
from the graph inputs without a matrix product) are rewritten; a graph without such a mask (a
CNN, a ViT) is left alone. TensorRT fuses attention itself and would see the extra nodes as a
break in its pattern: `remove_floor` takes them out of a graph bound for it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from kdc.deploy.kernels import INTEGER_OPS, MATMULS, QUANTIZABLE
from kdc.rundir import atomic_path

PREFIX = "kdc_softmax_floor"
GAP = 80.0
"""How far below its row's maximum a score is raised to: exp(-80) is a normal float32 (exp(-88)
and below are subnormal or zero, the slow path)."""


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


MATRIX_OPS = MATMULS | QUANTIZABLE | INTEGER_OPS | {"Einsum"}


def _mask_like(model: onnx.ModelProto) -> tuple[set[str], set[str]]:
    """Tensors computed from the graph inputs without a matrix product (an attention mask, its
    broadcasts and slices), and tensors with one on their path (scores, activations)."""
    g = model.graph
    static = {i.name for i in g.initializer}
    light = {i.name for i in g.input if i.name not in static}
    heavy: set[str] = set()
    for n in g.node:  # ONNX nodes are topologically sorted
        ins = [x for x in n.input if x]
        if n.op_type in MATRIX_OPS or any(x in heavy for x in ins):
            heavy.update(n.output)
        elif any(x in light for x in ins):
            light.update(n.output)
    return light, heavy


def _last_axis(node: onnx.NodeProto, opset: int, rank: int | None) -> bool:
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), None)
    if axis is None:
        return opset >= 13  # the default: -1 from opset 13 on, 1 (a 2D flattening) before
    return axis == -1 or (rank is not None and axis == rank - 1)


def _tensor_types(model: onnx.ModelProto) -> dict[str, tuple[int | None, int]]:
    """Per tensor with a recorded type: its rank (None when unknown) and element type."""
    vis = [*model.graph.value_info, *model.graph.input, *model.graph.output]
    return {
        v.name: (len(t.shape.dim) if t.HasField("shape") else None, t.elem_type)
        for v in vis
        if v.type.HasField("tensor_type") and (t := v.type.tensor_type)
    }


def floor_masked_softmax(model: onnx.ModelProto) -> int:
    """Rewrite `model` in place: each masked Softmax reads `Max(S, ReduceMax(S) - GAP)` instead
    of its scores `S`. Returns how many were rewritten (0: the graph is unchanged)."""
    g = model.graph
    if any(n.name.startswith(PREFIX) for n in g.node):
        return 0  # already floored
    producer = {o: n for n in g.node for o in n.output}
    (light, heavy), types, opset = _mask_like(model), _tensor_types(model), _opset(model)
    out: list[onnx.NodeProto] = []
    count = 0
    for n in g.node:
        if n.op_type != "Softmax":
            out.append(n)
            continue
        add = producer.get(n.input[0])
        rank, dtype = types.get(n.input[0], (None, onnx.TensorProto.FLOAT))
        if (
            add is not None
            and add.op_type == "Add"
            and n.domain in ("", "ai.onnx")
            and dtype == onnx.TensorProto.FLOAT  # the floor's constant is float32
            and _last_axis(n, opset, rank)
            and _is_mask_add(add, light, heavy)
        ):
            out += _floor_nodes(n.input[0], f"{PREFIX}/{count}", opset)
            n.input[0] = f"{PREFIX}/{count}/floored"
            count += 1
        out.append(n)
    if count:
        g.initializer.append(numpy_helper.from_array(np.array(GAP, np.float32), f"{PREFIX}/gap"))
        if opset >= 18:
            g.initializer.append(
                numpy_helper.from_array(np.array([-1], np.int64), f"{PREFIX}/axes")
            )
        del g.node[:]
        g.node.extend(out)
    return count


def _is_mask_add(add: onnx.NodeProto, light: set[str], heavy: set[str]) -> bool:
    """An `Add` of scores (a matrix product on their path) and a mask (computed from the graph
    inputs without one); a constant bias (a ViT's relative positions) is neither."""
    if len(add.input) != 2:
        return False
    a, b = add.input
    return (a in heavy and b in light) or (b in heavy and a in light)


def _floor_nodes(scores: str, name: str, opset: int) -> list[onnx.NodeProto]:
    if opset >= 18:
        reduce = helper.make_node(
            "ReduceMax", [scores, f"{PREFIX}/axes"], [f"{name}/max"], name=f"{name}/max", keepdims=1
        )
    else:
        reduce = helper.make_node(
            "ReduceMax", [scores], [f"{name}/max"], name=f"{name}/max", axes=[-1], keepdims=1
        )
    return [
        reduce,
        helper.make_node(
            "Sub", [f"{name}/max", f"{PREFIX}/gap"], [f"{name}/low"], name=f"{name}/low"
        ),
        helper.make_node(
            "Max", [scores, f"{name}/low"], [f"{name}/floored"], name=f"{name}/floored"
        ),
    ]


def remove_floor(model: onnx.ModelProto) -> int:
    """Undo `floor_masked_softmax` in place (each Softmax reads its scores again). Returns how
    many floors were removed."""
    g = model.graph
    floored = {
        n.output[0]: n.input[0] for n in g.node if n.name.startswith(PREFIX) and n.op_type == "Max"
    }
    if not floored:
        return 0
    for n in g.node:
        n.input[:] = [floored.get(x, x) for x in n.input]
    keep = [n for n in g.node if not n.name.startswith(PREFIX)]
    del g.node[:]
    g.node.extend(keep)
    inits = [i for i in g.initializer if not i.name.startswith(PREFIX)]
    del g.initializer[:]
    g.initializer.extend(inits)
    return len(floored)


def floor_file(path: Path | str) -> int:
    """`floor_masked_softmax` on an ONNX file, rewritten atomically when anything changed."""
    return _rewrite(Path(path), floor_masked_softmax)


def remove_floor_file(path: Path | str) -> int:
    """`remove_floor` on an ONNX file, rewritten atomically when anything changed."""
    return _rewrite(Path(path), remove_floor)


def _rewrite(path: Path, change: Callable[[onnx.ModelProto], int]) -> int:
    model = onnx.load(str(path), load_external_data=False)  # weights stay where they are
    count = change(model)
    if count:
        with atomic_path(path) as tmp:
            onnx.save(model, str(tmp))
    return count
