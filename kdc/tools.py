"""Model-level tools behind `kdc bench`, `kdc estimate`, `kdc lint`, `kdc check`, `kdc inspect`
and `kdc bundle`: each works on one ONNX file, report or run directory."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from kdc.errors import UserError
from kdc.rundir import RunDir, read_json

if TYPE_CHECKING:
    from kdc.pipeline import Context

ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.BOOL: np.bool_,
}
DEFAULT_SEQUENCE = 128
# a text model's per-token inputs: one not given a --shape takes input_ids' (or a sibling's)
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def parse_shapes(specs: list[str]) -> dict[str, list[int]]:
    """`["input_ids:1x128"]` → {"input_ids": [1, 128]}."""
    out = {}
    for spec in specs:
        name, _, dims = spec.rpartition(":")
        try:
            out[name] = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            name = ""
        if not name or any(d <= 0 for d in out.get(name, [0])):
            raise UserError(f"bad shape '{spec}'", field="--shape", fix="use NAME:1x128")
    return out


def batch_of(batch: int | None, shapes: dict[str, list[int]] | None) -> int:
    """The batch to time or predict: `batch` when given, else the first dimension the given
    shapes agree on, else 1."""
    if batch is not None:
        return batch
    firsts = {dims[0] for dims in (shapes or {}).values() if dims}
    if len(firsts) > 1:
        raise UserError(
            f"the --shape values start with different batch sizes {sorted(firsts)}",
            field="--shape",
            fix="give every input the same first dimension, or pass --batch",
        )
    return firsts.pop() if firsts else 1


def load_onnx(path: Path | str) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise UserError("file not found", source=str(path), fix="pass an .onnx file")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf raises several types on garbage
        raise UserError(
            "not a valid ONNX model", source=str(path), fix="re-export the model"
        ) from None


def _declared_dims(inp: onnx.ValueInfoProto) -> list[int | str] | None:
    """An input's dims (an int, or the name of a dynamic dim); None when its rank is unknown."""
    t = inp.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]


def check_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]], source: str) -> None:
    """Every `--shape` must name a model input and keep its rank and fixed dims."""
    init = {i.name for i in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in init}
    for name, shape in shapes.items():
        if name not in inputs:
            raise UserError(
                f"the model has no input '{name}' (its inputs: {', '.join(inputs)})",
                source=source,
                field="--shape",
                fix=f"name one of the model's inputs, e.g. {next(iter(inputs), 'input_ids')}:1x128",
            )
        dims = _declared_dims(inputs[name])
        if dims is None:
            continue
        if len(shape) != len(dims) or any(
            isinstance(d, int) and d > 0 and d != s for d, s in zip(dims, shape, strict=False)
        ):
            given = "x".join(map(str, shape))
            want = "x".join(
                str(d if isinstance(d, int) and d > 0 else (shape[i] if i < len(shape) else 1))
                for i, d in enumerate(dims)
            )
            raise UserError(
                f"{name}:{given} does not fit the model's input {name} "
                f"[{', '.join(map(str, dims))}]",
                source=source,
                field="--shape",
                fix=f"keep its rank and fixed dims, e.g. {name}:{want}",
            )


def follow_token_shapes(
    model: onnx.ModelProto, shapes: dict[str, list[int]]
) -> dict[str, list[int]]:
    """`shapes` plus, for each per-token input (`TOKEN_INPUTS`) of the model not given one, the
    shape given to input_ids (else to the first per-token input given) when the ranks match."""
    given = [shapes[n] for n in TOKEN_INPUTS if n in shapes]
    if not given:
        return shapes
    out = dict(shapes)
    for inp in model.graph.input:
        dims = _declared_dims(inp)
        if inp.name in TOKEN_INPUTS and inp.name not in out and dims and len(dims) == len(given[0]):
            out[inp.name] = list(given[0])
    return out


