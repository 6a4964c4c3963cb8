"""TensorRT compatibility lint for an ONNX graph and a hardware profile, before any build.

Op support follows onnx-tensorrt's docs/operators.md (TensorRT 10.15) and its changelog for the
version an op arrived in. The DLA table is approximate: a summary of NVIDIA's "DLA supported
layers and restrictions", not a guarantee in either direction.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto, numpy_helper

from kdc.deploy.dla import DLA_OPS
from kdc.deploy.tensorrt import DLA_RULE, QDQ_OPS, parse_version, supports_dla
from kdc.profiles import HardwareProfile

SEVERITIES = ("error", "warning", "info")
# DequantizeLinear input types TensorRT's ONNX parser takes (onnx-tensorrt docs/operators.md)
DEQUANTIZABLE = {
    TensorProto.INT8,
    TensorProto.FLOAT8E4M3FN,
    TensorProto.FLOAT8E5M2,
    TensorProto.INT4,
}


@dataclass(frozen=True)
class LintFinding:
    severity: str
    node: str
    op: str
    message: str
    fix: str


@dataclass(frozen=True)
class OpRule:
    """`since` None: never parsed. `note`: a restriction, shown as a warning before `note_until`
    (always when None). `check(node)`: an attribute use the parser rejects, as a message."""

    since: tuple[int, int] | None = (0, 0)
    note: str = ""
    note_until: tuple[int, int] | None = None
    check: Callable[[onnx.NodeProto], str | None] | None = None


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _extra_outputs(node: onnx.NodeProto) -> str | None:
    return "only the first output is supported" if any(node.output[1:]) else None


# fmt: off
_UNSUPPORTED = [
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor",
    "Col2Im", "CenterCropPad", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det",
    "DynamicQuantizeLinear", "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool",
    "MelWeightMatrix", "Multinomial", "NegativeLogLikelihoodLoss", "Optional",
    "OptionalGetElement", "OptionalHasElement", "QLinearConv", "QLinearMatMul", "RegexFullMatch",
    "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert",
    "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringConcat",
    "StringNormalizer", "StringSplit", "TfIdfVectorizer", "Unique"
]
# fmt: on

OPS: dict[str, OpRule] = {
    **{op: OpRule(since=None) for op in _UNSUPPORTED},
    "LayerNormalization": OpRule((8, 6), check=_extra_outputs),
    "GroupNormalization": OpRule((8, 6)),
    "Hardmax": OpRule((9, 2)),
    "DeformConv": OpRule((10, 1)),
    "BlackmanWindow": OpRule((10, 4)),
    "HammingWindow": OpRule((10, 4)),
    "HannWindow": OpRule((10, 4)),
    "STFT": OpRule((10, 5), note="real input only; frame_step and window must be initializers"),
    "Attention": OpRule((10, 14), note="Q/K/V 4D only; no past_key/past_value or softcap"),
    "RotaryEmbedding": OpRule((10, 15)),
    "RMSNormalization": OpRule((10, 15)),
    "TensorScatter": OpRule((10, 15)),
    "Loop": OpRule(
        note="scan outputs cannot have a dynamic length and loop-carried shapes "
        "must not change between iterations"
    ),
    "If": OpRule(note="both branches must give outputs of the same rank"),
    "NonMaxSuppression": OpRule(
        note="native layer since 8.5 (a plugin before); its output "
        "size is data-dependent, which blocks some optimizations"
    ),
    "NonZero": OpRule(note="data-dependent output shape"),
    "Einsum": OpRule(note="no ellipsis, diagonal or broadcasting", note_until=(10, 12)),
    "TopK": OpRule(check=lambda n: None if _attr(n, "sorted", 1) else "sorted=0 unsupported"),
    "MaxPool": OpRule(check=_extra_outputs),
    "ScatterND": OpRule(
        check=lambda n: (
            None
            if _attr(n, "reduction", b"none") == b"none"
            else "reduction other than 'none' unsupported"
        )
    ),
    "Resize": OpRule(
        check=lambda n: (
            "cubic mode unsupported"
            if _attr(n, "mode") == b"cubic"
            else "antialiasing unsupported"
            if _attr(n, "antialias", 0)
            else None
        )
    ),
}

# Documented opset ceiling of the ONNX parser, by TensorRT version.
OPSET_MAX = (((8, 5), 17), ((9, 2), 19), ((10, 0), 20), ((10, 15), 24))
OPSET_MIN = 9

DQ_COMMUTING = frozenset(
    {"MaxPool", "GlobalMaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze"}
    | {"Identity"}
)
"""Ops TensorRT's Q/DQ propagation moves a DequantizeLinear past (they commute with scaling)."""
# Ops TensorRT computes in float: a DequantizeLinear feeding them buys no INT8 math.
FLOAT_ONLY = frozenset(
    {
        "Softmax",
        "LogSoftmax",
        "LayerNormalization",
        "GroupNormalization",
        "InstanceNormalization",
        "ReduceMean",
        "Pow",
        "Sqrt",
        "Exp",
        "Erf",
    }
)
WEIGHTED = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})


