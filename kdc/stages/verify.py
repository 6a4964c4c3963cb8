"""Verify stage: accuracy of each built engine on the eval split (the engine that ships, not
PyTorch), latency measured on the host and predicted for the target, memory and size."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdc.deploy import metrics as M
from kdc.deploy.estimate import MEMORY_MODEL, predict_memory_mb, predict_onnx
from kdc.deploy.external_data import onnx_sha256
from kdc.deploy.latency import measure_onnx_rounds
from kdc.deploy.memory import engine_peak_rss_mb
from kdc.deploy.onnxruntime import make_session, run_session, session_options_record
from kdc.errors import UserError
from kdc.export.parity import compare
from kdc.pipeline import Context, StageOutput
from kdc.profiles import host_has_int8_dot
from kdc.rundir import read_json, size_mb, write_json
from kdc.stages.build import int8_runs_here, tensorrt_on_target
from kdc.stages.build_tensorrt import tensorrt_not_on_target
from kdc.stages.export import student_reference

INT8_MIN_COSINE = 0.9
INT8_MIN_AGREEMENT = 0.9  # a classifier's INT8 engine: share of rows whose class is FP32's


def measure_all(ctx: Context, models: dict[str, tuple[Path, str]]) -> dict[str, dict]:
    """Latency of several models (name → (path, precision)) in `verify.rounds` interleaved
    rounds, so they are compared under the same machine conditions; each says the attention-mask
    padding of the input it timed."""
    v = ctx.cfg.verify
    with ctx.progress("timing latency", v.rounds * len(models)) as advance:
        timed = measure_onnx_rounds(
            models,
            ctx.latency_inputs(),
            rounds=v.rounds,
            progress=advance,
            threads=v.threads,
            warmup=v.warmup,
            iterations=v.iterations,
            min_duration_s=v.min_duration_s,
            max_duration_s=v.max_duration_s,
            batch=v.batch,
        )
    padding = round(ctx.latency_padding(), 4)
    return {name: {**lat, "padding": padding} for name, lat in timed.items()}


def _shapes(ctx: Context) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in ctx.latency_inputs().items()}


def predict(ctx: Context, path: Path, precision: str, engine: str | None = None) -> dict:
    """Predicted latency of the ONNX model at `path` on the target, naming `engine` when given;
    a TensorRT engine's on its DLA core where it is built for one."""
    pred = predict_onnx(
        path,
        ctx.profile,
        precision=precision,
        batch=ctx.cfg.verify.batch,
        input_shapes=_shapes(ctx),
        padding=ctx.latency_padding(),
        dla_core=ctx.dla_core if engine == "tensorrt" else None,
    )
    return pred if engine is None else {**pred, "engine": engine}


def evaluate(
    ctx: Context, path: Path, teacher_logits: np.ndarray | None, optimization: str = "all"
) -> tuple[dict, np.ndarray]:
    """Metrics of an ONNX model's outputs on the eval split (engine named by the caller), run
    on all cores: `verify.threads` is the latency protocol's, accuracy is not timed."""
    session = make_session(path, threads=None, optimization=optimization)
    x = ctx.encode("eval")
    what = path.name + (" (Q/DQ in float)" if optimization == "disable" else "")
    with ctx.progress(f"evaluating {what}", len(ctx.dataset.eval)) as advance:
        out = run_session(session, x, progress=advance)
    embedding_teacher = teacher_logits is None and ctx.cfg.task == "sentence-embedding"
    ref = out if embedding_teacher else teacher_logits  # the teacher is its own reference
    res = finite_metrics(M.compute(ctx.cfg.task, ctx.dataset.eval.labels, out, ref))
    primary = M.primary_metric(ctx.cfg.task)
    return {"metric": primary, "value": res[primary], **res, "n": int(len(out))}, out


def finite_metrics(res: dict) -> dict:
    """Metrics with NaN/inf (an engine whose outputs overflowed, e.g. in FP16) as None and an
    `error` saying so: no figure, which fails its constraint and `kdc check`, where a NaN in
    report.json would pass every comparison."""
    broken = [k for k, v in res.items() if isinstance(v, float) and not np.isfinite(v)]
    if not broken:
        return res
    return {
        **{k: None if k in broken else v for k, v in res.items()},
        "error": f"not a number: {', '.join(broken)} (the engine's outputs hold NaN or inf)",
    }


SIMULATED = "onnxruntime-cpu-qdq-simulated"  # an INT8 graph with Q/DQ executed in float


