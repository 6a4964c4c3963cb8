"""Per-kernel cost of an inference graph: FLOPs, bytes moved and the fusion a deployment engine
(TensorRT, ONNX Runtime) applies, from an ONNX model (`analyze_onnx`) or straight from an
architecture dict (`analyze_architecture`, the fast path the search uses).

Fusion rules: shape arithmetic and anything computable from constants folds away; views
(Reshape, Squeeze, Unsqueeze, Flatten, Identity, Dropout) and Q/DQ pairs cost nothing, and an op
fed through DequantizeLinear runs at int8; a MatMul-(scale, mask)-Softmax-MatMul block with its
head transposes is one attention kernel; a decomposed LayerNorm (ReduceMean..Sub..Pow..Sqrt..Div
..Mul..Add) is one kernel; an elementwise op (bias, BatchNorm, activation, residual add) joins
the kernel that produced its latest input. Bytes = activations read and written across a kernel's
boundary plus the constants it reads, at the kernel's precision width.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from kdc.errors import UserError

WIDTH = {"fp32": 4, "fp16": 2, "int8": 1}
TENSOR_KINDS = frozenset({"gemm", "conv", "attention"})
"""Kernel kinds that run on matrix units (tensor cores, VNNI) and can run at int8."""


def _names(text: str) -> list[str]:
    return text.split()


VIEW_OPS = frozenset(
    _names("Reshape Squeeze Unsqueeze Flatten Identity Dropout QuantizeLinear DequantizeLinear")
)
MATMULS = frozenset({"MatMul", "MatMulInteger", "QLinearMatMul"})
QUANTIZABLE = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})
INTEGER_OPS = frozenset(
    _names("MatMulInteger QLinearMatMul ConvInteger QLinearConv QGemm QAttention")
)
LN_OPS = frozenset(_names("Sub Pow Mul ReduceMean Add Sqrt Div Reciprocal Cast"))
PROLOGUE_OPS = frozenset({"Transpose", "Mul", "Div", "Cast"})
OUTPUT_SIZED_READS = frozenset({"Gather", "GatherElements", "GatherND", "Slice"})
"""Ops whose first input is read only where the output selects it."""

# FLOPs per output element of elementwise ops (transcendentals counted as a few).
POINTWISE: dict[str, float] = {
    **dict.fromkeys(
        _names(
            "Add Sub Mul Div Neg Abs Relu LeakyRelu PRelu Max Min Clip Where Equal Greater Less "
            "GreaterOrEqual LessOrEqual Not And Or Xor Cast Floor Ceil Round Sign Mod Reciprocal "
            "Sqrt Pow IsNaN IsInf"
        ),
        1.0,
    ),
    **dict.fromkeys(_names("Erf Tanh Exp Log Sigmoid Softplus Sin Cos Elu Selu Celu"), 4.0),
    **dict.fromkeys(_names("BatchNormalization HardSigmoid BiasAdd"), 2.0),
    **{"HardSwish": 3.0, "QuickGelu": 5.0, "Gelu": 8.0, "FastGelu": 8.0, "BiasGelu": 9.0},
    **{"Mish": 8.0, "Expand": 0.0},
}
NORMS: dict[str, float] = {
    **{"LayerNormalization": 8.0, "SkipLayerNormalization": 10.0, "Softmax": 5.0},
    **{"SimplifiedLayerNormalization": 5.0, "SkipSimplifiedLayerNormalization": 6.0},
    **{"InstanceNormalization": 8.0, "GroupNormalization": 8.0, "LogSoftmax": 6.0},
    **{"EmbedLayerNormalization": 10.0},
}
REDUCTIONS = _names(
    "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL2 ReduceSumSquare ArgMax ArgMin"
)
OP_KIND: dict[str, str] = {
    **dict.fromkeys(_names("MatMul Gemm MatMulInteger QLinearMatMul QGemm"), "gemm"),
    **dict.fromkeys(_names("Conv ConvTranspose ConvInteger QLinearConv"), "conv"),
    **dict.fromkeys(_names("Attention MultiHeadAttention QAttention"), "attention"),
    **dict.fromkeys(NORMS, "norm"),
    **dict.fromkeys(POINTWISE, "pointwise"),
    **dict.fromkeys([*REDUCTIONS, "TopK", "DynamicQuantizeLinear"], "reduce"),
    **dict.fromkeys(_names("MaxPool AveragePool GlobalAveragePool GlobalMaxPool"), "pool"),
    **dict.fromkeys(
        _names(
            "Gather GatherElements GatherND Slice Concat Split Transpose Tile Pad Resize "
            "DepthToSpace SpaceToDepth ScatterND ScatterElements"
        ),
        "memory",
    ),
}


@dataclass(frozen=True)
class Kernel:
    """One launched kernel: the ops fused into it, its FLOPs and bytes at `precision`."""

    name: str
    ops: tuple[str, ...]
    flops: float
    bytes: float
    precision: str
    kind: str = "other"


@dataclass(frozen=True)
class KernelShape:
    """A kernel before a precision is chosen: element counts instead of bytes."""

    name: str
    ops: tuple[str, ...]
    flops: float
    act_elems: float
    weight_elems: float
    kind: str
    quantized: bool = False


@dataclass
class GraphCost:
    """Kernels of one graph at concrete input shapes, plus what the memory estimate needs."""

    kernels: list[KernelShape]
    input_shapes: dict[str, list[int]]
    weights: dict[str, tuple[float, bool, bool]] = field(default_factory=dict)
    """name → (elements, quantized, in a tensor-kind kernel)."""
    peak_act_elems: float = 0.0
    unknown_shapes: int = 0


def float_default(precision: str) -> str:
    """Precision of the ops an engine does not quantize: fp16 beside int8 or fp16, else fp32."""
    return "fp32" if precision == "fp32" else "fp16"


def kernel_precision(k: KernelShape, precision: str, float_precision: str | None = None) -> str:
    """The precision `k` runs at in an engine built for `precision`."""
    if k.quantized or (precision == "int8" and k.kind in TENSOR_KINDS):
        return "int8"
    return float_precision or float_default(precision)


def materialize(
    cost: GraphCost, precision: str = "fp32", float_precision: str | None = None
) -> list[Kernel]:
    """Kernels with bytes at the widths of `precision` (int8 only where an op can run at int8)."""
    if precision not in WIDTH:
        raise UserError(
            f"unknown precision '{precision}'", field="precision", fix="use fp32, fp16 or int8"
        )
    out = []
    for k in cost.kernels:
        p = kernel_precision(k, precision, float_precision)
        out.append(
            Kernel(k.name, k.ops, k.flops, (k.act_elems + k.weight_elems) * WIDTH[p], p, k.kind)
        )
    return out


def memory_bytes(cost: GraphCost, precision: str, float_precision: str | None = None) -> float:
    """Weights at their run precision plus the peak of live activations."""
    fp = float_precision or float_default(precision)
    weights = sum(
        n * (1 if q or (precision == "int8" and tk) else WIDTH[fp])
        for n, q, tk in cost.weights.values()
    )
    return weights + cost.peak_act_elems * WIDTH[fp]


# ---------------------------------------------------------------------------------------------
# FLOPs of single ONNX ops

Shape = tuple[int, ...] | None


def _numel(s: Shape) -> float:
    return float(math.prod(s)) if s is not None else 0.0


def _matmul(a: Shape, out: Shape) -> float:
    return 2.0 * _numel(out) * (a[-1] if a else 0)


def _conv(w: Shape, out: Shape) -> float:
    return 2.0 * _numel(out) * (math.prod(w[1:]) if w else 0)


def _gemm(node: onnx.NodeProto, ins: list[Shape], outs: list[Shape]) -> float:
    a = ins[0]
    k = (a[0] if _attr(node, "transA", 0) else a[1]) if a and len(a) == 2 else 0
    bias = _numel(outs[0]) if len(ins) > 2 else 0.0
    return 2.0 * _numel(outs[0]) * k + bias


def _attention(node: onnx.NodeProto, ins: list[Shape], outs: list[Shape]) -> float:
    """com.microsoft Attention: input B×S×Hin, weights Hin×3H."""
    x, w = ins[0], ins[1]
    if not x or not w:
        return 0.0
    b, s, hin = x
    h = w[1] // 3
    heads = _attr(node, "num_heads", 1)
    return 2.0 * b * s * hin * w[1] + 4.0 * b * s * s * h + 5.0 * b * heads * s * s


def _mha(node: onnx.NodeProto, ins: list[Shape], outs: list[Shape]) -> float:
    """com.microsoft MultiHeadAttention: query B×S×H, key B×L×H."""
    q, k = ins[0], ins[1] if len(ins) > 1 else None
    if not q:
        return 0.0
    b, s, h = q[0], q[1], q[-1]
    length = k[1] if k and len(k) == 3 else s
    heads = _attr(node, "num_heads", 1)
    return 4.0 * b * s * length * h + 5.0 * b * heads * s * length


def _pool(node: onnx.NodeProto, ins: list[Shape], outs: list[Shape]) -> float:
    return _numel(outs[0]) * math.prod(_attr(node, "kernel_shape", [1]))


def _per_output_element(f: float) -> FlopFn:
    return lambda n, i, o: f * _numel(o[0])


FlopFn = Callable[[onnx.NodeProto, list[Shape], list[Shape]], float]
FLOPS: dict[str, FlopFn] = {
    "MatMul": lambda n, i, o: _matmul(i[0], o[0]),
    "MatMulInteger": lambda n, i, o: _matmul(i[0], o[0]),
    "QLinearMatMul": lambda n, i, o: _matmul(i[0], o[0]),
    "Gemm": _gemm,
    "Conv": lambda n, i, o: _conv(i[1], o[0]) + (_numel(o[0]) if len(i) > 2 else 0.0),
    "ConvInteger": lambda n, i, o: _conv(i[1], o[0]),
    "QLinearConv": lambda n, i, o: _conv(i[3], o[0]),
    "ConvTranspose": lambda n, i, o: 2.0 * _numel(i[0]) * (math.prod(i[1][1:]) if i[1] else 0),
    "Attention": _attention,
    "MultiHeadAttention": _mha,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "GlobalAveragePool": lambda n, i, o: _numel(i[0]),
    "GlobalMaxPool": lambda n, i, o: _numel(i[0]),
    "DynamicQuantizeLinear": lambda n, i, o: 3.0 * _numel(i[0]),
    **{op: _per_output_element(f) for op, f in {**POINTWISE, **NORMS}.items()},
    **dict.fromkeys(REDUCTIONS, lambda n, i, o: _numel(i[0])),
    **dict.fromkeys([k for k, v in OP_KIND.items() if v == "memory"], lambda n, i, o: 0.0),
}


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def node_flops(node: onnx.NodeProto, ins: list[Shape], outs: list[Shape]) -> float:
    """FLOPs of one op (2 per multiply-accumulate); unknown ops count one per output element."""
    fn = FLOPS.get(node.op_type)
    return fn(node, ins, outs) if fn else _numel(outs[0] if outs else None)


# ---------------------------------------------------------------------------------------------
# ONNX: concrete shapes


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


def _stripped(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> onnx.ModelProto:
    """A weightless copy for shape inference: large initializers become typed inputs, graph
    inputs get concrete shapes."""
    g = model.graph
    m = onnx.ModelProto(ir_version=model.ir_version)
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    ng = m.graph
    ng.name = g.name
    ng.node.extend(g.node)
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
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        return SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
    return shape_inference.infer_shapes(model, data_prop=True)


FOLD_MAX_ELEMS = 4096
FOLD_PASSES = 3


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
            start, end = _attr(n, "start", 0), _attr(n, "end", len(dims))
            consts.append(
                numpy_helper.from_array(np.array(dims[start:end], dtype=np.int64), n.output[0])
            )
            avail.add(n.output[0])
        elif (
            n.domain in ("", "ai.onnx")
            and not n.op_type.startswith("Random")
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


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
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


# ---------------------------------------------------------------------------------------------
# ONNX: fusion into kernels


class _Graph:
    """Static/view/quantized classification and producer/consumer maps of one graph."""

    def __init__(self, model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
        g = model.graph
        self.nodes = list(g.node)
        self.shapes = shapes
        self.static: set[str] = {t.name for t in g.initializer}
        self.alias: dict[str, str] = {}
        self.dq: set[str] = set()
        self.compute: list[int] = []
        for i, n in enumerate(self.nodes):
            ins = [x for x in n.input if x]
            if n.op_type == "DequantizeLinear" or (
                n.op_type in VIEW_OPS and ins and ins[0] in self.dq
            ):
                self.dq.update(n.output)
            if n.op_type in ("Shape", "Size") or all(x in self.static for x in ins):
                self.static.update(n.output)
            elif n.op_type in VIEW_OPS:
                self.alias[n.output[0]] = self.root(ins[0])
            else:
                self.compute.append(i)
        self.producer = {o: i for i in self.compute for o in self.nodes[i].output if o}
        self.consumers: dict[str, list[int]] = defaultdict(list)
        for i in self.compute:
            for x in dict.fromkeys(self.live_inputs(i)):
                self.consumers[x].append(i)
        for o in g.output:
            self.consumers[self.root(o.name)].append(-1)
        self.group: dict[int, int] = {}
        self.groups: list[tuple[str, list[int]]] = []

    def root(self, t: str) -> str:
        while t in self.alias:
            t = self.alias[t]
        return t

    def live_inputs(self, i: int) -> list[str]:
        """Roots of the non-constant inputs of node i."""
        return [self.root(x) for x in self.nodes[i].input if x and x not in self.static]

    def numel(self, t: str) -> float:
        s = self.shapes.get(t)
        return _numel(s) if s is not None else 0.0

    def op(self, i: int) -> str:
        return self.nodes[i].op_type

    def sole_consumer(self, t: str) -> int | None:
        c = self.consumers.get(t, [])
        return c[0] if len(c) == 1 and c[0] >= 0 else None

    def add_group(self, kind: str, members: list[int]) -> None:
        gid = len(self.groups)
        self.groups.append((kind, sorted(members)))
        for m in members:
            self.group[m] = gid


def _fuse_attention(g: _Graph) -> None:
    """MatMul → (scale, mask) → Softmax → MatMul, with the head transposes around it."""
    for s in [i for i in g.compute if g.op(i) == "Softmax"]:
        if s in g.group:
            continue
        members, t, m1 = {s}, max(g.live_inputs(s), key=g.numel, default=None), None
        while t is not None and (p := g.producer.get(t)) is not None and p not in g.group:
            if g.op(p) in MATMULS:
                m1 = p
                break
            if g.op(p) not in POINTWISE:
                break
            members.add(p)
            t = max(g.live_inputs(p), key=g.numel)
        if m1 is None or len(g.live_inputs(m1)) < 2:
            continue
        t, m2 = g.root(g.nodes[s].output[0]), None
        while (c := g.sole_consumer(t)) is not None and c not in g.group:
            if g.op(c) in MATMULS and g.root(g.nodes[c].input[0]) == t:
                m2 = c
                break
            if g.op(c) not in POINTWISE:
                break
            members.add(c)
            t = g.root(g.nodes[c].output[0])
        if m2 is None:
            continue
        members |= {m1, m2}
        for t in [*g.live_inputs(m1), g.root(g.nodes[m2].input[1])]:
            while (
                (p := g.producer.get(t)) is not None
                and p not in members
                and p not in g.group
                and g.op(p) in PROLOGUE_OPS
                and len(g.live_inputs(p)) == 1
                and g.sole_consumer(t) is not None
            ):
                members.add(p)
                t = g.live_inputs(p)[0]
        c = g.sole_consumer(g.root(g.nodes[m2].output[0]))
        if c is not None and g.op(c) == "Transpose" and c not in g.group:
            members.add(c)
        g.add_group("attention", list(members))


def _fuse_layernorm(g: _Graph) -> None:
    """ReduceMean(x) → Sub(x, mean) → … → one normalisation kernel (needs two ReduceMeans)."""
    for r in [i for i in g.compute if g.op(i) == "ReduceMean"]:
        if r in g.group or not g.live_inputs(r):
            continue
        x, mean = g.live_inputs(r)[0], g.nodes[r].output[0]
        sub = next(
            (
                c
                for c in g.consumers.get(mean, [])
                if c >= 0
                and g.op(c) == "Sub"
                and set(g.live_inputs(c)) == {x, mean}
                and c not in g.group
            ),
            None,
        )
        if sub is None:
            continue
        members, changed = {r, sub}, True
        while changed:
            changed = False
            for m in list(members):
                for o in g.nodes[m].output:
                    for c in g.consumers.get(o, []):
                        if (
                            c >= 0
                            and c not in members
                            and c not in g.group
                            and g.op(c) in LN_OPS
                            and all(
                                g.producer.get(y) in members or y == x for y in g.live_inputs(c)
                            )
                        ):
                            members.add(c)
                            changed = True
        if sum(g.op(m) == "ReduceMean" for m in members) >= 2:
            g.add_group("norm", list(members))


def _fuse_rest(g: _Graph) -> None:
    """Elementwise ops join the kernel of their latest input; everything else starts one."""
    for i in g.compute:
        if i in g.group:
            continue
        prods = [p for x in g.live_inputs(i) if (p := g.producer.get(x)) is not None]
        if g.op(i) in POINTWISE and prods:
            gid = g.group[max(prods)]
            g.groups[gid][1].append(i)
            g.group[i] = gid
        else:
            g.add_group(OP_KIND.get(g.op(i), "other"), [i])


FUSION_PASSES = [_fuse_attention, _fuse_layernorm, _fuse_rest]


def _reads(g: _Graph, i: int, pos: int, name: str) -> float:
    n = g.nodes[i]
    if pos == 0 and n.op_type in OUTPUT_SIZED_READS:
        return g.numel(n.output[0])
    return g.numel(name) or g.numel(g.root(name))


def _kernel_costs(g: _Graph, inputs: list[str]) -> GraphCost:
    order = sorted(range(len(g.groups)), key=lambda j: min(g.groups[j][1]))
    pos_of = {gid: k for k, gid in enumerate(order)}
    kernels: list[KernelShape] = []
    weights: dict[str, tuple[float, bool, bool]] = {}
    lifetimes = [
        (
            g.numel(x),
            0,
            max((pos_of[g.group[u]] for u in g.consumers.get(x, []) if u >= 0), default=0),
        )
        for x in inputs
    ]
    unknown = 0
    for gid in order:
        kind, members = g.groups[gid]
        mset = set(members)
        produced = {o for m in members for o in g.nodes[m].output if o}
        flops, act_in, consts, quantized = 0.0, {}, {}, False
        for m in sorted(mset):
            n = g.nodes[m]
            outs = [g.shapes.get(o) for o in n.output]
            unknown += sum(s is None for s, o in zip(outs, n.output, strict=True) if o)
            flops += node_flops(n, [g.shapes.get(x) if x else None for x in n.input], outs)
            quantized |= n.op_type in INTEGER_OPS or (
                n.op_type in QUANTIZABLE and any(x in g.dq for x in n.input)
            )
            for p, x in enumerate(n.input):
                if x in g.static:
                    consts[x] = max(consts.get(x, 0.0), _reads(g, m, p, x))
                elif x and (r := g.root(x)) not in produced:
                    act_in[r] = max(act_in.get(r, 0.0), _reads(g, m, p, x))
        act_out = 0.0
        for o in produced:
            users = g.consumers.get(o, [])
            if any(u < 0 or u not in mset for u in users):
                act_out += g.numel(o)
                last = max(len(order) if u < 0 else pos_of[g.group[u]] for u in users)
                lifetimes.append((g.numel(o), pos_of[gid], last))
        for x in consts:
            q, tk = weights.get(x, (0.0, False, False))[1:]
            weights[x] = (g.numel(x), q or quantized, tk or kind in TENSOR_KINDS)
        first = g.nodes[min(mset)]
        kernels.append(
            KernelShape(
                first.name or first.output[0],
                tuple(g.op(m) for m in sorted(mset)),
                flops,
                sum(act_in.values()) + act_out,
                sum(consts.values()),
                kind,
                quantized,
            )
        )
    return GraphCost(kernels, {}, weights, _peak(lifetimes, len(order)), unknown)


def _peak(lifetimes: list[tuple[float, int, int]], n: int) -> float:
    """Largest sum of tensors alive at any kernel boundary."""
    live = [0.0] * (n + 1)
    for size, start, end in lifetimes:
        for k in range(start, min(end, n) + 1):
            live[k] += size
    return max(live, default=0.0)


# ---------------------------------------------------------------------------------------------
# ONNX: public entry points with a cache keyed on graph structure

_CACHE: OrderedDict[tuple, GraphCost] = OrderedDict()
_PATH_KEYS: dict[tuple, str] = {}
_CACHE_SIZE = 64


def load_model(model_or_path: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    """An ONNX ModelProto from itself or a path (external weights are not loaded)."""
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    path = Path(model_or_path)
    if not path.is_file():
        raise UserError(
            "ONNX model not found", source=str(path), fix="pass the path of an exported model.onnx"
        )
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others
        raise UserError(
            f"not a readable ONNX model ({type(e).__name__})",
            source=str(path),
            fix="re-export the model",
        ) from None


def structure_hash(model: onnx.ModelProto) -> str:
    """A digest of the graph's structure (ops, wiring, attributes, weight shapes), not values."""
    h = hashlib.blake2b(digest_size=16)
    g = model.graph
    for op in model.opset_import:
        h.update(f"{op.domain}:{op.version};".encode())
    h.update(b"".join(n.SerializeToString() for n in g.node))
    for t in g.initializer:
        h.update(f"{t.name}:{t.data_type}:{list(t.dims)};".encode())
        if math.prod(t.dims) <= 64 and t.data_location != onnx.TensorProto.EXTERNAL:
            h.update(t.SerializeToString())
    for vi in [*g.input, *g.output]:
        h.update(vi.SerializeToString())
    return h.hexdigest()


