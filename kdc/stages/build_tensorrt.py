"""The build stage's TensorRT part: which graph and precision a TensorRT engine is built from,
the engine itself where TensorRT is installed, else a device bundle that builds it on the device
(the ONNX Runtime engines are kdc/stages/build.py's)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from kdc.errors import UserError
from kdc.pipeline import Context


def tensorrt_source(ctx: Context, engines: list[dict]) -> dict | None:
    """What a TensorRT engine is built from, as {"path", "precision"} (None when no ONNX Runtime
    engine was built): the INT8 Q/DQ graph when one was built (symmetric, biases in float), else
    the exported graph. ONNX Runtime's optimised FP32 graph is not a source: it holds
    com.microsoft fused ops (FusedConv, Attention, SkipLayerNormalization) TensorRT cannot parse."""
    built = [e for e in engines if e["status"] == "built"]
    if not built:
        return None
    exported = ctx.run / "export" / "model.onnx"
    fp32 = {"path": str(exported.relative_to(ctx.run.root)), "precision": "fp32"}
    return next((e for e in built if e["precision"] == "int8"), fp32)


def tensorrt_precision(ctx: Context, engines: list[dict]) -> str:
    """The precision a TensorRT engine is built at: that of its source graph
    (`tensorrt_source`), fp32 raised to fp16; the config's when none was built."""
    shipped = tensorrt_source(ctx, engines)
    return built_at(shipped["precision"] if shipped else ctx.cfg.quantize.precision)


def built_at(precision: str) -> str:
    """The precision a TensorRT engine of a graph at `precision` is built at: fp32 raised to
    fp16."""
    return precision if precision != "fp32" else "fp16"


def tensorrt_not_on_target(
    ctx: Context, engines: list[dict], fix: str = "use a TensorRT target such as jetson or t4"
) -> dict:
    """The `unavailable` record of a TensorRT engine on a target whose profile lists no TensorRT
    engine (asked for in `build.engines`, or built for another target); it has no path, source
    or latency (nothing to build from), and its reason ends with `fix`."""
    runs = " and ".join(ctx.profile.runtime.engines) or "no engine"
    return {
        "engine": "tensorrt",
        "precision": tensorrt_precision(ctx, engines),
        "status": "unavailable",
        "reason": (
            f"target {ctx.profile.name} runs {runs} only (its profile lists no tensorrt engine); "
            + fix
        ),
    }


TENSORRT_OUTPUTS = ("model.plan", "model.fp16.onnx")


def _bundles(build: Path) -> list[Path]:
    """The device bundles in `build`: `bundle` and `bundle-<profile>` directories kdc wrote."""
    return sorted(
        d
        for d in build.glob("bundle*")
        if (d.name == "bundle" or d.name.startswith("bundle-")) and (d / "bundle.json").is_file()
    )


def build_tensorrt(ctx: Context, engines: list[dict]) -> dict:
    """A native TensorRT engine, or a device bundle (remote targets), or `unavailable`."""
    from kdc.deploy import tensorrt

    shipped = tensorrt_source(ctx, engines)
    if shipped is None:
        raise UserError(
            "the TensorRT engine is built from the ONNX Runtime engine's graph, and none was built",
            source=ctx.cfg.source_file,
            field="build.engines",
            fix="list onnxruntime before tensorrt in build.engines",
        )
    onnx_path = ctx.run / shipped["path"]
    precision = tensorrt_precision(ctx, engines)
    blocker = parse_blocker(ctx, onnx_path)
    if blocker:
        return {
            "engine": "tensorrt",
            "precision": precision,
            "status": "unavailable",
            "reason": f"{blocker[0]} (fix: {blocker[1]})",
        }
    rec = {"engine": "tensorrt", "precision": precision, "source": shipped["path"]}
    try:
        opts = tensorrt.options_for_profile(
            ctx.profile,
            precision,
            input_shapes(ctx),
            max_batch=ctx.cfg.build.max_batch,
            dla_core=ctx.cfg.build.dla_core,
            cache_dir=ctx.run / "build" / "tensorrt" / "cache",
        )
        plan = ctx.run / "build" / "tensorrt" / "model.plan"
        built = tensorrt.build_engine(onnx_path, plan, ctx.profile, opts)
        return {**rec, **built, "path": str(plan.relative_to(ctx.run.root))}
    except tensorrt.TensorRTUnavailable as e:
        reason = str(e)
    if ctx.profile.measurable:
        return {**rec, "status": "unavailable", "reason": reason}
    bundle = make_bundle(ctx, onnx_path, precision)
    return {
        **rec,
        "status": "bundle",
        "path": str(bundle.relative_to(ctx.run.root)),
        "reason": reason,
    }


def parse_blocker(ctx: Context, onnx_path: Path) -> tuple[str, str] | None:
    """(why, fix) TensorRT cannot build `onnx_path` (the first error `kdc lint` finds), or None:
    no engine is built or bundled from a graph that would fail to parse on the device."""
    from kdc.deploy.lint import lint_onnx

    findings = lint_onnx(onnx_path, ctx.profile, input_shapes=input_shapes(ctx))
    error = next((f for f in findings if f.severity == "error"), None)
    if error is None:
        return None
    rel = onnx_path.relative_to(ctx.run.root)
    return (
        f"TensorRT {ctx.profile.runtime.tensorrt} cannot build {rel}: {error.op} "
        f"{error.node!r}: {error.message}",
        f"{error.fix}; every finding: kdc lint {ctx.run.root / rel} --target {ctx.profile.name}",
    )


