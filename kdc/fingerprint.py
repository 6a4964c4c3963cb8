"""What a run's stages read besides the config: the teacher's files, an entrypoint's source and
the data, hashed into every stage's input hash so --resume redoes what they feed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kdc.config import KdcConfig
from kdc.rundir import sha256_file, sha256_json


def _teacher_files(cfg: KdcConfig) -> list[Path]:
    """The teacher's weights and config files, whose contents a stage's input hash covers."""
    t = cfg.teacher
    files: list[Path] = []
    if t.path and cfg.resolve(t.path).is_dir():
        files = sorted(
            p
            for p in cfg.resolve(t.path).iterdir()
            if p.is_file() and p.suffix in (".json", ".safetensors", ".bin", ".txt")
        )
    if t.weights and cfg.resolve(t.weights).is_file():
        files.append(cfg.resolve(t.weights))
    return files


def _data_fingerprint(cfg: KdcConfig, value: str | None) -> Any:
    """A data file's sha256; a folder's (image folder, saved `datasets`) file names and sizes
    (not modification times: a fresh checkout of the same data, as a CI job makes, is the same
    data; reading every image's bytes would cost a pass over the folder per run); None for what
    is not a local path (sklearn:digits, a hub name)."""
    if not value or value.startswith("sklearn:"):
        return None
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
        return found
    return None


def inputs_fingerprint(cfg: KdcConfig) -> str:
    """Hash of the teacher's files (weights, config; an entrypoint's source beside the config)
    and of the data (`_data_fingerprint`), so a retrained teacher, edited model code or edited
    data re-runs stages on --resume."""
    from kdc.models import entrypoint_files

    found = {
        "teacher": {p.name: sha256_file(p) for p in _teacher_files(cfg)},
        "data": [_data_fingerprint(cfg, v) for v in (cfg.data.source, cfg.data.eval)],
    }
    if code := entrypoint_files(cfg):
        base = Path(cfg.base_dir)
        found["entrypoint"] = {str(p.relative_to(base)): sha256_file(p) for p in code}
    return sha256_json(found)
