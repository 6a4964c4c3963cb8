"""Kernel types and per-op tables of the latency model: what one launched kernel costs (FLOPs,
bytes at a precision), which ONNX ops are views, elementwise, norms, matrix kernels, and the FLOPs
of a single ONNX op.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx
from onnx import helper

from kdc.errors import UserError

WIDTH = {"fp32": 4, "fp16": 2, "int8": 1}
TENSOR_KINDS = frozenset({"gemm", "conv", "attention"})
"""Kernel kinds that run on matrix units (tensor cores, VNNI) and can run at int8."""
MASKED = "masked"
"""The kind of the pseudo-kernel that costs an attention kernel's masked (padding) scores: not a
launch of its own. ONNX Runtime's CPU Softmax takes ~4 ns per score whose exponential underflows
(a 256-token row with 165 padded keys ran 5x slower than unmasked), so padding is not free."""
MASKED_FLOPS = 64.0
"""FLOP-equivalents one masked score is costed at, so its fitted efficiency lands in (0, 1]."""


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
    **dict.fromkeys(
        _names("MatMul Gemm MatMulInteger QLinearMatMul QGemm FusedGemm FusedMatMul"), "gemm"
    ),
    **dict.fromkeys(_names("Conv ConvTranspose ConvInteger QLinearConv FusedConv"), "conv"),
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
    scores: float = 0.0
    """Attention kernels: elements of the softmax (query × key positions × heads × batch)."""


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


def check_precision(precision: str) -> None:
    """A UserError unless `precision` is one the cost model knows (fp32, fp16, int8)."""
    if precision not in WIDTH:
        raise UserError(
            f"unknown precision '{precision}'", field="precision", fix="use fp32, fp16 or int8"
        )


def materialize(
    cost: GraphCost,
    precision: str = "fp32",
    float_precision: str | None = None,
    padding: float = 0.0,
) -> list[Kernel]:
    """Kernels with bytes at the widths of `precision` (int8 only where an op can run at int8);
    with `padding` (the fraction of attention-mask positions that are 0), each attention kernel
    is followed by a `MASKED` pseudo-kernel for its masked scores."""
    check_precision(precision)
    if not 0.0 <= padding < 1.0:
        raise UserError(
            f"padding must be in [0, 1), got {padding}",
            field="padding",
            fix="give the fraction of attention-mask positions that are 0",
        )
    out = []
    for k in cost.kernels:
        p = kernel_precision(k, precision, float_precision)
        out.append(
            Kernel(k.name, k.ops, k.flops, (k.act_elems + k.weight_elems) * WIDTH[p], p, k.kind)
        )
        if padding and k.scores:
            flops = k.scores * padding * MASKED_FLOPS
            out.append(Kernel(f"{k.name}/masked", ("Softmax",), flops, 0.0, "fp32", MASKED))
    return out


def launches(kernels: list[Kernel]) -> int:
    """Kernels that are launched (each pays the per-kernel overhead): all but `MASKED` ones."""
    return sum(k.kind != MASKED for k in kernels)


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


def numel(s: Shape) -> float:
    return float(math.prod(s)) if s is not None else 0.0


def _matmul(a: Shape, out: Shape) -> float:
    return 2.0 * numel(out) * (a[-1] if a else 0)


def _conv(w: Shape, out: Shape) -> float:
    return 2.0 * numel(out) * (math.prod(w[1:]) if w else 0)


def _gemm(node: onnx.NodeProto, ins: list[Shape], outs: list[Shape]) -> float:
    a = ins[0]
    k = (a[0] if attr(node, "transA", 0) else a[1]) if a and len(a) == 2 else 0
    bias = numel(outs[0]) if len(ins) > 2 else 0.0
    return 2.0 * numel(outs[0]) * k + bias


def _attention(node: onnx.NodeProto, ins: list[Shape], outs: list[Shape]) -> float:
    """com.microsoft Attention: input B×S×Hin, weights Hin×3H."""
    x, w = ins[0], ins[1]
    if not x or not w:
        return 0.0
    b, s, hin = x
    h = w[1] // 3
    heads = attr(node, "num_heads", 1)
    return 2.0 * b * s * hin * w[1] + 4.0 * b * s * s * h + 5.0 * b * heads * s * s


def _mha(node: onnx.NodeProto, ins: list[Shape], outs: list[Shape]) -> float:
    """com.microsoft MultiHeadAttention: query B×S×H, key B×L×H."""
    q, k = ins[0], ins[1] if len(ins) > 1 else None
    if not q:
        return 0.0
    b, s, h = q[0], q[1], q[-1]
    length = k[1] if k and len(k) == 3 else s
    heads = attr(node, "num_heads", 1)
    return 4.0 * b * s * length * h + 5.0 * b * heads * s * length


def _pool(node: onnx.NodeProto, ins: list[Shape], outs: list[Shape]) -> float:
    return numel(outs[0]) * math.prod(attr(node, "kernel_shape", [1]))


def _per_output_element(f: float) -> FlopFn:
    return lambda n, i, o: f * numel(o[0])


FlopFn = Callable[[onnx.NodeProto, list[Shape], list[Shape]], float]
FLOPS: dict[str, FlopFn] = {
    "MatMul": lambda n, i, o: _matmul(i[0], o[0]),
    "MatMulInteger": lambda n, i, o: _matmul(i[0], o[0]),
    "QLinearMatMul": lambda n, i, o: _matmul(i[0], o[0]),
    "Gemm": _gemm,
    "Conv": lambda n, i, o: _conv(i[1], o[0]) + (numel(o[0]) if len(i) > 2 else 0.0),
    # com.microsoft ops of ORT's offline optimization: Conv/Gemm with bias and activation fused
    "FusedConv": lambda n, i, o: _conv(i[1], o[0]) + 2.0 * numel(o[0]),
    "FusedGemm": lambda n, i, o: _gemm(n, i, o) + numel(o[0]),
    "FusedMatMul": lambda n, i, o: _matmul(i[0], o[0]),
    "ConvInteger": lambda n, i, o: _conv(i[1], o[0]),
    "QLinearConv": lambda n, i, o: _conv(i[3], o[0]),
    "ConvTranspose": lambda n, i, o: 2.0 * numel(i[0]) * (math.prod(i[1][1:]) if i[1] else 0),
    "Attention": _attention,
    "MultiHeadAttention": _mha,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "GlobalAveragePool": lambda n, i, o: numel(i[0]),
    "GlobalMaxPool": lambda n, i, o: numel(i[0]),
    "DynamicQuantizeLinear": lambda n, i, o: 3.0 * numel(i[0]),
    **{op: _per_output_element(f) for op, f in {**POINTWISE, **NORMS}.items()},
    **dict.fromkeys(REDUCTIONS, lambda n, i, o: numel(i[0])),
    **dict.fromkeys([k for k, v in OP_KIND.items() if v == "memory"], lambda n, i, o: 0.0),
}


def attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def node_scores(node: onnx.NodeProto, ins: list[Shape], outs: list[Shape]) -> float:
    """Attention-probability elements an op computes (Softmax, com.microsoft Attention/MHA)."""
    if node.op_type == "Softmax":
        return numel(outs[0] if outs else None)
    q = ins[0] if ins else None
    if node.op_type not in ("Attention", "MultiHeadAttention") or not q or len(q) != 3:
        return 0.0
    k = ins[1] if node.op_type == "MultiHeadAttention" and len(ins) > 1 else None
    length = k[1] if k and len(k) == 3 else q[1]
    return float(q[0] * attr(node, "num_heads", 1) * q[1] * length)


def node_flops(node: onnx.NodeProto, ins: list[Shape], outs: list[Shape]) -> float:
    """FLOPs of one op (2 per multiply-accumulate); unknown ops count one per output element."""
    fn = FLOPS.get(node.op_type)
    return fn(node, ins, outs) if fn else numel(outs[0] if outs else None)
