"""The files a config names, before anything is read: the teacher's model directory or weights
file and the data exist and are of the kind each field takes; one of another kind (a weights
file or the model's Python file as `teacher.path`, a folder as `teacher.weights`) is named with
the field that takes it."""

from __future__ import annotations

import re
from pathlib import Path

from kdc.config import KdcConfig
from kdc.errors import UserError

# files that hold a state dict (safetensors, or torch.save's formats)
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
MODEL_DIR_FILES = ("config.json", "kdc_model.json")  # a Hugging Face directory, a kdc student's
CNN_FIX = (
    "teacher.entrypoint: 'package.module:function' building its network (or teacher.name for a "
    "torchvision or timm model)"
)


def check_paths(cfg: KdcConfig) -> None:
    """A UserError naming the config file and field for the first path that is missing or of
    another kind than the field takes."""
    from kdc.data.shards import data_files, is_glob

    t, d = cfg.teacher, cfg.data
    wanted = [
        ("teacher.path", t.path, "model directory", "is_dir"),
        ("teacher.weights", t.weights, "weights file", "is_file"),
        ("data.source", None if d.source.startswith("sklearn:") else d.source, "data", "exists"),
        ("data.eval", d.eval, "eval data", "exists"),
    ]
    for field, rel, what, test in wanted:
        if rel is None:
            continue
        if field.startswith("data.") and is_glob(rel, cfg.base_dir):
            data_files(rel, cfg.base_dir, field, cfg.source_file)  # it matches a file
            continue
        path = cfg.resolve(rel)
        if test == "is_dir" and path.is_file():
            problem, fix = f"{path} is a file; the {what} is wanted", _file_as_dir_fix(path)
        elif test == "is_file" and path.is_dir():
            problem, fix = f"{path} is a directory; the {what} is wanted", _dir_as_weights_fix(path)
        elif not getattr(path, test)():
            problem, fix = f"{what} not found", _missing_fix(cfg, field, str(rel))
        else:
            continue
        raise UserError(problem, source=cfg.source_file, field=field, fix=fix)


def _file_as_dir_fix(path: Path) -> str:
    """What to give for a file named as `teacher.path`, by what the file is."""
    if any((path.parent / name).is_file() for name in MODEL_DIR_FILES):
        return f"give its directory: {path.parent}"
    if path.suffix == ".py":
        return (
            f"a model's code is read by teacher.entrypoint: '{path.stem}:FUNCTION' (the function "
            "in it returning the nn.Module; its module importable from the config's folder), "
            "with teacher.weights"
        )
    if path.suffix in WEIGHT_SUFFIXES:
        return f"a weights file is teacher.weights: give it there, with {CNN_FIX}"
    return (
        "give the directory save_pretrained wrote (config.json and the weights), or a CNN's "
        f"weights as teacher.weights with {CNN_FIX}"
    )


def _dir_as_weights_fix(path: Path) -> str:
    """What to give for a folder named as `teacher.weights`: its weights file, or the folder as
    `teacher.path` where it is a model directory."""
    if any((path / name).is_file() for name in MODEL_DIR_FILES):
        return "a model directory is teacher.path: give it there, without teacher.weights"
    found = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if len(found) == 1:
        return f"give the file: {found[0]}"
    named = f" (it holds {', '.join(p.name for p in found)})" if found else ""
    return f"give the weights file (safetensors, or a torch state dict){named}"


def _missing_fix(cfg: KdcConfig, field: str, rel: str) -> str:
    """Where `field`'s missing path `rel` was looked for, and for a Hub id as `teacher.path`
    that kdc downloads nothing."""
    base = "the working directory" if cfg.source_file.startswith("<") else "the config"
    fix = f"check that {cfg.resolve(rel)} exists (paths are relative to {base})"
    hub = (  # org/name, and no folder org/ here: a Hub id rather than a typo
        field == "teacher.path"
        and re.fullmatch(r"[\w.-]+/[\w.-]+", rel)
        and not cfg.resolve(rel.split("/")[0]).exists()
    )
    if hub:
        return (
            f"{fix}; kdc reads a local directory and downloads nothing: for the Hub model "
            f"'{rel}', save it with save_pretrained and give that directory"
        )
    return fix
