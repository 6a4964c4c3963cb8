"""Concrete tensor shapes of an ONNX graph: dynamic input dims filled from batch and
`input_shapes`, ONNX (or ORT symbolic) shape inference on a weightless copy, and folding of the
constant shape arithmetic inference cannot see through."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from kdc.deploy.kernels import attr
from kdc.errors import UserError


def _dims(t: onnx.TypeProto) -> list[int | str] | None:
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
        for d in t.tensor_type.shape.dim
    ]


def concrete_inputs(
    model: onnx.ModelProto, batch: int, input_shapes: dict[str, list[int]] | None
) -> dict[str, list[int]]:
    """Shapes of the graph inputs with dynamic dims filled: dim 0 by `batch`, the rest from
    `input_shapes`; a dynamic dim nobody filled is a UserError."""
    inits = {i.name for i in model.graph.initializer}
    given = dict(input_shapes or {})
    real = [i for i in model.graph.input if i.name not in inits]
    unknown = set(given) - {i.name for i in real}
    if unknown:
        raise UserError(
            f"input_shapes names {sorted(unknown)}, the model has {[i.name for i in real]}",
            field="input_shapes",
            fix="use the model's input names",
        )
    return {vi.name: _concrete(vi.name, _dims(vi.type), given.get(vi.name), batch) for vi in real}


def _concrete(
    name: str, dims: list[int | str] | None, want: list[int] | None, batch: int
) -> list[int]:
    fix = f"pass input_shapes={{'{name}': [...]}}"
    if dims is None:
        if want is None:
            raise UserError(
                f"input '{name}' has no shape in the model", field="input_shapes", fix=fix
            )
        return [int(batch), *(int(x) for x in want[1:])]
    if want is not None and len(want) != len(dims):
        raise UserError(
            f"input '{name}' has rank {len(dims)}, input_shapes gives {list(want)}",
            field="input_shapes",
            fix="give every dimension",
        )
    shape = []
    for i, d in enumerate(dims):
        fixed = isinstance(d, int) and d > 0
        target = int(batch) if i == 0 else (int(want[i]) if want is not None else None)
        if fixed and target is not None and target != d:
            raise UserError(
                f"input '{name}' has fixed dim {i} = {d}, asked for {target}",
                field="batch" if i == 0 else "input_shapes",
                fix=f"use {d} or export with that dimension dynamic",
            )
        if not fixed and target is None:
            raise UserError(
                f"input '{name}' has a dynamic dimension {i} ('{d}')", field="input_shapes", fix=fix
            )
        shape.append(int(d) if fixed else target)
    return shape


SHAPE_TWINS: dict[str, str] = {"FusedConv": "Conv", "FusedGemm": "Gemm"}
"""com.microsoft ops of ORT's offline optimization that no shape inference knows, and the
standard op with the same output shape (their extra attributes are all `activation*`)."""


def _shape_twin(n: onnx.NodeProto) -> onnx.NodeProto:
    if n.domain != "com.microsoft" or n.op_type not in SHAPE_TWINS:
        return n
    attrs = [a for a in n.attribute if not a.name.startswith("activation")]
    twin = helper.make_node(SHAPE_TWINS[n.op_type], list(n.input), list(n.output), n.name)
    twin.attribute.extend(attrs)
    return twin


def stripped(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> onnx.ModelProto:
    """A weightless copy for shape inference: large initializers become typed inputs, graph
    inputs get concrete shapes, fused ORT ops their standard twins."""
    g = model.graph
    m = onnx.ModelProto(ir_version=model.ir_version)
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    ng = m.graph
    ng.name = g.name
    ng.node.extend(_shape_twin(n) for n in g.node)
    ng.output.extend(g.output)
    for name, dims in shapes.items():
        vi = next(i for i in g.input if i.name == name)
        ng.input.append(helper.make_tensor_value_info(name, vi.type.tensor_type.elem_type, dims))
    for t in g.initializer:
        if math.prod(t.dims) <= 1024 and t.data_location != onnx.TensorProto.EXTERNAL:
            ng.initializer.append(t)
        else:
            ng.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return m


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    if any(n.domain == "com.microsoft" for n in model.graph.node):
        return _symbolic(model)
    return shape_inference.infer_shapes(model, data_prop=True)


def _symbolic(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime's symbolic shape inference (graphs with its contrib ops), as its
    `infer_shapes` runs it, except: ReduceMax/ReduceMin take their axes as an input from opset
    18 on, like ReduceSum from 13, which it infers alone (a floored softmax's ReduceMax,
    kdc.deploy.softmax_floor); and nothing is saved to the working directory when it stops."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference, get_opset

    infer = SymbolicShapeInference(2**31 - 1, True, True, 0)
    if not hasattr(infer, "dispatcher_"):  # another onnxruntime's internals: its public entry
        return SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
    if (get_opset(model) or 0) >= 18:
        for op in ("ReduceMax", "ReduceMin"):
            infer.dispatcher_.setdefault(op, infer._infer_ReduceSum)
    infer._preprocess(model)
    complete = False
    while infer.run_:
        complete = infer._infer_impl()
    infer._update_output_from_vi()
    if not complete:
        raise ValueError("incomplete symbolic shape inference")
    return infer.out_mp_


FOLD_MAX_ELEMS = 4096
FOLD_PASSES = 3
NO_FOLD = frozenset({"QuantizeLinear", "DequantizeLinear"})
"""Value ops never part of shape arithmetic (the reference runtime lacks their opset < 19)."""


def _fold_constants(
    model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]
) -> onnx.ModelProto | None:
    """Evaluate the small constant subgraph (shape arithmetic: Shape, Gather, Concat, Where,
    Equal, …) that shape inference could not, and return the model with its results as
    initializers; None when nothing new was computed."""
    from onnx.reference import ReferenceEvaluator

    g = model.graph
    values = {t.name: t for t in g.initializer if math.prod(t.dims) <= FOLD_MAX_ELEMS}
    picked, consts = [], []
    avail = set(values)
    for n in g.node:
        ins = [x for x in n.input if x]
        if n.op_type == "Shape" and n.input[0] in shapes:
            dims = list(shapes[n.input[0]])
            start, end = attr(n, "start", 0), attr(n, "end", len(dims))
            consts.append(
                numpy_helper.from_array(np.array(dims[start:end], dtype=np.int64), n.output[0])
            )
            avail.add(n.output[0])
        elif (
            n.domain in ("", "ai.onnx")
            and not n.op_type.startswith("Random")
            and n.op_type not in NO_FOLD
            and all(x in avail for x in ins)
            and all(math.prod(shapes.get(o, ())) <= FOLD_MAX_ELEMS for o in n.output)
        ):
            picked.append(n)
            avail.update(n.output)
    outs = [o for n in picked for o in n.output if o]
    if not outs:
        return None
    sub = helper.make_model(
        helper.make_graph(
            picked,
            "fold",
            [],
            [helper.make_value_info(o, onnx.TypeProto()) for o in outs],
            [*values.values(), *consts],
        ),
        opset_imports=list(model.opset_import),
        ir_version=model.ir_version,
    )
    try:
        results = ReferenceEvaluator(sub).run(None, {})
    except Exception:  # an op the reference runtime lacks: keep what inference found
        return None
    folded = {
        o: numpy_helper.from_array(np.asarray(v), o)
        for o, v in zip(outs, results, strict=True)
        if np.size(v) <= FOLD_MAX_ELEMS
    }
    if not folded:
        return None
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = [n for n in m.graph.node if not all(o in folded for o in n.output if o)]
    del m.graph.node[:]
    m.graph.node.extend(keep)
    m.graph.initializer.extend(folded.values())
    return m


def inferred_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Shapes after inference, folding constant shape arithmetic until nothing changes."""
    shapes = _shape_map(_infer(model))
    for _ in range(FOLD_PASSES):
        folded = _fold_constants(model, shapes)
        if folded is None:
            break
        more = _shape_map(_infer(folded))
        if len(more) <= len(shapes):
            break
        model, shapes = folded, {**more, **shapes}
    return shapes


def _shape_map(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    g = model.graph
    out = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        dims = _dims(vi.type)
        if dims is not None and all(isinstance(d, int) and d > 0 for d in dims):
            out[vi.name] = tuple(dims)
        elif dims == []:
            out[vi.name] = ()
    for t in g.initializer:
        out[t.name] = tuple(t.dims)
    return out