def _engine_block(
    ctx: Context, rec: dict, teacher_logits: np.ndarray, student_ref: np.ndarray, latency: dict
) -> dict:
    """An ONNX Runtime engine's accuracy, parity, session, latency and memory. An INT8 engine
    that runs elsewhere (`int8_runs_here` false) is judged with Q/DQ executed in float, not by
    this CPU's int8 kernels (which saturate on S8S8 without VNNI); their figure is kept beside."""
    path = ctx.run / rec["path"]
    prec = rec["precision"]
    acc, out = evaluate(ctx, path, teacher_logits)
    acc["engine"] = f"onnxruntime-cpu-{prec}"
    beside: dict = {}
    if prec == "int8":
        sim, sim_out = evaluate(ctx, path, teacher_logits, optimization="disable")
        sim["engine"] = SIMULATED
        if int8_runs_here(ctx):
            beside = {"accuracy_qdq_simulated": sim}
        else:
            sim["stand_in"] = "qdq-in-float"
            sim["note"] = (
                f"stand-in for this engine on {ctx.profile.name}: Q/DQ executed in float (the "
                "exact int8 arithmetic), not this CPU's int8 kernels (accuracy_this_cpu)"
            )
            beside = {"accuracy_this_cpu": acc}
            acc, out = sim, sim_out
    floor = ctx.cfg.export.min_cosine if prec == "fp32" else INT8_MIN_COSINE
    classifier = M.primary_metric(ctx.cfg.task) == "accuracy"
    parity = compare(
        student_ref,
        out[: len(student_ref)],
        atol=ctx.cfg.export.atol,
        rtol=ctx.cfg.export.rtol,
        min_cosine=floor,
        judge="lowest" if prec == "fp32" else "mean",
        min_agreement=INT8_MIN_AGREEMENT if prec != "fp32" and classifier else None,
    )
    block = {
        **rec,
        "accuracy": acc,
        **beside,
        "parity": parity,
        "session": session_options_record(make_session(path, threads=ctx.cfg.verify.threads)),
        "latency": latency,
        "memory": engine_peak_rss_mb(
            path, ctx.latency_inputs(), threads=ctx.cfg.verify.threads or 1
        ),
    }
    if "accuracy_qdq_simulated" in beside:
        gap = beside["accuracy_qdq_simulated"]["value"] - acc["value"]
        if gap > 0.02:
            block["warnings"] = [
                f"ONNX Runtime's int8 CPU kernels lose {gap:.3f} {acc['metric']} against the same "
                "Q/DQ graph run in float: the quantisation is fine, this CPU's int8 kernels are "
                f"not{_int8_kernel_advice(rec.get('quantization') or {})}"
            ]
    if not ctx.profile.measurable:
        # a TensorRT target's latency model is TensorRT's (trtexec-calibrated): it says nothing
        # of ONNX Runtime's kernels there, so this engine gets no prediction rather than that one
        if not ctx.profile.runtime.tensorrt:
            block["target_latency"] = predict(ctx, path, prec, rec["engine"])
        block["target_memory"] = _predicted_memory(ctx, path, prec)
    return block


def _int8_kernel_advice(how: dict) -> str:
    """What to change where this CPU's int8 kernels lose accuracy the Q/DQ graph has (`how`: the
    engine's `quantization` record)."""
    from kdc.cpu_flags import int8_saturates
    from kdc.profiles import cpu_info

    saturates = int8_saturates(cpu_info()[1])
    # "int8 symmetric", or "symmetric, stored uint8 ..." (`activation_storage`)
    if "symmetric" in how.get("activations", "").replace(",", " ").split():
        return "; on CPUs use asymmetric activations (quantize.symmetric_activations: false)"
    if saturates and not how.get("reduce_range"):  # PTQ and QAT alike make 7-bit weights
        return (
            " (without VNNI their 16-bit sums saturate): quantize 7-bit weights "
            "(quantize.reduce_range: true)"
        )
    if saturates:
        return ": ship FP32 (quantize.precision: fp32), or run it on a CPU with VNNI"
    return (
        ": keep the layers that lose most in float (quantize.max_int8_loss), or ship FP32 "
        "(quantize.precision: fp32)"
    )


def _predicted_memory(ctx: Context, path: Path, precision: str, batch: int | None = None) -> dict:
    """Weights at `precision` plus the peak of live activations on the target (MiB), at `batch`
    rows (default verify.batch), naming the memory model that predicted it."""
    batch = batch or ctx.cfg.verify.batch
    shapes = {k: [batch, *v[1:]] for k, v in _shapes(ctx).items()}
    peak = predict_memory_mb(path, precision, batch, shapes)
    return {"kind": "predicted", "model": MEMORY_MODEL, "peak_mb": peak, "batch": batch}


