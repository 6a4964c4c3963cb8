"""The ONNX Runtime engine: sessions, batched inference, graph optimization, INT8 quantization."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnx import numpy_helper
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from kdc.data.batching import EVAL_BATCH, map_by_length
from kdc.deploy.onnx_graph import FreshNames, constants, reads
from kdc.deploy.qdq import unsigned_activations
from kdc.errors import UserError, first_line
from kdc.profiles import host_threads
from kdc.rundir import atomic_path

log = logging.getLogger(__name__)
# Symbolic shape inference (quantization pre-processing) warns about every symbolic broadcast it
# cannot resolve (e.g. "Min(512, sequence)" of a position-embedding slice): harmless here.
logging.getLogger("onnxruntime.tools.symbolic_shape_infer").setLevel(logging.ERROR)

CPU = "CPUExecutionProvider"

OPTIMIZATION_LEVELS: dict[str, ort.GraphOptimizationLevel] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

# Ops quantized per family. Transformers leave Add/Softmax/LayerNorm in float: quantizing the
# attention-mask Add (range down to float min) collapses the model to chance.
QUANT_OPS: dict[str, list[str] | None] = {"transformer": ["MatMul", "Gemm", "Gather"], "cnn": None}

CALIBRATION_METHODS: dict[str, CalibrationMethod] = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}

# ONNX Runtime type strings of session inputs -> numpy dtypes fed to them.
_ORT_DTYPES: dict[str, type] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}

# What ONNX / ONNX Runtime raise for a file that is not a loadable model.
_MODEL_ERRORS = (
    DecodeError,
    onnx.checker.ValidationError,
    ort_state.InvalidProtobuf,
    ort_state.InvalidGraph,
    ort_state.InvalidArgument,
    ort_state.NoSuchFile,
    ort_state.NoModel,
    ort_state.NotImplemented,
    ort_state.Fail,
)


@contextlib.contextmanager
def _reading(path: Path | str) -> Iterator[None]:
    """Turn ONNX/ORT load errors into a one-line UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            "ONNX file not found",
            source=str(path),
            fix="check the path or run the export stage again",
        )
    try:
        yield
    except _MODEL_ERRORS as e:
        raise UserError(
            f"not a usable ONNX model: {first_line(e)}",
            source=str(path),
            fix="re-export the model; the file may be truncated or not ONNX",
        ) from None


