"""Teacher and student adapters, chosen by a registry on the config's teacher kind."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any

from kdc.config import KdcConfig
from kdc.errors import UserError
from kdc.hf_files import label_names, read_config
from kdc.models.base import ModelAdapter
from kdc.models.hf import HFTextAdapter
from kdc.models.hf_image import HFImageAdapter
from kdc.models.sentence import SentenceAdapter
from kdc.models.vision import VisionAdapter, entrypoint_function


def student_family(cfg: KdcConfig) -> str:
    """The student's `ModelAdapter.family` as the config tells it, before any model is loaded: a
    CNN for an image classifier whose teacher is not a Hugging Face model, else a transformer."""
    cnn = cfg.task == "image-classification" and teacher_kind(cfg) != "huggingface"
    return "cnn" if cnn else "transformer"


def teacher_kind(cfg: KdcConfig) -> str:
    """How the teacher is given: huggingface, kdc (a CNN student kdc saved), entrypoint,
    torchvision or timm."""
    t = cfg.teacher
    if t.kind != "auto":
        return t.kind
    if t.path:  # exactly one of path, entrypoint, name (TeacherConfig checks)
        return "kdc" if is_kdc_cnn(cfg.resolve(t.path)) else "huggingface"
    if t.entrypoint:
        return "entrypoint"
    return "timm" if t.name and t.name.startswith("timm/") else "torchvision"


def _teacher_dir(cfg: KdcConfig) -> Path:
    if not cfg.teacher.path:
        raise UserError(
            "a Hugging Face teacher needs 'path' (a local model directory)",
            source=cfg.source_file,
            field="teacher.path",
            fix="save the model with save_pretrained and point to that directory",
        )
    path = cfg.resolve(cfg.teacher.path)
    if not path.is_dir():
        raise UserError(
            "model directory not found",
            source=cfg.source_file,
            field="teacher.path",
            fix=f"check that {path} exists",
        )
    return path


def _hf(cfg: KdcConfig) -> ModelAdapter:
    return HFTextAdapter.from_dir(
        _teacher_dir(cfg),
        max_length=cfg.data.max_length,
        trust_remote_code=cfg.teacher.trust_remote_code,
        text_pair=cfg.data.text_pairs,
    )


def _hf_image(cfg: KdcConfig) -> ModelAdapter:
    return HFImageAdapter.from_dir(
        _teacher_dir(cfg), trust_remote_code=cfg.teacher.trust_remote_code
    )


def _sentence(cfg: KdcConfig) -> ModelAdapter:
    return SentenceAdapter.from_dir(
        _teacher_dir(cfg),
        max_length=cfg.data.max_length,
        pooling=cfg.teacher.pooling,
        trust_remote_code=cfg.teacher.trust_remote_code,
    )


def teacher_entrypoint(cfg: KdcConfig) -> str | None:
    """The function that builds the teacher's network: `teacher.entrypoint`, or the one a kdc
    CNN student given as the teacher was built by (its kdc_model.json); None for the others."""
    kind = teacher_kind(cfg)
    if kind == "entrypoint":
        return cfg.teacher.entrypoint
    if kind != "kdc":
        return None
    try:
        meta = json.loads((cfg.resolve(cfg.teacher.path or "") / "kdc_model.json").read_text())
        source = meta["source"]
        return source["entrypoint"] if source["kind"] == "entrypoint" else None
    except (OSError, ValueError, KeyError, TypeError):  # the loader says what is wrong with it
        return None


def _top_module(cfg: KdcConfig) -> str | None:
    entrypoint = teacher_entrypoint(cfg)
    return entrypoint.split(":")[0].split(".")[0] if entrypoint else None


def entrypoint_files(cfg: KdcConfig) -> list[Path]:
    """The source files of a `teacher.entrypoint` whose top-level module Python finds in the
    config's folder (`top.py`, or every .py file of a package `top/`), kdc's own excepted;
    [] otherwise."""
    top = _top_module(cfg)
    spec = PathFinder.find_spec(top, [cfg.base_dir]) if top else None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        return []
    origin = Path(spec.origin).resolve()
    if origin.is_relative_to(Path(__file__).resolve().parents[1]):  # kdc itself, linked in
        return []
    return sorted(origin.parent.rglob("*.py")) if spec.submodule_search_locations else [origin]


# top-level entrypoint module → (its files, their modification times) when kdc imported it
_IMPORTED: dict[str, list[tuple[str, int]]] = {}


def _entrypoint_path(cfg: KdcConfig) -> None:
    """Entrypoints may live beside the config: its folder goes first on sys.path. A module of
    its own that Python's import cache holds from another file (another project's of the same
    name) or from before an edit is imported afresh; an unchanged one is not imported twice."""
    if cfg.base_dir in sys.path:
        sys.path.remove(cfg.base_dir)
    sys.path.insert(0, cfg.base_dir)
    files = entrypoint_files(cfg)
    if not files:
        return
    top = _top_module(cfg)
    now = [(str(p), p.stat().st_mtime_ns) for p in files]
    if top in sys.modules and _IMPORTED.get(top) != now:
        for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
            del sys.modules[name]
        importlib.invalidate_caches()
    _IMPORTED[top] = now


def check_entrypoint(cfg: KdcConfig) -> None:
    """A teacher built by an entrypoint (`teacher.entrypoint`, or a kdc CNN student's) must be
    importable (the function is not called); a UserError naming the config file and the field
    otherwise."""
    entrypoint = teacher_entrypoint(cfg)
    if not entrypoint:
        return
    _entrypoint_path(cfg)
    try:
        entrypoint_function(entrypoint)
    except UserError as e:
        raise _as_kdc_teacher(cfg, e) from None


def _as_kdc_teacher(cfg: KdcConfig, e: UserError) -> UserError:
    """An error of building a kdc CNN student given as the teacher, naming teacher.path (the
    config names no entrypoint to fix); other teachers' errors as they are."""
    if teacher_kind(cfg) != "kdc":
        return e.located(cfg.source_file)
    fix = e.fix
    if e.field == "teacher.entrypoint":
        fix = (
            f"the student was built by '{teacher_entrypoint(cfg)}': put its module beside "
            "this config (or on PYTHONPATH)"
        )
    return UserError(e.message, source=cfg.source_file, field="teacher.path", fix=fix)


def vision_source(cfg: KdcConfig) -> dict[str, Any]:
    """What builds a CNN teacher (VisionAdapter.build's `source`); its entrypoint importable."""
    kind = teacher_kind(cfg)
    if kind == "entrypoint":
        _entrypoint_path(cfg)
    return {
        "kind": kind,
        "entrypoint": cfg.teacher.entrypoint,
        "name": (cfg.teacher.name or "").removeprefix("timm/"),
        "kwargs": cfg.teacher.kwargs,
    }


def is_kdc_cnn(directory: Path) -> bool:
    """Whether `directory` holds a CNN student kdc saved (kdc_model.json, no config.json: a
    transformer student is a Hugging Face directory and loads as one)."""
    return (directory / "kdc_model.json").is_file() and not (directory / "config.json").is_file()


def _kdc_cnn(cfg: KdcConfig) -> ModelAdapter:
    """A CNN student of an earlier kdc run as the teacher (its entrypoint, if it was built by
    one, imported from this config's folder)."""
    directory = cfg.resolve(cfg.teacher.path or "")
    _entrypoint_path(cfg)
    try:
        adapter = load_student(directory)
    except UserError as e:
        raise _as_kdc_teacher(cfg, e) from None
    except TypeError as e:  # the entrypoint no longer takes the kwargs it was saved with
        raise UserError(
            f"cannot build the student's network again: {e}",
            source=cfg.source_file,
            field="teacher.path",
            fix=f"restore the signature of '{teacher_entrypoint(cfg)}' it was saved with",
        ) from None
    if not isinstance(adapter, VisionAdapter):
        raise UserError(
            f"{directory} holds a kdc {type(adapter).__name__}, not a CNN",
            source=cfg.source_file,
            field="teacher.path",
            fix="give the student's Hugging Face directory as a Hugging Face teacher",
        )
    return adapter


def _vision(cfg: KdcConfig) -> ModelAdapter:
    source = vision_source(cfg)
    weights = cfg.resolve(cfg.teacher.weights) if cfg.teacher.weights else None
    if weights is not None and not weights.is_file():
        raise UserError(
            "weights file not found",
            source=cfg.source_file,
            field="teacher.weights",
            fix=f"check that {weights} exists",
        )
    try:
        return VisionAdapter.build(source, weights)
    except TypeError as e:  # the entrypoint's signature does not take these kwargs
        raise UserError(
            f"cannot build the teacher: {e}",
            source=cfg.source_file,
            field="teacher.kwargs",
            fix="pass the arguments the function takes",
        ) from None


LOADERS: dict[str, Callable[[KdcConfig], ModelAdapter]] = {
    "huggingface": _hf,
    "hf-image": _hf_image,
    "sentence": _sentence,
    "entrypoint": _vision,
    "torchvision": _vision,
    "timm": _vision,
    "kdc": _kdc_cnn,
}
# (teacher kind, task) pairs loaded by another loader than the kind's own
TASK_LOADERS: dict[tuple[str, str], str] = {
    ("huggingface", "sentence-embedding"): "sentence",
    ("huggingface", "image-classification"): "hf-image",
}


def load_teacher(cfg: KdcConfig) -> ModelAdapter:
    """The teacher named by the config, in eval mode."""
    kind = teacher_kind(cfg)
    adapter = LOADERS[TASK_LOADERS.get((kind, cfg.task), kind)](cfg)
    adapter.module.eval()
    return adapter


def load_student(directory: Path, max_length: int = 128) -> ModelAdapter:
    """A student saved by `ModelAdapter.save`."""
    meta_path = directory / "kdc_model.json"
    if not meta_path.is_file():
        raise UserError(
            "not a kdc model directory (no kdc_model.json)",
            source=str(directory),
            fix="run the distill stage again",
        )
    meta = {"max_length": max_length, **json.loads(meta_path.read_text())}
    loader = STUDENT_LOADERS.get(meta.get("adapter"))
    if loader is None:
        raise UserError(
            f"kdc_model.json names an unknown model kind {meta.get('adapter')!r}",
            source=str(meta_path),
            fix="run the distill stage again",
        )
    return loader(directory, meta)


def load_run_student(directory: Path, max_length: int) -> ModelAdapter:
    """The run's distilled student (`distill/student`); a failure to load it names that directory
    and the distill stage, not the teacher.path fields its loaders name for a teacher."""
    try:
        return load_student(directory, max_length)
    except UserError as e:
        raise UserError(
            f"the run's distilled student does not load: {e.message}",
            source=str(directory),
            fix="run the distill stage again (kdc compress CONFIG without --resume)",
        ) from None


# a saved model's kdc_model.json "adapter" → how to load it (directory, its metadata)
STUDENT_LOADERS: dict[str, Callable[[Path, dict], ModelAdapter]] = {
    "huggingface": lambda d, meta: HFTextAdapter.from_dir(
        d, max_length=meta["max_length"], text_pair=meta.get("text_pair", False)
    ),
    "sentence": SentenceAdapter.load,
    "hf-image": lambda d, meta: HFImageAdapter.load(d),
    "vision": lambda d, meta: VisionAdapter.load(d),
}


def teacher_label_names(cfg: KdcConfig) -> list[str] | None:
    """Class names of a Hugging Face teacher's head (config.json id2label), read without loading
    the weights; None for other teachers."""
    if teacher_kind(cfg) != "huggingface" or not cfg.teacher.path:
        return None
    path = cfg.resolve(cfg.teacher.path)
    if not (path / "config.json").is_file():
        return None
    return label_names(read_config(path, "teacher.path"), path) or None
