"""What a run's stages read besides the config: the teacher's files, an entrypoint's source and
the data, hashed into every stage's input hash so --resume redoes what they feed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kdc.config import KdcConfig
from kdc.rundir import sha256_file, sha256_json

# what a teacher directory's files that kdc reads end in: weights, configs, tokenizer
# vocabularies (a SentencePiece `.model`) and `trust_remote_code`'s modelling code
TEACHER_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model", ".py")


def _module_dirs(directory: Path) -> list[Path]:
    """A sentence-transformers directory's module folders that modules.json names
    (1_Pooling/, 2_Normalize/): their config sets the teacher's pooling."""
    try:
        modules = json.loads((directory / "modules.json").read_text())
        paths = [m.get("path") for m in modules if isinstance(m, dict)]
    except (OSError, ValueError, TypeError, AttributeError):
        return []
    return [directory / p for p in paths if isinstance(p, str) and p and (directory / p).is_dir()]


def _teacher_files(cfg: KdcConfig) -> list[Path]:
    """The teacher's weights and config files, whose contents a stage's input hash covers."""
    t = cfg.teacher
    files: list[Path] = []
    if t.path and cfg.resolve(t.path).is_dir():
        top = cfg.resolve(t.path)
        files = sorted(
            p
            for d in (top, *_module_dirs(top))
            for p in d.iterdir()
            if p.is_file() and p.suffix in TEACHER_SUFFIXES
        )
    if t.weights and cfg.resolve(t.weights).is_file():
        files.append(cfg.resolve(t.weights))
    return files


def _data_fingerprint(cfg: KdcConfig, value: str | None) -> Any:
    """A data file's sha256; several files' (a glob's, a folder's parquet shards) names and
    sha256s, in the order they are read; a folder's (image folder, saved `datasets`) file names
    and sizes (not modification times: a fresh checkout of the same data, as a CI job makes, is
    the same data; reading every image's bytes would cost a pass over the folder per run; an
    image folder's marked as kdc reads it now, `_pixel_depth_mark`); None for what is not a
    local path (sklearn:digits, a hub name)."""
    from kdc.data.shards import shard_paths

    if not value or value.startswith("sklearn:"):
        return None
    if (shards := shard_paths(value, cfg.base_dir)) is not None:
        return [(_shard_key(p, cfg.base_dir), sha256_file(p)) for p in shards]
    path = cfg.resolve(value)
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():  # as the readers list it: linked folders followed, hidden ones not
        from kdc.data.readers import visible

        found = []
        for top, dirs, files in os.walk(path, followlinks=True):
            dirs[:] = sorted(d for d in dirs if visible(Path(d)))
            for f in (Path(top) / n for n in sorted(files) if visible(Path(n))):
                found.append((str(f.relative_to(path)), f.stat().st_size))
        return found + _folder_order_mark(path) + _pixel_depth_mark(path, found)
    return None


def _pixel_depth_mark(path: Path, files: list[tuple[str, int]]) -> list[tuple[str, str]]:
    """Marks on an image folder's fingerprint (not a saved `datasets` directory's) whose
    `files` may be 16-bit (a PNG, a TIFF) or float (a TIFF), by their names alone (no file is
    opened on each hash): those are read scaled to 8 bits (`kdc.data.images.eight_bit`), not
    clipped at 255 as before, so a run of them is not resumed on the clipped pixels; a folder of
    JPEGs keeps its fingerprint."""
    from kdc.data.images import FLOAT_SUFFIXES, WIDE_GRAY_SUFFIXES
    from kdc.data.readers import datasets_dir

    if datasets_dir(path):
        return []
    suffixes = {Path(name).suffix.lower() for name, _ in files}
    wide, floats = bool(suffixes & set(WIDE_GRAY_SUFFIXES)), bool(suffixes & set(FLOAT_SUFFIXES))
    return [("16-bit images", "scaled to 8 bits")] * wide + [("float images", "scaled")] * floats


def _folder_order_mark(path: Path) -> list[tuple[str, str]]:
    """A mark where folder `path`'s subfolders, as an image folder's classes, are indexed by
    name (`folder_order`) in another order than kdc indexed them before it did so (numbered
    names by value): a run of them then is not resumed; other folders' fingerprints stay."""
    from kdc.data.labels import class_order, folder_order
    from kdc.data.readers import visible

    names = [d.name for d in path.iterdir() if d.is_dir() and visible(d)]
    return [("classes", "by folder name")] if folder_order(names) != class_order(names) else []


def _shard_key(path: Path, base: str) -> str:
    """A data file's key among several: its path from the config's folder, `/`-separated (one
    key on every OS); its absolute path on another drive than the config's (Windows), where
    there is no relative path."""
    try:
        return Path(os.path.relpath(path, base)).as_posix()
    except ValueError:
        return Path(path).as_posix()


def _teacher_key(path: Path, top: Path | None) -> str:
    """A teacher file's key in the fingerprint: its name at the directory's top (as recorded
    before module folders were hashed: an unchanged teacher keeps its runs' hashes), else its
    path below the directory."""
    if top is None or path.parent == top or not path.is_relative_to(top):
        return path.name
    return path.relative_to(top).as_posix()


def _holds_out(cfg: KdcConfig) -> bool:
    """Whether `load_dataset` holds out a classifier's eval split: no data.eval, and no saved
    `datasets` directory's labelled test or validation split, which it evaluates on instead."""
    from kdc.data.readers import datasets_dir, datasets_layout

    if cfg.data.eval or cfg.task == "sentence-embedding":
        return False
    path = cfg.resolve(cfg.data.source)
    return not datasets_dir(path) or datasets_layout(path, cfg.data.label_column)[0] is None


def inputs_fingerprint(cfg: KdcConfig) -> str:
    """Hash of the teacher's files (weights, config; an entrypoint's source beside the config)
    and of the data (`_data_fingerprint`), so a retrained teacher, edited model code or edited
    data re-runs stages on --resume; a classifier's held-out eval split (`_holds_out`) by how
    it is drawn (`HELD_OUT_VERSION`: stratified by class), so a run that held out another
    split's rows re-runs too."""
    from kdc.data.labels import HELD_OUT_VERSION
    from kdc.models import entrypoint_files

    top = cfg.resolve(cfg.teacher.path) if cfg.teacher.path else None
    found = {
        "teacher": {_teacher_key(p, top): sha256_file(p) for p in _teacher_files(cfg)},
        "data": [_data_fingerprint(cfg, v) for v in (cfg.data.source, cfg.data.eval)],
    }
    if _holds_out(cfg):  # a held-out split's rows
        found["split"] = HELD_OUT_VERSION
    if code := entrypoint_files(cfg):
        base = Path(cfg.base_dir)
        found["entrypoint"] = {str(p.relative_to(base)): sha256_file(p) for p in code}
    return sha256_json(found)