def synthetic_inputs(
    path: Path | str, batch: int = 1, shapes: dict[str, list[int]] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Inputs matching the model's declared inputs: `shapes` override (checked against the
    declared inputs; per-token inputs follow input_ids', `follow_token_shapes`); dynamic batch
    dims take `batch`, other dynamic dims 128; ids are small ints, masks ones, token types
    zeros, floats normal."""
    model = load_onnx(path)
    check_shapes(model, shapes or {}, str(path))
    shapes = follow_token_shapes(model, shapes or {})
    init = {i.name for i in model.graph.initializer}
    rng = np.random.default_rng(seed)
    out = {}
    for inp in model.graph.input:
        if inp.name in init:
            continue
        t = inp.type.tensor_type
        if inp.name in shapes:
            shape = shapes[inp.name]
        else:
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            shape = [
                d if d else (batch if i == 0 else DEFAULT_SEQUENCE) for i, d in enumerate(dims)
            ]
        dtype = ONNX_DTYPES.get(t.elem_type, np.float32)
        if np.issubdtype(dtype, np.integer):
            arr = (
                np.ones(shape, dtype)
                if "mask" in inp.name
                else np.zeros(shape, dtype)  # a type embedding may have 2 rows (BERT's)
                if "type" in inp.name
                else rng.integers(0, 100, size=shape).astype(dtype)
            )
        else:
            arr = rng.standard_normal(shape).astype(dtype)
        out[inp.name] = arr
    return out


def bench(
    path: Path | str,
    *,
    batch: int | None = None,
    threads: int | None = None,
    shapes: dict[str, list[int]] | None = None,
    iterations: int = 200,
    warmup: int = 10,
    min_duration_s: float = 1.0,
) -> dict:
    """Measure one ONNX model with ONNX Runtime on this machine (latency object, its precision
    `graph_precision`); `batch` None: `batch_of` the shapes."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument

    from kdc.deploy.latency import measure_onnx

    batch = batch_of(batch, shapes)
    inputs = synthetic_inputs(path, batch, shapes)
    try:
        return measure_onnx(
            path,
            inputs,
            threads=threads,
            warmup=warmup,
            iterations=iterations,
            min_duration_s=min_duration_s,
            batch=batch,
            precision=graph_precision(load_onnx(path)),
        )
    except (InvalidArgument, Fail) as e:
        text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", " ".join(str(e).split()))
        if isinstance(e, Fail) and "while running" not in text:
            raise  # the session could not be created: not a matter of the inputs
        given = shapes_text({k: [batch, *v.shape[1:]] for k, v in inputs.items()})  # as fed
        raise UserError(
            f"ONNX Runtime cannot run the model on {given}: "
            f"{text if len(text) <= 240 else text[:100] + ' … ' + text[-120:]}",
            source=str(path),
            field="--shape",
            fix="pass shapes the model accepts with --shape NAME:1x128",
        ) from None


def shapes_text(shapes: dict[str, list[int]]) -> str:
    """`input_ids:1x16, attention_mask:1x16`."""
    return ", ".join(f"{k}:{'x'.join(map(str, v))}" for k, v in shapes.items())


INT8_OPS = {
    "QuantizeLinear",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "QLinearMatMul",
    "QLinearConv",
}


def graph_precision(model: onnx.ModelProto) -> str:
    """int8 for a quantized graph (Q/DQ or integer ops), else fp32."""
    return "int8" if {n.op_type for n in model.graph.node} & INT8_OPS else "fp32"


def estimate(
    path: Path | str,
    target: str,
    *,
    precision: str | None = None,
    batch: int | None = None,
    shapes: dict[str, list[int]] | None = None,
    explain: bool = False,
    padding: float = 0.0,
    dla_core: int | None = None,
) -> dict:
    """Predict one ONNX model's latency on a target (latency object of kind predicted);
    `precision` None: `graph_precision` (fp16 for a float graph on a DLA core); `batch` None:
    `batch_of` the shapes; `dla_core`: a TensorRT engine built for that DLA core."""
    from kdc.deploy.estimate import predict_onnx
    from kdc.profiles import load_profile

    profile = load_profile(target)
    batch = batch_of(batch, shapes)
    model = load_onnx(path)
    # a float graph on a DLA core: fp16, as TensorRT builds it there (DLA has no fp32)
    default = graph_precision(model)
    precision = precision or ("fp16" if dla_core is not None and default == "fp32" else default)
    if dla_core is not None:
        from kdc.deploy.dla import check_dla

        check_dla(profile, dla_core, precision, field="--dla-core", precision_field="--precision")
    given = {k: list(v.shape) for k, v in synthetic_inputs(path, batch, shapes).items()}
    return predict_onnx(
        model,
        profile,
        precision=precision,
        batch=batch,
        input_shapes=given,
        explain=explain,
        padding=padding,
        dla_core=dla_core,
    )


def lint(path: Path | str, target: str) -> list:
    """TensorRT compatibility findings for a model on a target."""
    from kdc.deploy.lint import lint_onnx
    from kdc.profiles import load_profile

    return lint_onnx(load_onnx(path), load_profile(target))


def _pipeline_order(stage: str) -> int:
    from kdc.pipeline import STAGE_NAMES

    return STAGE_NAMES.index(stage) if stage in STAGE_NAMES else len(STAGE_NAMES)


UNFINISHED = ("failed", "running")


def inspect_run(run_dir: Path | str) -> dict:
    """Stages with status, wall time and artifacts, flagging any whose sha256 no longer matches,
    any built from an earlier stage's older outputs (status `outdated`) and any that failed or
    was cut short (`unfinished`)."""
    from kdc.pipeline import outdated

    run = RunDir.existing(run_dir)
    m = run.manifest()
    old = outdated(run)
    stages = {}
    recs = m.get("stages", {})
    for name, rec in sorted(recs.items(), key=lambda kv: _pipeline_order(kv[0])):
        bad = set(run.verify_outputs(name))
        stages[name] = {
            "status": "outdated" if name in old else rec.get("status"),
            "wall_s": rec.get("wall_s"),
            "input_hash": (rec.get("input_hash") or "")[:12],
            "error": rec.get("error"),  # a failed stage's
            "artifacts": {
                k: {"sha256": v[:12], "ok": k not in bad} for k, v in rec.get("outputs", {}).items()
            },
        }
    return {
        "run": str(run.root),
        "target": m.get("target"),
        "target_file": m.get("target_file"),
        "kdc_version": m.get("kdc_version"),
        "stages": stages,
        "corrupt": [
            f"{s}:{a}" for s, r in stages.items() for a, v in r["artifacts"].items() if not v["ok"]
        ],
        "outdated": old,
        # a stage that failed, or was cut short (still `running` in the manifest)
        "unfinished": {n: st["status"] for n, st in stages.items() if st["status"] in UNFINISHED},
        "writer": run.writer(),  # the pid of a kdc process writing the run now, if any
    }


def bundle(run_dir: Path | str, target: str) -> Path:
    """Write (or rewrite) the device bundle of a finished run for a target; a bundle it
    replaces that holds device results is moved aside to build/previous-<name>, not deleted."""
    from kdc import api

    ctx = api.open_run(api.config_of_run(run_dir), target, run_dir, quiet=True)
    with ctx.run.lock():  # no compress or verify rewrites the build meanwhile
        return _bundle(ctx, run_dir)


def _bundle(ctx: Context, run_dir: Path | str) -> Path:
    from kdc.deploy.bundle import bundle_dir
    from kdc.pipeline import outdated, require_stage, stage_not_ready
    from kdc.preflight import check_dla_target
    from kdc.stages.build_tensorrt import (
        make_bundle,
        parse_blocker,
        set_aside_results,
        tensorrt_precision,
        tensorrt_source,
    )

    check_dla_target(ctx.cfg, ctx.profile)  # build.dla_core on a target without that core
    require_stage(ctx, "build")
    if "build" in outdated(ctx.run):  # its engines are of an earlier student
        raise stage_not_ready(ctx, "build", stale_upstream=True)
    engines = read_json(ctx.run / "build" / "engines.json")
    shipped = tensorrt_source(ctx, engines)
    if shipped is None:
        raise UserError(
            "the run has no built ONNX Runtime engine",
            source=str(run_dir),
            fix="run `kdc compress` (or `kdc build`) first",
        )
    blocker = parse_blocker(ctx, ctx.run / shipped["path"])
    if blocker:
        why, fix = blocker
        raise UserError(
            why,
            source=str(run_dir),
            fix=f"{fix}; a run compressed for {ctx.profile.name} quantizes for it",
        )
    precision = tensorrt_precision(ctx, engines)
    replaced = bundle_dir(ctx.run / "build" / "bundle", ctx.profile.name)
    aside = set_aside_results(ctx, replaced, "(kdc bundle writes a new bundle there)")
    try:
        out = make_bundle(ctx, ctx.run / shipped["path"], precision)
    except BaseException:  # nothing written: the run keeps the bundle it had
        if aside is not None and not replaced.exists():
            aside.rename(replaced)
            ctx.warn(f"moved {aside.name} back to {replaced.name}: no new bundle was written")
        raise
    ctx.run.rerecord("build", out)  # the build's own bundle, rewritten: still the run's
    return out