def input_shapes(ctx: Context) -> dict[str, list[int]]:
    x = ctx.encode("eval", 1)
    return {k: [ctx.cfg.verify.batch, *v.shape[1:]] for k, v in x.items()}


def make_bundle(ctx: Context, onnx_path: Path, precision: str) -> Path:
    """Write the target's device bundle (`build/bundle`, or `bundle-<profile>` beside another
    target's). Its goldens are the outputs of `onnx_path` as verify's stand-in runs it: an INT8
    graph with Q/DQ executed in float, not this CPU's int8 kernels (which saturate without VNNI)."""
    from kdc.deploy.bundle import PARITY_MIN_AGREEMENT, write_bundle
    from kdc.deploy.onnxruntime import make_session, run_session

    goldens = ctx.encode("eval", 8)
    session = make_session(onnx_path, optimization="disable" if precision == "int8" else "all")
    outputs = run_session(session, goldens)
    output = session.get_outputs()[0].name  # `embedding` for sentence embeddings
    files = preprocessing_files(ctx.run / "distill" / "student")
    shapes = input_shapes(ctx)
    return write_bundle(
        ctx.run / "build" / "bundle",
        onnx_path,
        ctx.profile,
        precision=precision,
        input_shapes=shapes,
        golden_inputs=goldens,
        golden_outputs=outputs,
        preprocessing=files,
        input_contract=input_contract(ctx, shapes, goldens, output),
        output_name=output,
        max_batch=ctx.cfg.build.max_batch,
        dla_core=ctx.cfg.build.dla_core,
        min_agreement=None if ctx.cfg.task == "sentence-embedding" else PARITY_MIN_AGREEMENT,
    )


def input_contract(
    ctx: Context, shapes: dict[str, list[int]], goldens: dict[str, np.ndarray], output: str
) -> dict:
    """The engine's input contract. An image classifier's: what kdc's readers and the student's
    adapter did to the images (a vision transformer's as its image processor does: resize
    filter, size, centre crop, rescaling, mean/std). A text model's: the token inputs padded to
    data.max_length, and the tokenizer call that makes them."""
    from kdc.deploy.input_contract import image_input_contract, text_input_contract

    if ctx.dataset.kind != "image":
        inputs = {k: (shapes[k], str(goldens[k].dtype)) for k in shapes}
        return text_input_contract(
            inputs,
            ctx.cfg.data.max_length,
            ctx.dataset.label_names,
            output,
            max_batch=ctx.cfg.build.max_batch,
            pair_columns=ctx.cfg.data.text_columns if ctx.cfg.data.text_pairs else None,
            lower_case=getattr(ctx.teacher, "lower_case", False),
        )
    ((name, shape),) = shapes.items()
    data = ctx.cfg.data
    return image_input_contract(
        ctx.dataset.source,
        name,
        shape,
        ctx.dataset.label_names,
        processor=getattr(ctx.teacher, "processor", None),
        max_batch=ctx.cfg.build.max_batch,
        normalize=None if data.mean is None else (data.mean, data.std or []),
    )


def preprocessing_files(student: Path) -> list[Path]:
    """What an application on the device needs besides the engine: a saved student's files but
    its weights and kdc's own records (tokenizer or image processor config, config.json)."""
    kdc_own = {"shapes.json", "kdc_model.json"}
    if not student.is_dir():
        return []
    return sorted(
        p
        for p in student.iterdir()
        if p.is_file() and p.suffix != ".safetensors" and p.name not in kdc_own
    )


def set_aside_results(ctx: Context, bundle: Path, whose: str) -> Path | None:
    """Move a bundle holding device results (`results/`, with model.plan beside it) aside to
    previous-<name>[-n], never over an earlier one, and warn; its new path, None when it holds
    none. Device results are the user's: nothing kdc writes deletes them."""
    if not (bundle / "results").exists():
        return None
    aside = bundle.with_name(f"previous-{bundle.name}")
    n = 1
    while aside.exists():  # one moved aside before: kept too
        n += 1
        aside = bundle.with_name(f"previous-{bundle.name}-{n}")
    bundle.rename(aside)
    ctx.warn(
        f"{bundle.relative_to(ctx.run.root)} holds device results {whose}: moved to "
        f"{aside.relative_to(ctx.run.root)}"
    )
    return aside


def clear_previous_build(ctx: Context) -> None:
    """Remove an earlier build's TensorRT engine (its cache stays) and device bundles (this
    stage's, or `kdc bundle`'s for other targets): they are not this graph's. A bundle holding
    device results is moved aside (`set_aside_results`), never deleted, and verify stops reading
    the results it was last given."""
    ctx.run.update_manifest(device_results=None)
    for stale in TENSORRT_OUTPUTS:
        (ctx.run / "build" / "tensorrt" / stale).unlink(missing_ok=True)
    for old in _bundles(ctx.run / "build"):
        if not set_aside_results(ctx, old, "of the previous build"):
            shutil.rmtree(old)
            ctx.warn(
                f"removed {old.relative_to(ctx.run.root)}: a device bundle of the previous build "
                "(this build writes its own)"
            )