def make_session(
    path: Path | str,
    threads: int | None = None,
    providers: list[str] | None = None,
    optimization: str = "all",
) -> ort.InferenceSession:
    """An InferenceSession with pinned threads (intra-op `threads` or all usable CPUs, inter-op 1),
    sequential execution, and the requested providers that this build has (CPU always last)."""
    if optimization not in OPTIMIZATION_LEVELS:
        raise UserError(
            f"unknown graph optimization '{optimization}'",
            field="optimization",
            fix=f"use one of {', '.join(OPTIMIZATION_LEVELS)}",
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or host_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
    available = set(ort.get_available_providers())
    chosen = [p for p in providers or [] if p in available and p != CPU] + [CPU]
    with _reading(path):
        return ort.InferenceSession(str(path), opts, providers=chosen)


def session_options_record(session: ort.InferenceSession) -> dict:
    """How a session runs, for the report: providers, threads, execution mode, optimization."""
    so = session.get_session_options()
    return {
        "onnxruntime": ort.__version__,
        "providers": session.get_providers(),
        "intra_op_threads": so.intra_op_num_threads,
        "inter_op_threads": so.inter_op_num_threads,
        "execution_mode": so.execution_mode.name,
        "graph_optimization_level": so.graph_optimization_level.name,
    }


def _feed(
    declared: dict[str, type | None], inputs: dict[str, np.ndarray], source: str
) -> dict[str, np.ndarray]:
    """The declared inputs only, cast to the declared dtypes; all with the same number of rows."""
    missing = [name for name in declared if name not in inputs]
    if missing:
        raise UserError(
            f"model input '{missing[0]}' is not among the given inputs "
            f"({', '.join(inputs) or 'none'})",
            source=source,
            fix="encode the data with the adapter the model was exported from",
        )
    feed = {name: np.asarray(inputs[name], dtype=dtype) for name, dtype in declared.items()}
    rows = {len(v) for v in feed.values()}
    if len(rows) > 1:
        raise UserError(
            f"inputs have different numbers of rows {sorted(rows)}",
            source=source,
            fix="give every input the same batch dimension",
        )
    return feed


def feed_for(session: ort.InferenceSession, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The subset of `inputs` the session declares, cast to the declared dtypes."""
    declared = {i.name: _ORT_DTYPES.get(i.type) for i in session.get_inputs()}
    return _feed(declared, inputs, source="onnx model inputs")


def run_session(
    session: ort.InferenceSession,
    inputs: dict[str, np.ndarray],
    batch_size: int = EVAL_BATCH,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The first output over all rows of `inputs`, run `batch_size` rows at a time (`progress`
    told each batch's rows); text rows by length, each batch cut to its longest row, where the
    graph's sequence axis is dynamic and its output is one fixed-size row per input (logits, an
    embedding)."""
    feed = feed_for(session, inputs)
    first = session.get_outputs()[0]
    mask = next((i for i in session.get_inputs() if i.name == "attention_mask"), None)
    cut = (
        mask is not None
        and len(mask.shape) == 2
        and not isinstance(mask.shape[1], int)
        and all(isinstance(d, int) for d in first.shape[1:])
    )
    return map_by_length(
        lambda b: session.run([first.name], b)[0], feed, batch_size, cut=cut, progress=progress
    )


def count_ops(path: Path | str) -> dict[str, int]:
    """Node count per op type of the main graph, most frequent first."""
    with _reading(path):
        model = onnx.load(str(path), load_external_data=False)
    return dict(Counter(n.op_type for n in model.graph.node).most_common())


class _HeadWidthNotice(logging.Filter):
    """Drops ORT attention fusion's warning that the heads' width it was given is not q/k/v's
    input width: so is every head-pruned attention's (`optimizer_dims` passes heads × head size),
    and it came once per layer."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is not same as weight matrix dimension" not in str(record.msg)


# ORT's transformer scripts log under their bare module names (they import each other so)
for _name in ("fusion_attention", "onnxruntime.transformers.fusion_attention"):
    logging.getLogger(_name).addFilter(_HeadWidthNotice())


def _optimize_transformer(
    src: Path, tmp: Path, num_heads: int, hidden_size: int, fuse_masked_attention: bool
) -> None:
    """Fuse Attention/SkipLayerNorm/BiasGelu with ORT's transformer optimizer (CPU, level 2):
    as "bert", or as "vit" (no attention mask) for a graph that takes `pixel_values`, its
    attention scores' scale made a Div first (`_scores_divided`, on a scratch copy). Without
    `fuse_masked_attention` a "bert" graph keeps its attention as MatMul/Softmax for the
    masked-softmax floor (kdc.deploy.softmax_floor), which ORT's fused Attention hides."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    with _reading(src):
        inputs = {i.name for i in onnx.load(str(src), load_external_data=False).graph.input}
        model_type = "vit" if "pixel_values" in inputs else "bert"
        graph = onnx.load(str(src)) if model_type == "vit" else None
    with tempfile.TemporaryDirectory(prefix="kdc-fuse-") as scratch:
        source = src
        if graph is not None and _scores_divided(graph):
            source = Path(scratch) / "model.onnx"
            onnx.save(graph, str(source))

        fusion = FusionOptions(model_type)
        fusion.enable_attention = fuse_masked_attention or model_type == "vit"

        def run(level: int):
            return optimize_model(
                str(source),
                model_type=model_type,
                num_heads=num_heads,
                hidden_size=hidden_size,
                opt_level=level,
                optimization_options=fusion,
            )

        try:
            model = run(2)
        except Exception as e:  # the fusion scripts fail in many ways on unusual graphs
            log.warning("%s: fusion at opt_level 2 failed (%s); using opt_level 1", src, _line(e))
            try:
                model = run(1)
            except Exception as e1:
                log.warning(
                    "%s: fusion at opt_level 1 failed too (%s); the graph is kept as "
                    "exported (ONNX Runtime's session still optimises it)",
                    src,
                    _line(e1),
                )
                onnx.save(onnx.load(str(source)), str(tmp))
                return
    fused = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    log.info("%s: fused operators %s", src, fused or "none")
    model.save_model_to_file(str(tmp))


def _line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _scores_divided(model: onnx.ModelProto) -> bool:
    """Rewrite each `MatMul → Mul(scalar c) → Softmax` over the last axis (attention scores
    scaled, no mask: the eager ViT export) as `Div(1/c)`, the form ONNX Runtime's optimizer fuses
    into Attention (its no-mask pattern); True if any was rewritten. The scores differ by float
    rounding. A scale shared by several layers (torch.onnx shares equal constants) gets one
    reciprocal."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    consts = constants(g)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    fresh, reciprocals = FreshNames(g), {}
    for soft in [n for n in g.node if n.op_type == "Softmax"]:
        axis = next((a.i for a in soft.attribute if a.name == "axis"), -1 if opset >= 13 else 1)
        mul = producer.get(soft.input[0])
        if axis not in (-1, 3) or mul is None or mul.op_type != "Mul":  # scores are B×A×L×L
            continue
        kinds = [getattr(producer.get(i), "op_type", "") for i in mul.input]
        if "MatMul" not in kinds:
            continue
        scores, const = (mul.input[0], mul.input[1]) if kinds[0] == "MatMul" else mul.input[::-1]
        scale = consts.get(const)
        if scale is None or scale.size != 1 or not scale.any():
            continue
        if const not in reciprocals:
            reciprocals[const] = fresh(f"{const}_reciprocal")
            reciprocal = (1 / scale).astype(scale.dtype)
            g.initializer.append(numpy_helper.from_array(reciprocal, reciprocals[const]))
        mul.op_type = "Div"
        mul.input[:] = [scores, reciprocals[const]]
    unread = set(reciprocals) - set(reads(g))  # scales read no more: ONNX Runtime warns of each
    keep = [n for n in g.node if not (n.op_type == "Constant" and n.output[0] in unread)]
    del g.node[:]
    g.node.extend(keep)
    kept_init = [i for i in g.initializer if i.name not in unread]
    del g.initializer[:]
    g.initializer.extend(kept_init)
    return bool(reciprocals)


def _optimize_cnn(
    src: Path, tmp: Path, num_heads: int, hidden_size: int, fuse_masked_attention: bool
) -> None:
    """Save the ORT_ENABLE_EXTENDED-optimized graph (offline optimization, CPU provider)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp)
    ort.InferenceSession(str(src), opts, providers=[CPU])


def optimizer_dims(arch: dict[str, Any]) -> tuple[int, int]:
    """(num_heads, hidden_size) for ORT's transformer optimizer of a model of architecture
    `arch`: its heads and their total width where every layer has the same, else (0, 0),
    detect. The optimizer fuses each attention with the heads its graph states, these the
    fallback; it asserts hidden_size is a multiple of num_heads, which a head-pruned model's
    layer 0 count (`num_attention_heads`) and hidden size need not be."""
    heads = arch.get("num_attention_heads") or 0
    size = arch.get("attention_head_size")
    width = heads * size if size else arch.get("hidden_size") or 0
    if not heads or arch.get("layer_heads") or width % heads:
        return 0, 0
    return heads, width


OPTIMIZERS: dict[str, Callable[[Path, Path, int, int, bool], None]] = {
    "transformer": _optimize_transformer,
    "cnn": _optimize_cnn,
}


def optimize(
    src: Path | str,
    dst: Path | str,
    *,
    family: str,
    num_heads: int = 0,
    hidden_size: int = 0,
    fuse_masked_attention: bool = True,
) -> Path:
    """Write an ORT-optimized copy of `src` to `dst` (atomically); heads/hidden 0 = detect;
    `fuse_masked_attention` False leaves a text transformer's attention unfused, for the
    masked-softmax floor."""
    if family not in OPTIMIZERS:
        raise UserError(
            f"unknown model family '{family}'",
            field="family",
            fix=f"use one of {', '.join(OPTIMIZERS)}",
        )
    src, dst = Path(src), Path(dst)
    with _reading(src), atomic_path(dst) as tmp:
        OPTIMIZERS[family](src, tmp, num_heads, hidden_size, fuse_masked_attention)
    return dst


class _ListReader(CalibrationDataReader):
    """Feeds a list of prepared input dicts to the calibrator, one per `get_next`."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _graph_inputs(model: onnx.ModelProto) -> dict[str, type | None]:
    """Declared (non-initializer) graph inputs and their numpy dtypes."""
    inits = {i.name for i in model.graph.initializer}
    return {
        i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).type
        for i in model.graph.input
        if i.name not in inits
    }


def feed_for_file(path: Path | str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The subset of `inputs` the ONNX file at `path` declares, cast to the declared dtypes."""
    with _reading(path):
        model = onnx.load(str(path), load_external_data=False)
    return _feed(_graph_inputs(model), inputs, str(path))


@contextlib.contextmanager
def _working_dir(path: Path) -> Iterator[None]:
    """Run the block in `path` (contextlib.chdir is Python 3.11+)."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def quantize_int8(
    src: Path | str,
    dst: Path | str,
    calib_inputs: list[dict[str, np.ndarray]],
    *,
    symmetric_activations: bool,
    method: str = "minmax",
    per_channel: bool = True,
    op_types: list[str] | None = None,
    nodes_to_exclude: list[str] | None = None,
    float_bias: bool = False,
    reduce_range: bool = False,
    unsigned: bool = False,
) -> Path:
    """Static INT8 QDQ quantization: int8 weights; int8 symmetric activations (TensorRT) or uint8
    asymmetric ones (often better on CPU), calibrated on `calib_inputs` with `method`.
    `op_types` limits which ops are quantized (None: ONNX Runtime's default set);
    `nodes_to_exclude` (node names) stay in float. `float_bias` keeps Conv/Gemm biases in float
    instead of int32 behind a DequantizeLinear, which TensorRT's parser rejects ("only activation
    types allowed as input to this layer"; it dequantizes INT8/FP8/INT4 only). `reduce_range`
    quantizes weights to 7 bits, for x86 int8 kernels without VNNI (their 16-bit sums saturate).
    `unsigned` stores a CNN's symmetric activations UINT8, the same values
    (`qdq.unsigned_activations`: ONNX Runtime's x86 int8 convs take UINT8)."""
    if method not in CALIBRATION_METHODS:
        raise UserError(
            f"unknown calibration method '{method}'",
            field="method",
            fix=f"use one of {', '.join(CALIBRATION_METHODS)}",
        )
    if not calib_inputs:
        raise UserError(
            "no calibration inputs",
            field="calib_inputs",
            fix="pass at least one batch of encoded training rows",
        )
    src, dst = Path(src), Path(dst)
    activations = QuantType.QInt8 if symmetric_activations else QuantType.QUInt8
    with (
        _reading(src),
        tempfile.TemporaryDirectory(prefix="kdc-quant-") as scratch,
        atomic_path(dst) as tmp,
    ):
        work = Path(scratch).resolve()
        pre, source = work / "preprocessed.onnx", str(src.resolve())  # `src` may be relative
        # where symbolic shape inference gives up (some dynamic-sequence graphs), ORT saves
        # sym_shape_infer_temp.onnx and its weights into the working directory: keep them in scratch
        with _working_dir(work):
            try:
                quant_pre_process(source, str(pre))
            except Exception:
                quant_pre_process(source, str(pre), skip_symbolic_shape=True)
        declared = _graph_inputs(onnx.load(str(pre), load_external_data=False))
        reader = _ListReader([_feed(declared, x, str(src)) for x in calib_inputs])
        quantize_static(
            str(pre),
            str(tmp),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=activations,
            weight_type=QuantType.QInt8,
            reduce_range=reduce_range,
            calibrate_method=CALIBRATION_METHODS[method],
            calibration_providers=[CPU],
            op_types_to_quantize=op_types,
            nodes_to_exclude=nodes_to_exclude or [],
            extra_options={
                "ActivationSymmetric": symmetric_activations,
                "WeightSymmetric": True,
                "QuantizeBias": not float_bias,
            },
        )
        if unsigned:
            onnx.save(unsigned_activations(onnx.load(str(tmp))), str(tmp))
    return dst


def quantize_dynamic_int8(src: Path | str, dst: Path | str) -> Path:
    """Dynamic INT8 (int8 weights, activations quantized at run time), as `optimum-cli onnxruntime
    quantize` does; no calibration data."""
    src, dst = Path(src), Path(dst)
    with _reading(src), atomic_path(dst) as tmp:
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8)
    return dst


def weight_granularity(model: onnx.ModelProto) -> str:
    """How an INT8 graph's weights are scaled, read from its DequantizeLinear nodes of 8-bit
    initializers: "int8 per-channel", "int8 per-tensor", how many per channel, or none."""
    inits = {i.name: i for i in model.graph.initializer}
    eight_bit = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    per_channel = [
        len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in inits
        and n.input[1] in inits
        and inits[n.input[0]].data_type in eight_bit
    ]
    if not per_channel:
        return "no int8 weights"
    if all(per_channel):
        return "int8 per-channel"
    if not any(per_channel):
        return "int8 per-tensor"
    return f"int8, {sum(per_channel)} of {len(per_channel)} weight tensors per-channel"


def activation_storage(model: onnx.ModelProto, symmetric: bool) -> str:
    """How an INT8 graph's activations are quantized, their storage read from the zero points of
    its QuantizeLinear nodes of computed tensors: "uint8 asymmetric", "int8 symmetric", or, where
    `finish_qdq` stored symmetric ones UINT8 for ONNX Runtime's CPU kernels (the same values),
    e.g. "symmetric, stored uint8 at zero point 128", or "symmetric, stored uint8 at zero point 128
    (5 tensors) and uint8 from 0 (2 tensors)" (a ReLU's outputs, by NNCF)."""
    if not symmetric:
        return "uint8 asymmetric"
    inits = {i.name: i for i in model.graph.initializer}
    stored = Counter(
        _stored(inits[n.input[2]])
        for n in model.graph.node
        if n.op_type == "QuantizeLinear"
        and n.input[0] not in inits
        and n.input[2:3]
        and n.input[2] in inits
    )
    if set(stored) <= {"int8"}:
        return "int8 symmetric"
    if len(stored) == 1:
        return f"symmetric, stored {next(iter(stored))}"
    *most, last = (f"{k} ({n} tensor{'s' * (n > 1)})" for k, n in stored.most_common())
    return f"symmetric, stored {', '.join(most)} and {last}"


def _stored(zero_point: onnx.TensorProto) -> str:
    """An activation's storage by its (per-tensor) zero point: "int8", "uint8 from 0", or the
    type at its zero point."""
    dtype = "uint8" if zero_point.data_type == onnx.TensorProto.UINT8 else "int8"
    zp = int(numpy_helper.to_array(zero_point).ravel()[0])
    if zp == 0:
        return "int8" if dtype == "int8" else "uint8 from 0"
    return f"{dtype} at zero point {zp}"
