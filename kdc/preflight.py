"""Checks of a config that load no model and no data: `kdc validate` runs them (and then reads
the data, as `--dry-run` does), and so does every run before it touches its run directory, so a
missing file, a misspelt loss or an entrypoint that does not import fails in seconds, not after
the search."""

from __future__ import annotations

from kdc.config import KdcConfig
from kdc.errors import UserError
from kdc.profiles import HardwareProfile


def check_config(cfg: KdcConfig) -> None:
    """Raise a UserError naming the config file and field for the first problem found."""
    _check_paths(cfg)
    _check_columns(cfg)
    _check_names(cfg)
    _check_augment(cfg)
    hf = _teacher_config(cfg)
    _check_max_length(cfg, hf)
    _check_entrypoint(cfg)
    _check_student_layers(cfg, hf)


def check_target(cfg: KdcConfig, profile: HardwareProfile) -> None:
    """Raise a UserError when ONNX Runtime is not installed (every run uses it), or the target
    builds no engine the config asks for (`build.engines`) or none at the config's precision:
    FP16 is a TensorRT precision (ONNX Runtime's engines here are FP32 and INT8)."""
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


def _check_paths(cfg: KdcConfig) -> None:
    t, d = cfg.teacher, cfg.data
    wanted = [
        ("teacher.path", t.path, "model directory", "is_dir"),
        ("teacher.weights", t.weights, "weights file", "is_file"),
        ("data.source", None if d.source.startswith("sklearn:") else d.source, "data", "exists"),
        ("data.eval", d.eval, "eval data", "exists"),
    ]
    for field, rel, what, test in wanted:
        if rel is not None and not getattr(cfg.resolve(rel), test)():
            raise UserError(
                f"{what} not found",
                source=cfg.source_file,
                field=field,
                fix=f"check that {cfg.resolve(rel)} exists (paths are relative to the config)",
            )


def _check_columns(cfg: KdcConfig) -> None:
    """A classifier's text column is not its label column (it would learn from the labels)."""
    d = cfg.data
    if cfg.task == "text-classification" and d.text_column == d.label_column:
        raise UserError(
            f"the text column is the label column ('{d.text_column}')",
            source=cfg.source_file,
            field="data.text_column",
            fix="name the column holding the texts; data.label_column names the labels",
        )


def _check_names(cfg: KdcConfig) -> None:
    from kdc.compress.losses import LOSSES, NO_HEAD, NO_HEAD_FIX, loss_params
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
    for i, loss in enumerate(cfg.distill.losses or []):
        takes = loss_params(loss.name)
        if unknown := sorted(set(loss.params) - set(takes)):
            raise UserError(
                f"loss '{loss.name}' takes no parameter {', '.join(map(repr, unknown))}",
                source=cfg.source_file,
                field=f"distill.losses[{i}].params",
                fix=f"use {', '.join(takes)}" if takes else "remove params",
            )
        if cfg.task == "sentence-embedding" and loss.params.get("on", "output") != "output":
            raise UserError(
                f"{NO_HEAD} (a sentence encoder)",
                source=cfg.source_file,
                field=f"distill.losses[{i}].params.on",
                fix=NO_HEAD_FIX,
            )


def _check_augment(cfg: KdcConfig) -> None:
    """`distill.augment` made for the task's inputs (a text augmentation on an image model)."""
    from kdc.compress.augment import KIND, TASK_KIND, misfit

    name, kind = cfg.distill.augment, TASK_KIND.get(cfg.task)
    if kind and KIND.get(name, kind) != kind:
        raise misfit(name, kind).located(str(cfg.source_file))


def _teacher_config(cfg: KdcConfig) -> dict | None:
    """A Hugging Face teacher's config.json (read, no model loaded), else None."""
    from kdc.hf_files import read_config

    directory = cfg.resolve(cfg.teacher.path) if cfg.teacher.path else None
    if not (directory and (directory / "config.json").is_file()):
        return None
    return read_config(directory, "teacher.path")


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


def _check_entrypoint(cfg: KdcConfig) -> None:
    """`teacher.entrypoint` imports (its module is imported; the function is not called)."""
    if cfg.teacher.entrypoint:
        from kdc.models import check_entrypoint

        check_entrypoint(cfg)


def _check_student_layers(cfg: KdcConfig, hf: dict | None) -> None:
    """`student.layers` against the layer count a Hugging Face teacher's config.json states;
    other teachers' are checked when the student is built."""
    from kdc.compress.student import kept_layers

    n = (hf or {}).get("num_hidden_layers")
    if cfg.student.layers is not None and isinstance(n, int) and n > 0:
        try:
            kept_layers(n, cfg.student.layers)
        except UserError as e:
            raise e.located(cfg.source_file) from None