def _stand_in(ctx: Context, rec: dict, teacher_logits: np.ndarray) -> dict:
    """The accuracy standing in for a TensorRT engine not run here, from the graph it is built
    from: an INT8 engine's Q/DQ graph with Q/DQ executed in float (ONNX Runtime with graph
    optimisations off: quantisation error without CPU int8 kernels); an FP16 engine's FP32 graph
    as ONNX Runtime runs it on this CPU (without FP16's rounding)."""
    src, prec = ctx.run / rec["source"], rec["precision"]
    if prec == "int8":
        acc, _ = evaluate(ctx, src, teacher_logits, optimization="disable")
        engine, kind = SIMULATED, "qdq-in-float"
        what = "Q/DQ executed in float approximates TensorRT's int8 arithmetic"
    else:
        acc, _ = evaluate(ctx, src, teacher_logits)
        engine, kind = "onnxruntime-cpu-fp32", "fp32-graph"
        what = f"the FP32 graph it is built from, run on this CPU; the engine runs {prec.upper()}"
    note = f"stand-in for the TensorRT engine, which was not run here: {what}"
    return {**acc, "engine": f"{engine} ({rec['source']})", "stand_in": kind, "note": note}


def _remote_block(
    ctx: Context, rec: dict, teacher_logits: np.ndarray, device: dict | None = None
) -> dict:
    """A TensorRT engine, which kdc does not run (built here, bundled or unavailable): latency on
    the target is predicted from its ONNX, and its accuracy stood in for (`_stand_in`). With
    `device` (`device_figures`), the latency and parity are what the device measured, and the
    engine is `built` there (`built_on: device`; the build stage's reason it was not built here
    no longer stands)."""
    src = ctx.run / rec["source"]
    acc = _stand_in(ctx, rec, teacher_logits)
    block = {**rec, "accuracy": acc}
    if rec.get("size_mb") is None:  # not built here (an engine built here keeps its plan's size)
        block["size_mb"] = size_mb(src)
        block["size_note"] = (
            "size of the ONNX the engine is built from; the plan is built on the device"
        )
    block |= {
        "latency": predict(ctx, src, rec["precision"], rec["engine"]),
        # TensorRT allocates activations for the largest batch its profile takes
        "memory": _predicted_memory(ctx, src, rec["precision"], ctx.cfg.build.max_batch),
    }
    if device is not None:
        block["predicted_latency"] = block["latency"]
        block.pop("reason", None)
        block.update(device)
    elif rec["status"] == "bundle":
        from kdc.deploy.bundle import bundle_dir

        build = ctx.run / "build"
        own = bundle_dir(build / "bundle", ctx.profile.name)
        if not (own / "bundle.json").is_file():  # the run's bundle is another target's
            block["reason"] = (
                f"no device bundle for {ctx.profile.name} yet (the run's is for the target it "
                f"was compressed for): `kdc bundle {build.parent} --target "
                f"{ctx.target_file or ctx.profile.name}` "
                "writes one to build on the device"
            )
    return block


def _tensorrt_elsewhere(ctx: Context, rec: dict, engines: list[dict]) -> dict:
    """The run's TensorRT engine (built or bundled for the target the run was compressed for)
    when verifying for a target that runs no TensorRT: `unavailable`, no accuracy or latency."""
    made_for = ctx.run.manifest().get("target", "its own target")
    what = {"built": "engine", "bundle": "bundle"}.get(rec["status"], "engine (not built)")
    where = f" ({rec['path']})" if rec.get("path") else ""
    fix = (
        f"the run's TensorRT {what}{where} is for {made_for}: "
        f"`kdc verify {ctx.run.root} --target {made_for}` reports it"
    )
    return {**tensorrt_not_on_target(ctx, engines, fix), "precision": rec["precision"]}


