"""Checks of a config that load no model: `check_config` reads no data either, and every run
makes it before it touches its run directory, so a missing file, a misspelt loss or an
entrypoint that does not import fails in seconds, not after the search; `kdc validate` and
`--dry-run` then read the data with `check_data`, as the run would, and refuse what it would
refuse of them at once (by the teacher's config.json)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdc.config import KdcConfig
from kdc.errors import UserError, unused_note
from kdc.hf_files import config_size
from kdc.preflight_verify import check_p99_runs, p99_runs
from kdc.profiles import HardwareProfile

if TYPE_CHECKING:
    import torch

    from kdc.data.base import Dataset


def check_config(cfg: KdcConfig) -> None:
    """Raise a UserError naming the config file and field for the first problem found."""
    from kdc.hf_files import check_loadable
    from kdc.models import teacher_kind
    from kdc.preflight_export import check_exporter
    from kdc.preflight_paths import check_paths
    from kdc.preflight_student import check_student

    check_paths(cfg)
    check_exporter(cfg)
    _check_columns(cfg)
    _check_names(cfg)
    _check_augment(cfg)
    _check_max_batch(cfg)
    hf = _teacher_config(cfg)
    _check_head(cfg, hf)
    _check_family(cfg, hf)
    _check_max_length(cfg, hf)
    _check_teacher_code(cfg)
    check_student(cfg, hf)
    _check_search_space(cfg)
    if cfg.teacher.path and teacher_kind(cfg) == "huggingface":  # files, last: what it is first
        text = cfg.task != "image-classification"
        check_loadable(cfg.resolve(cfg.teacher.path), "teacher.path", text)


def check_data(cfg: KdcConfig) -> Dataset:
    """The data, read and split as a run reads it (the classes matched by name to the teacher's
    config.json id2label: a run's order), checked by `check_fit`."""
    from kdc.data import load_dataset
    from kdc.models import teacher_label_names

    ds = load_dataset(cfg, teacher_label_names(cfg))
    check_fit(cfg, ds)
    return ds


def check_fit(cfg: KdcConfig, ds: Dataset, *, export: bool = True) -> None:
    """What a run refuses of its data and student before loading the model, which every run
    checks before it writes its run directory: the channels of its images against the
    teacher's config.json num_channels; for a CNN built by code, its `teacher.weights`
    (check_teacher_weights), its first conv's against the channels, its outputs against the
    classes, (`export`: where a stage before export runs) that it exports to ONNX
    (preflight_export.py), and `student.architecture` against its stages."""
    from kdc.data import channel_mismatch
    from kdc.preflight_export import check_onnx_export
    from kdc.teacher_fit import label_count_error, meta_outputs

    want, basis = (_teacher_config(cfg) or {}).get("num_channels"), "config.json num_channels"
    model = _meta_teacher(cfg) if want is None else None
    if model is not None:
        check_teacher_weights(cfg, model)
        import torch

        conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
        want, basis = (conv.in_channels if conv else None), "its first conv's in_channels"
    if cfg.task != "image-classification" or ds.kind != "image":
        return
    if isinstance(want, int) and ds.train.features.shape[1] != want:
        raise channel_mismatch(want, ds.train.features.shape[1], basis).located(cfg.source_file)
    outputs = meta_outputs(model, ds.train.features.shape[1:]) if model is not None else None
    if outputs is not None and outputs != ds.num_labels:
        raise label_count_error(cfg.source_file, ds, outputs)
    if model is not None and export:
        check_onnx_export(cfg, ds.train.features.shape[1:])
    if model is not None and cfg.student.architecture and cfg.search.strategy == "fixed":
        from kdc.compress.space import cnn_genes, removable_blocks

        try:  # its stages' removable blocks, as the search counts them
            blocks = removable_blocks(model, ds.train.features.shape)
        except Exception:  # noqa: BLE001 - user code that cannot run there: the search checks
            return
        try:
            cnn_genes(cfg.student.architecture, blocks)
        except UserError as e:
            raise e.located(cfg.source_file) from None


def _meta_teacher(cfg: KdcConfig) -> torch.nn.Module | None:
    """A code-built teacher (entrypoint, torchvision, timm) built on PyTorch's meta device (no
    memory, no weights); None for other teachers or a builder that cannot run there (e.g. one
    that reads files of its own: the run's own checks catch what it gets wrong)."""
    from kdc.models import teacher_kind, vision_source
    from kdc.models.vision import BUILDERS

    if teacher_kind(cfg) not in BUILDERS:
        return None
    import torch

    source = vision_source(cfg)
    try:
        with torch.device("meta"):
            return BUILDERS[source["kind"]](source)
    except Exception:  # noqa: BLE001 - any failure of user code leaves the check to the run
        return None


def config_warnings(cfg: KdcConfig) -> list[str]:
    """What a run assumes or leaves unused: a teacher built by code without teacher.weights; a
    Hugging Face image teacher's mean/std without preprocessor_config.json; settings given that
    this config does not read; bfloat16 training emulated on this CPU."""
    from kdc.hf_files import assumed_processor
    from kdc.models import teacher_kind
    from kdc.preflight_train import bf16_training_note
    from kdc.qat_settings import unused_qat_settings

    notes, hf, tc, file = [], _teacher_config(cfg), cfg.teacher, cfg.source_file
    kind = teacher_kind(cfg)
    if not tc.weights and kind == "entrypoint":
        notes.append(
            f"teacher.weights is not set: the teacher has the weights {tc.entrypoint} gives it "
            "(random unless it loads trained ones)"
        )
    elif not tc.weights and kind in ("torchvision", "timm"):
        notes.append(
            f"teacher.weights is not set: kdc builds {kind}'s {tc.name} without pretrained "
            "weights, so the teacher is random"
        )
    if cfg.task == "image-classification" and hf is not None:
        notes.append(assumed_processor(cfg.resolve(cfg.teacher.path)))
    given = cfg.data.model_fields_set & {"image_size", "channels"}
    if cfg.data.source.startswith("sklearn:") and given:
        why = f"{cfg.data.source} images are 8x8 grayscale as scikit-learn ships them"
        notes.append(unused_note(file, dict.fromkeys(f"data.{k}" for k in sorted(given)), why))
    asked = cfg.data.image_size
    folder = not cfg.data.source.startswith("sklearn:")
    if cfg.task == "image-classification" and hf is not None and asked and folder:
        why = (
            "images are read as the teacher's image processor reads them (its "
            "preprocessor_config.json resize and crop, to config.json image_size)"
        )
        notes.append(unused_note(file, {"data.image_size": asked}, why))
    chosen = cfg.student.model_fields_set & {"layers", "width", "architecture"}
    if cfg.search.strategy != "fixed" and chosen:
        fields = dict.fromkeys(f"student.{k}" for k in sorted(chosen))
        why = f"search.strategy {cfg.search.strategy} picks the student"
        notes.append(unused_note(file, fields, why, "set search.strategy: fixed"))
    if cfg.search.strategy == "fixed" and cfg.search.space:
        why = "it narrows a search, and this config's student is fixed (search.strategy: fixed)"
        use = "set search.strategy: evolution or exhaustive"
        notes.append(unused_note(file, {"search.space": None}, why, use))
    if cfg.quantize.reduce_range is not None and not builds_int8(cfg):
        why, use = "this run has no INT8 graph", "set quantize.precision: int8"
        notes.append(unused_note(file, {"quantize.reduce_range": None}, why, use))
    notes.append(unused_qat_settings(cfg))
    notes.append(bf16_training_note(cfg))
    return [n for n in notes if n]


def planned_student(cfg: KdcConfig) -> dict[str, Any]:
    """The student settings that apply to the teacher's family, as the search stage reads them:
    a transformer's kept layers (of config.json's count), a CNN's `width`, or either's
    `student.architecture`; with a searching `search.strategy`, none (the search picks it)."""
    from kdc.compress.student import evenly_spaced, kept_layers

    s = cfg.student
    if cfg.search.strategy != "fixed":
        return {"search": cfg.search.strategy}
    plan: dict[str, Any] = {"architecture": s.architecture} if s.architecture else {}
    if not cfg.teacher.path:  # a CNN (torchvision, timm, entrypoint)
        return plan or {"width": s.width}
    n = config_size(_teacher_config(cfg) or {}, "num_hidden_layers")
    if n is None:
        return {**plan, "layers": s.layers if s.layers is not None else "half, evenly spaced"}
    if isinstance(s.layers, list) or not s.architecture:
        keep = kept_layers(n, s.layers)
    else:
        keep = evenly_spaced(n, int(s.architecture.get("num_hidden_layers", n)))
    return {**plan, "layers": keep, "teacher_layers": n}


def check_target(cfg: KdcConfig, profile: HardwareProfile) -> None:
    """Raise a UserError when ONNX Runtime is not installed (every run uses it), or the target
    builds no engine the config asks for (`build.engines`) or none at the config's precision:
    FP16 is a TensorRT precision (ONNX Runtime's engines here are FP32 and INT8), and a
    profile's runtime.precisions lists what its device runs."""
    from kdc.deploy import ort_install

    ort_install.require()
    engines = profile.runtime.engines
    if cfg.build.engines and not set(cfg.build.engines) & set(engines):
        raise UserError(
            f"target {profile.name} runs {', '.join(engines)} only: no engine of "
            f"{', '.join(cfg.build.engines)} would be built or verified",
            source=cfg.source_file,
            field="build.engines",
            fix=f"add {engines[0]}, or pick a target that runs {cfg.build.engines[0]}",
        )
    if cfg.quantize.precision == "fp16" and "tensorrt" not in engines:
        raise UserError(
            f"fp16 engines are TensorRT's, and target {profile.name} runs "
            f"{', '.join(engines)} only",
            source=cfg.source_file,
            field="quantize.precision",
            fix="use fp32 or int8 here, or a TensorRT target such as jetson or t4",
        )
    check_dla_target(cfg, profile)
    check_p99_runs(cfg, profile)
    offered = profile.runtime.precisions
    if cfg.quantize.precision not in offered:
        raise UserError(
            f"target {profile.name} offers {', '.join(offered)}, not {cfg.quantize.precision}",
            source=cfg.source_file,
            field="quantize.precision",
            fix=f"use {' or '.join(offered)}, or add {cfg.quantize.precision} to the profile's "
            "runtime.precisions if the device runs it",
        )


def check_dla_target(cfg: KdcConfig, profile: HardwareProfile) -> None:
    """build.dla_core on a target that builds TensorRT: the core exists, runs the engine's
    precision (fp32 is built fp16, `built_at`) and one input shape, the profile predicts DLA
    latency, and the device's TensorRT builds for DLA."""
    from kdc.deploy.dla import check_dla, check_one_shape
    from kdc.deploy.tensorrt import DLA_RULE, supports_dla
    from kdc.stages.build_tensorrt import built_at

    core, rt = cfg.build.dla_core, profile.runtime
    if core is None or not builds_tensorrt(cfg, profile):
        return
    try:
        check_dla(profile, core, built_at(cfg.quantize.precision))
    except UserError as e:
        raise e.located(cfg.source_file) from None
    check_one_shape(cfg.build.max_batch, cfg.source_file)
    if not supports_dla(rt.tensorrt or "", rt.jetpack):
        raise UserError(
            f"{profile.name}'s TensorRT {rt.tensorrt} builds no DLA engine (DLA: {DLA_RULE})",
            source=cfg.source_file,
            field="build.dla_core",
            fix="drop it to build for the GPU, or set the profile's runtime.tensorrt to the "
            "device's (TensorRT up to 10.7 on JetPack 6)",
        )


def builds_tensorrt(cfg: KdcConfig, profile: HardwareProfile) -> bool:
    """Whether the run builds (or bundles) a TensorRT engine for `profile`: the target runs
    TensorRT and build.engines does not leave it out. Its INT8 graph is then TensorRT's
    (symmetric, signed Q/DQ, QAT without 7-bit weights), else ONNX Runtime's."""
    engines = cfg.build.engines
    return "tensorrt" in profile.runtime.engines and (not engines or "tensorrt" in engines)


def int8_runs_here(cfg: KdcConfig, profile: HardwareProfile) -> bool:
    """Whether the INT8 graph ships as ONNX Runtime on this machine's CPU: a target kdc can time,
    no TensorRT engine built for it."""
    return profile.measurable and not builds_tensorrt(cfg, profile)


def reduce_range_applies(cfg: KdcConfig, profile: HardwareProfile) -> bool:
    """Whether INT8 weights are quantized to 7 bits: quantize.reduce_range, by default where the
    INT8 graph runs on this CPU (`int8_runs_here`) and its int8 kernels saturate (x86 without
    VNNI)."""
    from kdc import cpu_flags, profiles

    asked = cfg.quantize.reduce_range
    if asked is not None:
        return asked
    return int8_runs_here(cfg, profile) and cpu_flags.int8_saturates(profiles.cpu_info()[1])


def builds_int8(cfg: KdcConfig) -> bool:
    """Whether the run makes an INT8 graph: quantize.precision is the run's precision (the
    target's default never replaces it, and `check_target` refuses one the target does not
    run), int8 the only one quantized."""
    return cfg.quantize.precision == "int8"


def int8_qat(cfg: KdcConfig) -> bool:
    """Whether distillation runs quantization-aware training: quantize.method qat for a run that
    makes an INT8 graph (`builds_int8`); for FP32 or FP16 engines it is not run (warned)."""
    return builds_int8(cfg) and cfg.quantize.method == "qat"


def qat_reduce_range(cfg: KdcConfig, profile: HardwareProfile) -> bool:
    """Whether quantization-aware training trains 7-bit weights (`reduce_range_applies` to an INT8
    QAT run); never for a TensorRT engine (`builds_tensorrt`), whose fake quantizers are
    symmetric S8S8 without an overflow fix."""
    tensorrt = builds_tensorrt(cfg, profile)
    return int8_qat(cfg) and not tensorrt and reduce_range_applies(cfg, profile)


def target_warnings(cfg: KdcConfig, profile: HardwareProfile) -> list[str]:
    """What a run for `profile` cannot judge or does not use: no engine with a latency model for
    a TensorRT target when build.engines leaves TensorRT out (its profile's model is
    TensorRT's); build.max_batch where no TensorRT engine is built; quantize.reduce_range where
    QAT trains for TensorRT."""
    engines = cfg.build.engines
    left_out = bool(engines) and "tensorrt" not in engines
    out = []
    if not profile.measurable and profile.runtime.tensorrt and left_out:
        out.append(
            f"build.engines leaves out tensorrt: {profile.name}'s latency model is TensorRT's, so "
            "no engine of this run gets a predicted latency there and a latency budget cannot pass"
        )
    file, none = cfg.source_file, f"this run builds none for {profile.name}"
    if cfg.build.dla_core is not None and not builds_tensorrt(cfg, profile):
        why = f"it places a TensorRT engine on a DLA core, and {none}"
        out.append(unused_note(file, {"build.dla_core": None}, why))
    out += _loosened_limits(cfg, profile) + p99_runs(cfg, profile)
    if cfg.build.max_batch is not None and not builds_tensorrt(cfg, profile):
        why = f"it sizes TensorRT engines, and {none} (ONNX Runtime's graphs take any batch)"
        out.append(unused_note(file, {"build.max_batch": None}, why))
    if cfg.quantize.reduce_range and int8_qat(cfg) and builds_tensorrt(cfg, profile):
        why = (
            f"QAT for {profile.name} trains TensorRT's symmetric 8-bit weights (its int8 "
            "kernels do not saturate)"
        )
        out.append(unused_note(file, {"quantize.reduce_range": None}, why))
    return out


def _loosened_limits(cfg: KdcConfig, profile: HardwareProfile) -> list[str]:
    """A config's latency budget or memory limit looser than the profile's default (a profile's
    limits are for a config to tighten), or a memory limit beyond the device's memory."""
    out = []
    for key, unit in (("latency_budget_ms", "ms"), ("max_memory_mb", "MiB")):
        mine, its = getattr(cfg.constraints, key), getattr(profile.defaults, key)
        if mine is not None and its is not None and mine > its:
            out.append(
                f"constraints.{key} {mine:g} {unit} loosens {profile.name}'s limit of {its:g} "
                f"{unit}: the run is judged by the config's"
            )
    if (cfg.constraints.max_memory_mb or 0) > profile.capacity_mib:
        out.append(
            f"constraints.max_memory_mb {cfg.constraints.max_memory_mb:g} MiB is more than "
            f"{profile.name}'s {profile.memory.capacity_gb:g} GB of memory"
        )
    return out


def _check_columns(cfg: KdcConfig) -> None:
    """A classifier's text column is not its label column (it would learn from the labels);
    text pairs are a classifier's (an embedding teacher embeds one text)."""
    d = cfg.data
    if cfg.task == "text-classification" and d.label_column in d.text_columns:
        raise UserError(
            f"the text column is the label column ('{d.label_column}')",
            source=cfg.source_file,
            field="data.text_column",
            fix="name the column holding the texts; data.label_column names the labels",
        )
    if d.text_pairs and cfg.task == "sentence-embedding":
        raise UserError(
            "text pairs (two text columns) are a classifier's input; a sentence-embedding "
            "teacher embeds one text a row",
            source=cfg.source_file,
            field="data.text_column",
            fix="name one text column, or set task: text-classification for a cross-encoder "
            "classifier (2 or more classes)",
        )


def _check_names(cfg: KdcConfig) -> None:
    from kdc.compress.losses import LOSSES, check_losses
    from kdc.compress.proxies import PROXIES

    s = cfg.search
    named = [("distill.losses", x.name, LOSSES) for x in cfg.distill.losses or []]
    named += [("search.proxy", s.proxy, {"auto": None, **PROXIES})]
    named += [("search.proxies", p, PROXIES) for p in ([] if s.proxies == "all" else s.proxies)]
    for field, name, registry in named:
        if name not in registry:
            raise UserError(
                f"unknown name '{name}'",
                source=cfg.source_file,
                field=field,
                fix=f"use one of {', '.join(sorted(registry))}",
            )
    check_losses(cfg)


def _check_augment(cfg: KdcConfig) -> None:
    """`distill.augment` made for the task's inputs (a text augmentation on an image model)."""
    from kdc.compress.augment import KIND, TASK_KIND, misfit

    name, kind = cfg.distill.augment, TASK_KIND.get(cfg.task)
    if kind and KIND.get(name, kind) != kind:
        raise misfit(name, kind).located(str(cfg.source_file))


def _check_max_batch(cfg: KdcConfig) -> None:
    m, b = cfg.build.max_batch, cfg.verify.batch
    if m is not None and m < b:
        raise UserError(
            f"build.max_batch {m} is below verify.batch {b}, the batch engines are tuned and "
            "timed at",
            source=cfg.source_file,
            field="build.max_batch",
            fix=f"set it to {b} or more, or lower verify.batch",
        )


def _teacher_config(cfg: KdcConfig) -> dict | None:
    """A Hugging Face teacher's config.json (read, no model loaded), else None."""
    from kdc.hf_files import read_config

    directory = cfg.resolve(cfg.teacher.path) if cfg.teacher.path else None
    if not (directory and (directory / "config.json").is_file()):
        return None
    return read_config(directory, "teacher.path")


def _check_head(cfg: KdcConfig, hf: dict | None) -> None:
    """A classification task's Hugging Face teacher is a classifier of the task (config.json
    `architectures`): not a bare encoder (BertModel) nor a masked LM (BertForMaskedLM), which
    would get a random head when loaded; nor a regression or multi-label head, whatever its
    classes are named."""
    if cfg.task == "sentence-embedding" or hf is None:
        return
    names = hf.get("architectures") or []
    custom = not names or "auto_map" in hf  # custom code names its classes as it likes
    image = all("ForImageClassification" in str(n) for n in names)
    text = all("ForSequenceClassification" in str(n) for n in names)
    task_of_head = "image-classification" if image else "text-classification" if text else None
    if not custom and task_of_head and cfg.task != task_of_head:
        kind = cfg.task.split("-")[0]
        raise UserError(
            f"the teacher is {', '.join(map(str, names))} (config.json architectures), "
            f"{'an image' if image else 'a text'} classifier, but the task is {cfg.task}",
            source=cfg.source_file,
            field="task",
            fix=f"set task: {'image' if image else 'text'}-classification, or point teacher.path "
            f"at {'an' if kind[0] in 'aeiou' else 'a'} {kind} model",
        )
    image_task = cfg.task == "image-classification"
    head = "ForImageClassification" if image_task else "ForSequenceClassification"
    if not custom and not any(head in str(n) for n in names):  # BertModel, BertForMaskedLM
        from kdc.models.hf_weights import TEACHER_FIXES

        raise UserError(
            f"the teacher is {', '.join(map(str, names))} (config.json architectures), which has "
            f"no classification head: kdc distils a trained {cfg.task.replace('-', ' ')} model",
            source=cfg.source_file,
            field="teacher.path",
            fix=TEACHER_FIXES[f"AutoModel{head}"],  # what loading it would say
        )
    from kdc.hf_files import check_single_label

    check_single_label(hf, cfg.resolve(cfg.teacher.path or ""), "teacher.path")


def _check_family(cfg: KdcConfig, hf: dict | None) -> None:
    """A Hugging Face teacher of a family kdc can compress (kdc.hf_files.unsupported_teacher),
    refused here rather than when its layers are sliced or its student runs."""
    from kdc.hf_files import HF_FAMILIES_FIX, unsupported_teacher

    if hf is None or "auto_map" in hf:  # custom code: its loader finds out
        return
    problem = unsupported_teacher(hf, cfg.task == "image-classification")
    if problem:
        raise UserError(problem, source=cfg.source_file, field="teacher.path", fix=HF_FAMILIES_FIX)


def _check_max_length(cfg: KdcConfig, hf: dict | None) -> None:
    """`data.max_length` within a text teacher's position table (a longer row fails mid-run)."""
    from kdc.hf_files import max_positions

    if cfg.task == "image-classification" or hf is None:
        return
    limit = max_positions(hf)
    if limit is not None and cfg.data.max_length > limit:
        raise UserError(
            f"max_length {cfg.data.max_length} is more than the teacher's {limit} positions "
            f"(max_position_embeddings in {cfg.resolve(cfg.teacher.path) / 'config.json'})",
            source=cfg.source_file,
            field="data.max_length",
            fix=f"set data.max_length to {limit} or less",
        )


# teachers built by code, as kdc reads them: CNNs (kind → the field that gives them)
CODE_TEACHERS = {
    "entrypoint": "teacher.entrypoint",
    "torchvision": "teacher.name",
    "timm": "teacher.name",
    "kdc": "teacher.path",
}
LIBRARY_TEACHERS = {
    "torchvision": "pip install torchvision matching your torch",
    "timm": "pip install timm",
}


def _check_teacher_code(cfg: KdcConfig) -> None:
    """A teacher built by code (a CNN) is for an image task; `teacher.entrypoint` (or a kdc
    student teacher's) imports (its module is imported; the function is not called); a
    `teacher.name`'s library (torchvision, timm) is installed; a kdc student teacher has no
    `teacher.weights` besides its own."""
    import importlib.util

    from kdc.models import check_entrypoint, teacher_kind

    kind = teacher_kind(cfg)
    if cfg.task != "image-classification" and kind in CODE_TEACHERS:
        raise UserError(
            f"task '{cfg.task}' takes a Hugging Face teacher; a teacher given by "
            f"{CODE_TEACHERS[kind]} is read as an image classifier (a CNN taking pixel_values)",
            source=cfg.source_file,
            field=CODE_TEACHERS[kind],
            fix="save the text model and its tokenizer with save_pretrained and give that "
            "directory as teacher.path, or set task: image-classification",
        )
    if kind == "kdc" and cfg.teacher.weights:
        raise UserError(
            "not read for a kdc student teacher, whose weights are its model.safetensors",
            source=cfg.source_file,
            field="teacher.weights",
            fix="remove teacher.weights",
        )
    check_entrypoint(cfg)
    if cfg.teacher.name and kind in LIBRARY_TEACHERS and importlib.util.find_spec(kind) is None:
        raise UserError(
            f"{kind} is not installed",
            source=cfg.source_file,
            field="teacher.name",
            fix=LIBRARY_TEACHERS[kind],
        )


def _check_search_space(cfg: KdcConfig) -> None:
    """`search.space` names sizes of the teacher's family (a Hugging Face teacher's students are
    transformers, the others' CNNs); whether a size admits any student is the search's check."""
    from kdc.compress.space import SPACE_KEYS, unknown_space_key
    from kdc.models import student_family

    keys = list(SPACE_KEYS[student_family(cfg)])
    for key in cfg.search.space:
        if key not in keys:
            raise unknown_space_key(key, keys).located(cfg.source_file)


def check_teacher_weights(cfg: KdcConfig, model: torch.nn.Module) -> None:
    """A CNN teacher's `teacher.weights` against `model`, the one its entrypoint or library
    builds on PyTorch's meta device (`_meta_teacher`: no memory, no weights loaded; safetensors
    read from the header). A builder that cannot run there is left to the run's own check when
    it loads the teacher."""
    from kdc.models.weights import shape_mismatch, weight_shapes

    if not cfg.teacher.weights:
        return
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    path = cfg.resolve(cfg.teacher.weights)
    try:
        differ = shape_mismatch(shapes, weight_shapes(path))
    except UserError as e:
        raise e.located(cfg.source_file) from None
    if differ:
        raise UserError(
            f"weights do not match the model {cfg.teacher.entrypoint or cfg.teacher.name} "
            f"builds: {differ}",
            source=cfg.source_file,
            field="teacher.weights",
            fix="use the weights saved from this architecture, or the teacher.kwargs it was "
            "built with",
        )
