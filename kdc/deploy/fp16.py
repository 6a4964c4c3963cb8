"""An fp16 copy of a float32 ONNX graph, for TensorRT 11, which takes precision from the graph
(strongly typed): onnxconverter-common's converter when installed, else a minimal one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from kdc.deploy.external_data import external_data_files
from kdc.deploy.tensorrt import QDQ_OPS
from kdc.errors import UserError
from kdc.rundir import atomic_path

# Inputs that the ONNX spec keeps float32 whatever the data type (Resize roi/scales).
_KEEP_FP32 = {"Resize": {1, 2}, "Upsample": {1}}
_FP16_MAX = float(np.finfo(np.float16).max)


# goes up whenever the built-in converter writes other graphs: the TensorRT engine cache key
# holds it (`converter`), so an engine built from the graph of an earlier one is not reused
BUILTIN_VERSION = 1


def converter() -> tuple[str, Callable[[onnx.ModelProto, str], onnx.ModelProto]]:
    """The fp16 converter `convert_fp16` runs, as (its name and version, `convert(model,
    source)`): onnxconverter-common's when installed, else kdc's built-in one."""
    try:
        import onnxconverter_common
        from onnxconverter_common import float16
    except ImportError:
        return f"kdc-builtin {BUILTIN_VERSION}", _to_fp16
    version = getattr(onnxconverter_common, "__version__", "unknown")
    return (
        f"onnxconverter-common {version}",
        lambda model, source: float16.convert_float_to_float16(model, keep_io_types=True),
    )


def convert_fp16(onnx_in: Path | str, onnx_out: Path | str) -> Path:
    """Write an fp16 copy of a float32 graph with float32 inputs and outputs.

    Uses onnxconverter-common when installed; else a minimal converter (initializers, Constant,
    ConstantOfShape and Cast-to-float turned fp16, casts at the graph edges) that refuses
    Q/DQ graphs and checks the result with strict shape inference (`converter`). A graph with
    external data (over 2 GB) is written with its data beside it, in `<onnx_out name>.data`."""
    external = bool(external_data_files(onnx_in))
    converted = converter()[1](onnx.load(str(onnx_in)), str(onnx_in))
    data = Path(onnx_out).with_name(f"{Path(onnx_out).name}.data")
    data.unlink(missing_ok=True)  # onnx.save appends to an existing data file
    with atomic_path(onnx_out) as tmp:
        onnx.save(
            converted,
            str(tmp),
            save_as_external_data=external,
            location=data.name,
            size_threshold=0,  # every initializer in the data file
        )
    return Path(onnx_out)


def _to_fp16(model: onnx.ModelProto, source: str) -> onnx.ModelProto:
    g = model.graph
    if any(n.op_type in QDQ_OPS for n in g.node):
        raise UserError(
            "the built-in fp16 converter does not handle Q/DQ graphs",
            source=source,
            fix="pip install onnxconverter-common, or build int8 without fp16",
        )
    keep = {n.input[i] for n in g.node for i in _KEEP_FP32.get(n.op_type, ()) if i < len(n.input)}
    for init in g.initializer:
        if init.data_type == TensorProto.FLOAT and init.name not in keep:
            init.CopyFrom(_half(init))
    for node in g.node:
        for attr in node.attribute:
            if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(_half(attr.t))
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
    renames = {}
    head = []
    for inp in g.input:
        if inp.type.tensor_type.elem_type == TensorProto.FLOAT:
            renames[inp.name] = f"{inp.name}__fp16"
            head.append(
                helper.make_node(
                    "Cast",
                    [inp.name],
                    [renames[inp.name]],
                    to=TensorProto.FLOAT16,
                    name=f"{inp.name}__cast_in",
                )
            )
    tail = []
    for out in g.output:
        if out.type.tensor_type.elem_type == TensorProto.FLOAT:
            inner = f"{out.name}__fp16"
            renames[out.name] = inner
            tail.append(
                helper.make_node(
                    "Cast", [inner], [out.name], to=TensorProto.FLOAT, name=f"{out.name}__cast_out"
                )
            )
    outputs = {o.name for o in g.output}
    for node in g.node:
        node.input[:] = [renames.get(x, x) for x in node.input]
        node.output[:] = [renames[x] if x in outputs and x in renames else x for x in node.output]
    nodes = [*head, *g.node, *tail]
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    try:
        onnx.checker.check_model(model)
        return onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise UserError(
            f"fp16 conversion produced an invalid graph: {str(e).splitlines()[0]}",
            source=source,
            fix="pip install onnxconverter-common",
        ) from None


def _half(t: TensorProto) -> TensorProto:
    arr = np.clip(numpy_helper.to_array(t), -_FP16_MAX, _FP16_MAX).astype(np.float16)
    return numpy_helper.from_array(arr, t.name)