def device_figures(ctx: Context, engines: list[dict]) -> dict[str, dict]:
    """`ctx.device_results` for the run's bundled TensorRT engine, read and checked before
    anything is timed: {engine path: {"status" (`built`), "built_on" (`device`), "note",
    "latency", "parity", "warnings"}}. They are read against the bundle for the verify target
    (the run's own, or the one `kdc bundle --target` wrote beside it); a failed parity fails the
    `device_parity` constraint."""
    from kdc.deploy.bundle import bundle_dir
    from kdc.deploy.device_results import read_device_results

    rec = next((r for r in engines if r.get("status") == "bundle" and "source" in r), None)
    if rec is None:
        raise UserError(
            f"the run has no TensorRT bundle whose results {ctx.device_results} could be",
            field="device_results",
            fix="compress for a TensorRT target (e.g. --target jetson) and time its bundle on "
            "the device, or drop --device-results",
        )
    own = ctx.run / rec["path"]
    for_target = bundle_dir(ctx.run / "build" / "bundle", ctx.profile.name)
    found = for_target if (for_target / "bundle.json").is_file() else own
    meta = read_json(found / "bundle.json")
    made_from = meta.get("source_onnx_sha256")  # None: a bundle from before kdc recorded it
    if made_from is not None and made_from != onnx_sha256(ctx.run / rec["source"]):
        raise UserError(
            f"the bundle in build/{found.name} was made from another model than the "
            f"run's {rec['source']} (the run was rebuilt after it)",
            source=str(found / "bundle.json"),
            field="source_onnx_sha256",
            fix=f"write it again (kdc bundle RUN --target {ctx.profile.name}; if the run's "
            "engines were built by an older kdc, delete RUN/build and run kdc build CONFIG --out "
            "RUN instead) and time it on the device",
        )
    dev = read_device_results(ctx.device_results, found, ctx.profile.name)
    out = {
        "status": "built",
        "built_on": "device",
        "note": f"built by build/{found.name}/build.sh and timed by its bench.sh on "
        f"{dev['latency']['device']} (results: {ctx.device_results})",
        "latency": {**dev["latency"], "on_target": True},
        "parity": dev["parity"],
    }
    if dev["warnings"]:  # the console lists an engine's warnings, not its latency's
        out["warnings"] = dev["warnings"]
    return {rec["path"]: out}


def _earlier_device_figures(ctx: Context, engines: list[dict]) -> dict[str, dict]:
    """The device results the run's last `kdc verify --device-results` read, again, when verify
    runs without them (a --resume after a verify setting changed): they still describe the
    engine if they still belong to its bundle; else said and left out."""
    given = ctx.run.manifest().get("device_results") or {}
    if given.get("target") != ctx.profile.name:  # none, or another target's
        return {}
    earlier = Path(given["path"])
    if not earlier.is_dir():
        ctx.warn(f"the device results read before no longer apply ({earlier} is gone)")
        return {}
    ctx.device_results = earlier
    try:
        figures = device_figures(ctx, engines)
    except UserError as e:
        ctx.warn(f"the device results read before no longer apply ({e}): reported without them")
        ctx.device_results = None
        return {}
    ctx.log(f"  device results read again from {earlier} (the last kdc verify --device-results)")
    return figures


INT8_GAIN_MIN = 1.1  # an INT8 engine timed less than this much faster than FP32 is flagged


def _warn_if_int8_not_faster(engines: list[dict]) -> None:
    """Flag an INT8 engine timed less than `INT8_GAIN_MIN`x faster than the FP32 engine beside it
    (int8 gains little on CPUs without VNNI, or on tiny graphs): FP32 is then about as fast and
    closer to the student."""
    timed = {
        e["precision"]: e
        for e in engines
        if e.get("engine") == "onnxruntime" and (e.get("latency") or {}).get("kind") == "measured"
    }
    fp32, int8 = timed.get("fp32"), timed.get("int8")
    if not (fp32 and int8):
        return
    gain = fp32["latency"]["p50_ms"] / int8["latency"]["p50_ms"]
    if gain >= INT8_GAIN_MIN:
        return
    sizes = f"{int8.get('size_mb')} vs {fp32.get('size_mb')} MB"
    smaller = (int8.get("size_mb") or 0) < (fp32.get("size_mb") or 0)
    why = (
        "this graph's int8 kernels gain little here (per-call and quantize/dequantize overheads)"
        if host_has_int8_dot()
        else "int8 kernels gain little without VNNI"
    )
    int8.setdefault("warnings", []).append(
        f"only {gain:.2f}x FP32's speed on this machine (p50 {int8['latency']['p50_ms']:.4g} vs "
        f"{fp32['latency']['p50_ms']:.4g} ms; {why}): "
        "quantize.precision: fp32 ships an engine about as fast and closer to the student"
        + (f", INT8 saves size ({sizes})" if smaller else f" and no larger ({sizes})")
    )


def _no_better_than_majority(
    accuracy: float | None, labels: np.ndarray, kind: str = "image"
) -> str | None:
    """A note where the teacher's engine scores no better than always answering the eval
    split's most common class: a drop measured from it says nothing (wrong image size or
    channels, wrong text column, labels not the teacher's, an untrained teacher)."""
    if accuracy is None or len(labels) == 0:
        return None
    majority = np.bincount(labels).max() / len(labels)
    if accuracy > majority:
        return None
    read = "data.image_size, data.channels" if kind == "image" else "data.text_column"
    return (
        f"the teacher scores {accuracy:.4f} on the eval split, no better than always answering "
        f"its most common class ({majority:.4f}): check the data is read as it was trained on "
        f"({read}, labels) and that the teacher's weights are its trained ones"
    )