def _model_and_key(
    model_or_path: onnx.ModelProto | str | Path,
) -> tuple[str, onnx.ModelProto | None]:
    """The structure hash and the model if it had to be loaded (a path seen before, unchanged on
    disk, is not read again)."""
    if isinstance(model_or_path, onnx.ModelProto):
        return structure_hash(model_or_path), model_or_path
    path = Path(model_or_path)
    try:
        st = path.stat()
        pkey = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    except OSError:
        pkey = None
    if pkey in _PATH_KEYS:
        return _PATH_KEYS[pkey], None
    model = load_model(path)
    digest = structure_hash(model)
    if pkey is not None:
        _PATH_KEYS[pkey] = digest
        if len(_PATH_KEYS) > _CACHE_SIZE:
            _PATH_KEYS.pop(next(iter(_PATH_KEYS)))
    return digest, model


def analyze_onnx(
    model_or_path: onnx.ModelProto | str | Path,
    *,
    batch: int = 1,
    input_shapes: dict[str, list[int]] | None = None,
) -> GraphCost:
    """Kernels of an ONNX graph at concrete shapes (cached on structure, batch and shapes)."""
    digest, model = _model_and_key(model_or_path)
    key = (digest, int(batch), json.dumps(input_shapes or {}, sort_keys=True))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    model = model if model is not None else load_model(model_or_path)
    shapes = concrete_inputs(model, batch, input_shapes)
    try:
        tensor_shapes = _inferred_shapes(_stripped(model, shapes))
    except Exception as e:  # onnx's InferenceError and checker errors
        raise UserError(
            f"shape inference failed: {str(e).splitlines()[0][:200]}",
            source=str(model_or_path) if not isinstance(model_or_path, onnx.ModelProto) else None,
            fix="check input_shapes against the model's inputs",
        ) from None
    g = _Graph(model, tensor_shapes)
    for fuse in FUSION_PASSES:
        fuse(g)
    cost = _kernel_costs(g, list(shapes))
    cost.input_shapes = shapes
    _CACHE[key] = cost
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return cost