_SEQUENCE_NAME = re.compile(r"batch|seq|length|token", re.IGNORECASE)


@dataclass
class _Graph:
    model: onnx.ModelProto
    profile: HardwareProfile
    version: tuple[int, int]
    input_shapes: dict[str, list[int]] | None

    def __post_init__(self) -> None:
        self.nodes = list(_walk(self.model.graph))
        self.inits = {t.name: t for t in self.model.graph.initializer}
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.opset = next(
            (o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 0
        )
        self.inputs = [i for i in self.model.graph.input if i.name not in self.inits]

    def is_constant(self, name: str) -> bool:
        src = self.producer.get(name)
        if name in self.inits or (src is not None and src.op_type == "Constant"):
            return True
        return src is not None and src.op_type in QDQ_OPS and self.is_constant(src.input[0])

    def from_dq(self, name: str) -> bool:
        src = self.producer.get(name)
        return src is not None and src.op_type == "DequantizeLinear"

    def reaches_dq(self, name: str) -> bool:
        """`from_dq` through ops TensorRT moves a DequantizeLinear past (DQ_COMMUTING): a Q/DQ
        pair before a MaxPool or Flatten still feeds the next Conv/Gemm INT8."""
        src = self.producer.get(name)
        while src is not None and src.op_type in DQ_COMMUTING and src.input:
            src = self.producer.get(src.input[0])
        return src is not None and src.op_type == "DequantizeLinear"


def _walk(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _walk(a.g)


def _v(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def _check_ops(g: _Graph) -> Iterator[LintFinding]:
    trt = _v(g.version)
    for n in g.nodes:
        if n.domain not in ("", "ai.onnx"):
            yield LintFinding(
                "error",
                n.name,
                f"{n.domain}::{n.op_type}",
                "non-standard op: TensorRT parses it only through a plugin",
                "lint the plain export (not an ONNX Runtime-fused graph) or "
                "register a TensorRT plugin of that name",
            )
            continue
        rule = OPS.get(n.op_type)
        if rule is None:
            continue
        if rule.since is None:
            yield LintFinding(
                "error",
                n.name,
                n.op_type,
                "not supported by the TensorRT ONNX parser",
                "replace the op at export time or provide a plugin",
            )
        elif g.version < rule.since:
            yield LintFinding(
                "error",
                n.name,
                n.op_type,
                f"supported from TensorRT {_v(rule.since)}; the target has {trt}",
                "decompose the op at export time or target a newer TensorRT",
            )
        elif rule.check and (problem := rule.check(n)):
            yield LintFinding(
                "error", n.name, n.op_type, problem, "change the op's attributes at export time"
            )
        elif rule.note and (rule.note_until is None or g.version < rule.note_until):
            yield LintFinding(
                "warning",
                n.name,
                n.op_type,
                f"TensorRT {trt}: {rule.note}",
                "check that the graph stays within this restriction",
            )


def _check_opset(g: _Graph) -> Iterator[LintFinding]:
    ceiling = max((m for v, m in OPSET_MAX if v <= g.version), default=OPSET_MAX[0][1])
    if g.opset < OPSET_MIN:
        yield LintFinding(
            "error",
            "",
            "opset",
            f"opset {g.opset} is below {OPSET_MIN}",
            f"re-export with opset >= {OPSET_MIN}",
        )
    elif g.opset > ceiling:
        yield LintFinding(
            "warning",
            "",
            "opset",
            f"opset {g.opset} is newer than TensorRT {_v(g.version)} documents ({ceiling})",
            f"re-export with opset <= {ceiling}",
        )
    if g.opset < 13 and any(n.op_type in QDQ_OPS for n in g.nodes):
        yield LintFinding(
            "warning",
            "",
            "opset",
            f"Q/DQ in opset {g.opset}: per-channel scales need opset 13",
            "re-export with opset >= 13 before quantizing",
        )


def _check_int64(g: _Graph) -> Iterator[LintFinding]:
    native = g.version >= (9, 0)
    for i in g.inputs:
        if i.type.tensor_type.elem_type != TensorProto.INT64:
            continue
        if native:
            yield LintFinding(
                "info",
                i.name,
                "input",
                "INT64 input: TensorRT >= 9 binds it as INT64",
                "feed int64 buffers on the device (or export the input as int32)",
            )
        else:
            yield LintFinding(
                "warning",
                i.name,
                "input",
                "INT64 input: the parser casts it to INT32, clamping large values",
                "export the input as int32",
            )


def _dims(value: onnx.ValueInfoProto) -> list[onnx.TensorShapeProto.Dimension]:
    return list(value.type.tensor_type.shape.dim)


def _is_dynamic(d: onnx.TensorShapeProto.Dimension) -> bool:
    return bool(d.dim_param) or d.dim_value <= 0


def _check_dynamic(g: _Graph) -> Iterator[LintFinding]:
    for i in g.inputs:
        dims = _dims(i)
        if g.input_shapes and i.name in g.input_shapes:
            continue
        for axis, d in enumerate(dims):
            expected = (
                axis == 0
                or (axis == 1 and len(dims) == 2)
                or bool(_SEQUENCE_NAME.search(d.dim_param))
            )
            if _is_dynamic(d) and not expected:
                yield LintFinding(
                    "warning",
                    i.name,
                    "input",
                    f"dynamic dim '{d.dim_param or '?'}' at axis {axis} with no "
                    "shapes: TensorRT tunes kernels for the opt shape only",
                    "give input shapes (min/opt/max) or export it static",
                )


def _check_qdq(g: _Graph) -> Iterator[LintFinding]:
    for n in g.nodes:
        x = g.inits.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if x is not None and x.data_type not in DEQUANTIZABLE:
            unsigned = x.data_type == TensorProto.UINT8
            yield LintFinding(
                "error",
                n.name,
                n.op_type,
                f"DequantizeLinear of {TensorProto.DataType.Name(x.data_type)} "
                f"({'an asymmetric CPU-scheme weight' if unsigned else 'a quantized bias'}): "
                'TensorRT dequantizes INT8, FP8 and INT4 only ("only activation types '
                'allowed as input to this layer")',
                "quantize for the TensorRT target (kdc compress --target <it>: symmetric INT8)"
                if unsigned
                else "keep biases in float (ONNX Runtime quantize_static: "
                "extra_options QuantizeBias=False)",
            )
        if n.op_type in QDQ_OPS and len(n.input) > 2 and n.input[2] in g.inits:
            zp = g.inits[n.input[2]]
            if zp.data_type == TensorProto.UINT8 or numpy_helper.to_array(zp).any():
                yield LintFinding(
                    "error",
                    n.name,
                    n.op_type,
                    "asymmetric Q/DQ: TensorRT needs INT8 with zero point 0",
                    "quantize with symmetric INT8 activations and weights",
                )
        if n.op_type in FLOAT_ONLY and any(g.from_dq(x) for x in n.input):
            yield LintFinding(
                "warning",
                n.name,
                n.op_type,
                "DequantizeLinear feeds an op TensorRT runs in float: the Q/DQ "
                "pair adds a reformat without INT8 math",
                "exclude this op's inputs from quantization",
            )
        if (
            n.op_type in WEIGHTED
            and len(n.input) > 1
            and g.from_dq(n.input[1])
            and g.is_constant(n.input[1])
            and not g.reaches_dq(n.input[0])
        ):
            yield LintFinding(
                "warning",
                n.name,
                n.op_type,
                "weights quantized but not the activation: no INT8 math here",
                "quantize the activation input too (static Q/DQ on both)",
            )


def _check_dla(g: _Graph) -> Iterator[LintFinding]:
    if g.profile.runtime.dla_cores <= 0:
        return
    runtime = g.profile.runtime
    if not supports_dla(runtime.tensorrt, runtime.jetpack):
        yield LintFinding(
            "info",
            "",
            "DLA",
            f"TensorRT {_v(g.version)} has no DLA support: the engine runs on the GPU",
            f"build for DLA with {DLA_RULE}",
        )
        return
    for i in g.inputs:
        if any(_is_dynamic(d) for d in _dims(i)):
            yield LintFinding(
                "warning",
                i.name,
                "input",
                "DLA needs static shapes",
                "build DLA engines with min = opt = max",
            )
    softmax_default = -1 if g.opset >= 13 else 1
    for n in g.nodes:
        if n.op_type not in DLA_OPS:
            msg = "no DLA layer (approximate table): runs on the GPU through GPU_FALLBACK"
        elif n.op_type == "Softmax" and _attr(n, "axis", softmax_default) != 1:
            msg = "Softmax over a non-channel axis: not on DLA (approximate table)"
        elif n.op_type == "MatMul" and not any(g.is_constant(x) for x in n.input):
            msg = "MatMul of two activations: not on DLA (approximate table)"
        else:
            continue
        yield LintFinding(
            "warning",
            n.name,
            n.op_type,
            msg,
            "expect DLA<->GPU transitions; keep such layers at the end or on GPU",
        )


CHECKS: dict[str, Callable[[_Graph], Iterator[LintFinding]]] = {
    "ops": _check_ops,
    "opset": _check_opset,
    "int64": _check_int64,
    "dynamic": _check_dynamic,
    "qdq": _check_qdq,
    "dla": _check_dla,
}


def _merge(findings: list[LintFinding]) -> list[LintFinding]:
    """One finding per (severity, op, message), naming the first node and how many more."""
    groups: dict[tuple[str, str, str], list[LintFinding]] = {}
    for f in findings:
        groups.setdefault((f.severity, f.op, f.message), []).append(f)
    merged = []
    for group in groups.values():
        first = group[0]
        node = first.node + (f" (+{len(group) - 1} more)" if len(group) > 1 else "")
        merged.append(LintFinding(first.severity, node, first.op, first.message, first.fix))
    return sorted(merged, key=lambda f: SEVERITIES.index(f.severity))


def lint_onnx(
    model_or_path: onnx.ModelProto | Path | str,
    profile: HardwareProfile,
    *,
    input_shapes: dict[str, list[int]] | None = None,
) -> list[LintFinding]:
    """Findings for the profile's TensorRT version, errors first."""
    if not profile.runtime.tensorrt:
        return [
            LintFinding(
                "info",
                "",
                "profile",
                f"{profile.name} has no TensorRT runtime",
                "lint against a TensorRT target such as jetson",
            )
        ]
    model = (
        model_or_path
        if isinstance(model_or_path, onnx.ModelProto)
        else onnx.load(str(model_or_path), load_external_data=False)
    )
    g = _Graph(model, profile, parse_version(profile.runtime.tensorrt), input_shapes)
    return _merge([f for check in CHECKS.values() for f in check(g)])


def format_findings(findings: list[LintFinding]) -> str:
    """Human-readable lines plus a count per severity."""
    lines = [
        f"{f.severity.upper():<7} {f.op}{f' {f.node!r}' if f.node else ''}: {f.message} "
        f"(fix: {f.fix})"
        for f in findings
    ]
    counts = ", ".join(f"{s}: {sum(f.severity == s for f in findings)}" for s in SEVERITIES)
    return "\n".join([*lines, counts]) if findings else "no findings"