CUT_SHARE = 0.05  # share of eval rows cut at data.max_length worth a note


def _truncation_note(ctx: Context) -> str | None:
    """A note where a share of the eval rows fill data.max_length (their last position is
    attended: cut there, or exactly that long): every accuracy here is at that length."""
    mask = ctx.encode("eval").get("attention_mask")
    if mask is None or mask.ndim != 2 or not len(mask):
        return None
    full = int(np.count_nonzero(mask[:, -1]))
    if full < CUT_SHARE * len(mask):
        return None
    n = ctx.cfg.data.max_length
    return (
        f"{full} of the {len(mask)} eval rows ({full / len(mask):.0%}) reach data.max_length "
        f"({n} tokens), longer ones cut there: every accuracy here is at {n} tokens; raise it, "
        "within the teacher's positions, if the teacher read longer inputs (latency grows with it)"
    )


def _verified(
    ctx: Context,
    rec: dict,
    engines: list[dict],
    teacher_logits: np.ndarray,
    student_ref: np.ndarray,
    latency: dict[str, dict],
    device: dict[str, dict],
) -> dict:
    """The report's record of one engine of build/engines.json: an ONNX Runtime engine run and
    timed here; a TensorRT engine (built here, bundled or unavailable) stood in for and
    predicted, with the device's figures where given; any other as the build wrote it."""
    if rec["status"] == "built" and rec["engine"] == "onnxruntime":
        return _engine_block(ctx, rec, teacher_logits, student_ref, latency[rec["path"]])
    if rec["engine"] == "tensorrt" and "source" in rec and not tensorrt_on_target(ctx):
        return _tensorrt_elsewhere(ctx, rec, engines)
    if "source" in rec:  # kdc runs no TensorRT engine itself, one built here neither
        return _remote_block(ctx, rec, teacher_logits, device.get(rec["path"]))
    return rec


def run(ctx: Context) -> StageOutput:
    from kdc.models import load_run_student

    engines_in = read_json(ctx.run / "build" / "engines.json")
    device = (
        device_figures(ctx, engines_in)
        if ctx.device_results is not None
        else _earlier_device_figures(ctx, engines_in)
    )
    t_path = ctx.run / "export" / "teacher.onnx"
    t_acc, t_logits = evaluate(ctx, t_path, None)
    t_acc["engine"] = "onnxruntime-cpu-fp32"
    local = [r for r in engines_in if r["status"] == "built" and r["engine"] == "onnxruntime"]
    latency = measure_all(
        ctx,
        {
            "teacher": (t_path, "fp32"),
            **{r["path"]: (ctx.run / r["path"], r["precision"]) for r in local},
        },
    )
    t_pred = predict(ctx, t_path, "fp32")
    teacher = {
        "params": ctx.teacher.params(),
        "accuracy": t_acc,
        "latency": latency["teacher"],
        "flops": t_pred.get("flops"),
    }
    if not ctx.profile.measurable:
        teacher["target_latency"] = {**t_pred, "engine": ctx.profile.modelled_engine}
    ds = ctx.dataset
    notes = [_no_better_than_majority(t_acc.get("accuracy"), ds.eval.labels, ds.kind)]
    if notes := [n for n in [*notes, _truncation_note(ctx)] if n]:
        for note in notes:
            ctx.warn(note)
        teacher["warnings"] = notes
    student = load_run_student(ctx.run / "distill" / "student", ctx.cfg.data.max_length)
    ref = student_reference(ctx, student)
    engines = [  # each evaluation shows its progress
        _verified(ctx, rec, engines_in, t_logits, ref, latency, device) for rec in engines_in
    ]
    if int8_runs_here(ctx):  # the ONNX Runtime engines are what ships, not a local stand-in
        _warn_if_int8_not_faster(engines)
    s_path = ctx.run / "export" / "model.onnx"
    student_rec = {
        "params": student.params(),
        "flops": predict(ctx, s_path, "fp32").get("flops"),
        "architecture": student.architecture(),
    }
    out = write_json(
        ctx.run / "verify" / "metrics.json",
        {
            "teacher": teacher,
            "student": student_rec,
            "engines": engines,
            "data": ctx.dataset.summary(),
        },
    )
    return StageOutput([out], {"teacher_accuracy": t_acc.get(M.primary_metric(ctx.cfg.task))})