def kernels_from_onnx(
    model_or_path: onnx.ModelProto | str | Path,
    *,
    batch: int = 1,
    input_shapes: dict[str, list[int]] | None = None,
    precision: str = "fp32",
    float_precision: str | None = None,
) -> list[Kernel]:
    """The fused kernel list of an ONNX graph at `precision`."""
    return materialize(
        analyze_onnx(model_or_path, batch=batch, input_shapes=input_shapes),
        precision,
        float_precision,
    )


# ---------------------------------------------------------------------------------------------
# Architecture dicts: the same kernels without building a graph

_ARCH_ALIASES = {
    "layers": "num_hidden_layers",
    "hidden": "hidden_size",
    "heads": "num_attention_heads",
    "intermediate": "intermediate_size",
    "vocab": "vocab_size",
    "seq": "max_length",
}


def _transformer(
    arch: dict[str, Any], batch: int, input_shapes: dict[str, list[int]] | None
) -> GraphCost:
    """A BERT-style encoder as torch.onnx exports it: mask, embeddings + LN, per layer Q/K/V
    GEMMs, one attention kernel, output GEMM(+residual), LN, FFN GEMM(+GELU), GEMM(+residual),
    LN; then CLS gather, pooler GEMM+tanh and classifier GEMM (or mean pooling)."""
    a = {_ARCH_ALIASES.get(k, k): v for k, v in arch.items()}
    try:
        n_layers, h = int(a["num_hidden_layers"]), int(a["hidden_size"])
        heads = int(a.get("num_attention_heads") or 1)
        inter = int(a.get("intermediate_size") or 4 * h)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(
            f"transformer architecture lacks {e}",
            field="architecture",
            fix="give num_hidden_layers and hidden_size",
        ) from None
    shape = (input_shapes or {}).get("input_ids")
    seq = int(shape[1]) if shape else int(a.get("max_length") or 0)
    if seq <= 0:
        raise UserError(
            "no sequence length",
            field="input_shapes",
            fix="pass input_shapes={'input_ids': [batch, seq]} or max_length",
        )
    b, s = int(batch), seq
    bs, bsh = b * s, b * s * h
    ks: list[KernelShape] = []
    w: dict[str, tuple[float, bool, bool]] = {}

    def add(
        name: str,
        ops: tuple[str, ...],
        flops: float,
        act: float,
        weights: float,
        kind: str,
        weight_names: dict[str, float] | None = None,
    ) -> None:
        ks.append(KernelShape(name, ops, flops, act, weights, kind))
        for wn, n in (weight_names or {}).items():
            w[wn] = (n, False, kind in TENSOR_KINDS)

    def linear(
        name: str,
        fin: int,
        fout: int,
        rows: int,
        extra_ops: tuple[str, ...] = (),
        extra_flops: float = 0.0,
        extra_act: float = 0.0,
    ) -> None:
        add(
            name,
            ("MatMul", "Add", *extra_ops),
            2.0 * rows * fin * fout + rows * fout + extra_flops,
            rows * fin + rows * fout + extra_act,
            fin * fout + fout,
            "gemm",
            {f"{name}.w": fin * fout + fout},
        )

    add("mask", ("Cast", "Sub", "Mul"), 3.0 * bs, 2.0 * bs, 2.0, "pointwise")
    add(
        "embeddings",
        ("Gather", "Add", "Add"),
        2.0 * bsh,
        bs + bsh,
        2.0 * bsh + s * h,
        "memory",
        {
            "word_embeddings": a.get("vocab_size", 30522) * h,
            "position_embeddings": s * h,
            "token_type_embeddings": bsh,
        },
    )
    ln = ("LayerNormalization",)
    add("embeddings.ln", ln, 8.0 * bsh, 2.0 * bsh, 2.0 * h, "norm", {"emb.ln": 2.0 * h})
    hs = b * heads * s * s
    for i in range(n_layers):
        p = f"layer{i}"
        for qkv in "qkv":
            linear(f"{p}.{qkv}", h, h, bs)
        add(
            f"{p}.attention",
            (
                "Transpose",
                "Transpose",
                "Transpose",
                "MatMul",
                "Div",
                "Add",
                "Softmax",
                "MatMul",
                "Transpose",
            ),
            4.0 * b * s * s * h + 7.0 * hs,
            4.0 * bsh + bs,
            1.0,
            "attention",
        )
        linear(f"{p}.o", h, h, bs, ("Add",), bsh, bsh)
        add(f"{p}.ln1", ln, 8.0 * bsh, 2.0 * bsh, 2.0 * h, "norm", {f"{p}.ln1": 2.0 * h})
        rows_i = bs * inter
        linear(f"{p}.ffn1", h, inter, bs, ("Div", "Erf", "Add", "Mul", "Mul"), 8.0 * rows_i)
        linear(f"{p}.ffn2", inter, h, bs, ("Add",), bsh, bsh)
        add(f"{p}.ln2", ln, 8.0 * bsh, 2.0 * bsh, 2.0 * h, "norm", {f"{p}.ln2": 2.0 * h})
    labels = int(a.get("num_labels") or 0)
    if a.get("pooling", "cls") == "mean":
        add("pool", ("ReduceMean",), bsh, bsh + b * h, 0.0, "reduce")
    else:
        add("cls", ("Gather",), 0.0, 2.0 * b * h, 1.0, "memory")
        if a.get("pooler", True):
            add(
                "pooler",
                ("Gemm", "Tanh"),
                2.0 * b * h * h + 5.0 * b * h,
                2.0 * b * h,
                h * h + h,
                "gemm",
                {"pooler": h * h + h},
            )
    if labels:
        add(
            "classifier",
            ("Gemm",),
            2.0 * b * h * labels + b * labels,
            b * h + b * labels,
            h * labels + labels,
            "gemm",
            {"classifier": h * labels + labels},
        )
    peak = 3.0 * bsh + b * heads * s * s + bs * inter
    return GraphCost(ks, {"input_ids": [b, s], "attention_mask": [b, s]}, w, peak)


def _cnn(arch: dict[str, Any], batch: int, input_shapes: dict[str, list[int]] | None) -> GraphCost:
    """A CNN given as `layers`: conv (out, kernel, stride, groups, padding, residual, branch,
    in_shape), maxpool/avgpool (kernel, stride), global_pool, linear (out). BatchNorm, bias and
    activation fold into each conv; `residual` adds the skip-connection read."""
    given = (input_shapes or {}).get("pixel_values")
    shape = list(given[1:]) if given else list(arch.get("input_shape") or [])
    if len(shape) != 3 or "layers" not in arch:
        raise UserError(
            "a cnn architecture needs `layers` and an input shape C×H×W",
            field="architecture",
            fix="pass input_shapes={'pixel_values': [b, c, h, w]} and layers",
        )
    b = int(batch)
    c, hh, ww = (int(x) for x in shape)
    ks: list[KernelShape] = []
    w: dict[str, tuple[float, bool, bool]] = {}
    for i, layer in enumerate(arch["layers"]):
        op = layer.get("op", "conv")
        cin, hin, win = (int(x) for x in layer.get("in_shape") or (c, hh, ww))
        k, st = int(layer.get("kernel", 1)), int(layer.get("stride", 1))
        pad = int(layer.get("padding", k // 2))
        ho, wo = (hin + 2 * pad - k) // st + 1, (win + 2 * pad - k) // st + 1
        name = layer.get("name", f"{op}{i}")
        if op == "conv":
            cout, groups = int(layer["out"]), int(layer.get("groups", 1))
            out = b * cout * ho * wo
            wn = cout * cin // groups * k * k + cout
            extra = 2.0 if layer.get("residual") else 1.0
            act = b * cin * hin * win + out * (2.0 if layer.get("residual") else 1.0)
            ks.append(
                KernelShape(
                    name,
                    ("Conv", "Relu"),
                    2.0 * out * cin // groups * k * k + (1.0 + extra) * out,
                    act,
                    wn,
                    "conv",
                )
            )
            w[name] = (wn, False, True)
            new = (cout, ho, wo)
        elif op in ("maxpool", "avgpool"):
            out = b * cin * ho * wo
            ks.append(
                KernelShape(
                    name,
                    ("MaxPool" if op == "maxpool" else "AveragePool",),
                    out * k * k,
                    b * cin * hin * win + out,
                    0.0,
                    "pool",
                )
            )
            new = (cin, ho, wo)
        elif op == "global_pool":
            ks.append(
                KernelShape(
                    name,
                    ("GlobalAveragePool",),
                    b * cin * hin * win,
                    b * cin * hin * win + b * cin,
                    0.0,
                    "pool",
                )
            )
            new = (cin, 1, 1)
        elif op == "linear":
            fin, fout = cin * hin * win, int(layer["out"])
            ks.append(
                KernelShape(
                    name,
                    ("Gemm",),
                    2.0 * b * fin * fout + b * fout,
                    b * fin + b * fout,
                    fin * fout + fout,
                    "gemm",
                )
            )
            w[name] = (fin * fout + fout, False, True)
            new = (fout, 1, 1)
        else:
            raise UserError(
                f"unknown cnn layer op '{op}'",
                field=f"architecture.layers[{i}]",
                fix="use conv, maxpool, avgpool, global_pool or linear",
            )
        if not layer.get("branch"):
            c, hh, ww = new
    peak = max((k.act_elems for k in ks), default=0.0)
    return GraphCost(ks, {"pixel_values": [b, *(int(x) for x in shape)]}, w, peak)


FAMILIES: dict[str, Callable[[dict[str, Any], int, dict | None], GraphCost]] = {
    "transformer": _transformer,
    "cnn": _cnn,
}


def analyze_architecture(
    arch: dict[str, Any], *, batch: int = 1, input_shapes: dict[str, list[int]] | None = None
) -> GraphCost:
    """Kernels of an architecture dict (`family`: transformer | cnn) without building a graph."""
    family = arch.get("family") or (
        "cnn" if isinstance(arch.get("layers"), list) else "transformer"
    )
    if family not in FAMILIES:
        raise UserError(
            f"unknown architecture family '{family}'",
            field="architecture.family",
            fix=f"use one of {', '.join(FAMILIES)}",
        )
    return FAMILIES[family](arch, batch, input_shapes)


def kernels_from_architecture(
    arch: dict[str, Any],
    batch: int = 1,
    input_shapes: dict[str, list[int]] | None = None,
    *,
    precision: str = "fp32",
    float_precision: str | None = None,
) -> list[Kernel]:
    """The kernel list `kernels_from_onnx` gives for the exported model, computed directly."""
    return materialize(
        analyze_architecture(arch, batch=batch, input_shapes=input_shapes),
        precision,
        float_precision,
    )
