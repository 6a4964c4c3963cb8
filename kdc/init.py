"""`kdc init MODEL_DIR --data FILE`: inspect a teacher and a data file, write a commented
model.yaml that validates and is ready to run."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from kdc.config import load_config
from kdc.data.labels import index_note, label_key, teacher_classes, teacher_order
from kdc.errors import UserError, listed
from kdc.hf_files import (
    HF_FAMILIES_FIX,
    TOKENIZER_GLOBS,
    check_model_dir,
    check_single_label,
    check_tokenizer,
    check_weights,
    config_size,
    label_names,
    max_positions,
    read_config,
    unsupported_teacher,
)
from kdc.init_data import DataInfo, inspect_data
from kdc.rundir import atomic_path, writable

# HF architecture suffix -> task kdc runs for it (a bare `*Model` only as a text encoder: see
# _hf_task)
HF_TASKS = {
    "ForSequenceClassification": "text-classification",
    "ForImageClassification": "image-classification",
    "ForImageClassificationWithTeacher": "image-classification",  # DeiT's distilled head
    "Model": "sentence-embedding",
}
HEAD_RX = re.compile(r"(^|\.)(classifier|head|fc)(\.\d+)?\.weight$")
# files save_pretrained writes beside config.json (tokenizer files: TOKENIZER_GLOBS)
HF_SIDE_FILES = ("preprocessor_config.json", "generation_config.json", "*.safetensors.index.json")


@dataclass
class TeacherInfo:
    """What `kdc init` learnt about the teacher."""

    kind: str  # huggingface | safetensors | kdc (a CNN student kdc saved)
    path: Path
    task: str
    num_labels: int | None
    label_names: list[str] = field(default_factory=list)
    layers: int | None = None
    max_positions: int | None = None
    channels: int | None = None  # an image classifier's input channels


def _hf_task(arch: str, conf: dict[str, Any]) -> str | None:
    """The task kdc runs for architecture `arch`: a bare `*Model` is a sentence encoder only if
    it is a text encoder (a vocabulary, no decoder, no LM head: not ViTModel, T5Model or
    GPT2LMHeadModel); an image classifier only with a ViT's integer geometry."""
    task = next((t for suffix, t in HF_TASKS.items() if arch.endswith(suffix)), None)
    if task == "sentence-embedding" and (
        arch.endswith("HeadModel") or "vocab_size" not in conf or conf.get("is_encoder_decoder")
    ):
        return None
    if task and unsupported_teacher(conf, task == "image-classification"):
        return None
    return task


def _hf_teacher(path: Path) -> TeacherInfo:
    conf = read_config(path, "MODEL_DIR")
    archs = conf.get("architectures") or []
    task = next((t for a in archs if (t := _hf_task(a, conf))), None)
    if task is None:
        image = any(str(a).endswith(("ForImageClassification", "WithTeacher")) for a in archs)
        problem = unsupported_teacher(conf, image) if archs else None
        raise UserError(
            problem or f"architecture {archs or 'unknown'} is not one kdc init can set up",
            source=str(path / "config.json"),
            field="architectures",
            fix=HF_FAMILIES_FIX
            if problem
            else "use a *ForSequenceClassification model, a ViT-like *ForImageClassification "
            "model, or a bare text encoder (*Model, e.g. a sentence-transformers directory), or "
            "write model.yaml by hand (README: Configuration)",
        )
    if task != "image-classification":
        check_tokenizer(path, "MODEL_DIR")  # fail here, not in compress
    names, n = [], None  # an encoder has no head, whatever labels its config carries
    if task != "sentence-embedding":
        check_single_label(conf, path, "MODEL_DIR")
        names = label_names(conf, path)
        n = conf.get("num_labels") or len(names) or None
    check_weights(path, "MODEL_DIR")  # as validate and compress check them
    return TeacherInfo(
        "huggingface",
        path,
        task,
        n,
        names,
        layers=config_size(conf, "num_hidden_layers"),
        max_positions=max_positions(conf),
        channels=conf["num_channels"] if task == "image-classification" else None,
    )


def _safetensors_teacher(path: Path, kind: str = "safetensors") -> TeacherInfo:
    """What the weights file at `path` says of a CNN: classes, input channels (`kind`: kdc for
    a kdc-saved student's model.safetensors)."""
    from kdc.models.weights import safetensors_shapes

    shapes = safetensors_shapes(path)
    if shapes is None:
        raise UserError(
            "not a readable safetensors file",
            source=str(path),
            field="MODEL_DIR",
            fix="re-save the weights with safetensors",
        )
    heads = [s for k, s in shapes.items() if HEAD_RX.search(k) and len(s) == 2]
    n = heads[-1][0] if heads else None
    return TeacherInfo(kind, path, "image-classification", n, channels=_input_channels(shapes))


def _layer_order(name: str) -> list[tuple[int, int | str]]:
    """A weight's name as a sort key that orders numbered layers by number (2 before 10)."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in name.split(".")]


def _input_channels(shapes: dict[str, list[int]]) -> int | None:
    """The channels a CNN's weights take: 3 where a conv reads 3 (an RGB stem), else the
    in_channels of its first conv in layer order (None without convs). Reading 1 is not enough
    to be the stem: a depthwise conv reads 1 channel per group, and a model's names need not
    order the stem first (timm's `blocks` before `conv_stem`)."""
    convs = [shapes[k] for k in sorted(shapes, key=_layer_order) if len(shapes[k]) == 4]
    if not convs:
        return None
    return 3 if any(c[1] == 3 for c in convs) else convs[0][1]


def _saved_pretrained(model: Path) -> bool:
    """Whether directory `model` holds what save_pretrained writes besides config.json: its
    side files, or safetensors weights it tagged ({"format": "pt"})."""
    from safetensors import safe_open

    if any(next(model.glob(g), None) for g in (*TOKENIZER_GLOBS, *HF_SIDE_FILES)):
        return True
    for weights in model.glob("*.safetensors"):
        try:
            with safe_open(str(weights), "pt") as f:
                if (f.metadata() or {}).get("format") == "pt":
                    return True
        except Exception:  # a damaged file raises several types; _safetensors_teacher says so
            continue
    return False


def inspect_teacher(model: Path) -> TeacherInfo:
    """A Hugging Face directory (config.json), a CNN student kdc saved, or safetensors weights
    (file or directory)."""
    from kdc.models import is_kdc_cnn

    if model.is_dir() and is_kdc_cnn(model) and (model / "model.safetensors").is_file():
        return replace(_safetensors_teacher(model / "model.safetensors", "kdc"), path=model)
    if model.is_dir() and ((model / "config.json").is_file() or _saved_pretrained(model)):
        check_model_dir(model, "MODEL_DIR")  # compress's error where config.json is missing
        return _hf_teacher(model)
    weights = [model] if model.is_file() else sorted(model.glob("*.safetensors"))
    if len(weights) == 1 and weights[0].suffix == ".safetensors":
        return _safetensors_teacher(weights[0])
    raise UserError(
        "not a Hugging Face model directory (config.json) nor one .safetensors file",
        source=str(model),
        field="MODEL_DIR",
        fix="pass the directory save_pretrained wrote, or the teacher's .safetensors",
    )


def check_match(teacher: TeacherInfo, data: DataInfo) -> None:
    """The teacher's classes and the data's must agree in kind, number and (where the teacher
    names them) name, as compress checks them; data lacking some of a named teacher's classes
    is allowed and noted in `data.notes`."""
    want = "image" if teacher.task == "image-classification" else "text"
    if data.kind != want:
        article = "an" if teacher.task[0] in "aeiou" else "a"
        raise UserError(
            f"the teacher is {article} {teacher.task} model but {data.source} is {data.kind} data",
            field="--data",
            fix=f"pass {want} data the teacher was trained on",
        )
    named = teacher_classes(set(data.labels), teacher.label_names)  # the data's ⊆ the teacher's
    if named and len(data.labels) < len(named):  # as compress: allowed, and noted
        have = {label_key(x) for x in data.labels}
        missing = [n for n in named if label_key(n) not in have]
        data.notes.append(
            f"{data.source} has no rows of class(es) {listed(missing)}: the student learns them "
            "from the teacher's outputs alone"
        )
        return
    if teacher.num_labels is not None and teacher.num_labels != len(data.labels):
        where = f"column '{data.label_column}' of " if data.label_column else ""
        raise UserError(
            f"the teacher has {teacher.num_labels} labels {teacher.label_names[:6]} "
            f"but {where}{data.source} has {len(data.labels)} {data.labels[:6]}",
            field="--data",
            fix="pass the data the teacher was trained on",
        )
    named = teacher.label_names and data.labels
    if named and teacher_order(data.labels, teacher.label_names, data.source, "--data") is None:
        data.notes += index_note(data.labels, teacher.label_names)


def _v(value: Any) -> str:
    """A YAML scalar or flow collection."""
    return (
        yaml.safe_dump(value, default_flow_style=True, width=1000)
        .strip()
        .removesuffix("\n...")
        .removesuffix("...")
        .strip()
    )


def _rel(path: str | Path, base: Path) -> str:
    """`path` relative to `base` when inside it, else absolute (a model in a cache or a virtual
    environment is not moved with the config)."""
    target, base = Path(path).resolve(), base.resolve()
    return os.path.relpath(target, base) if target.is_relative_to(base) else str(target)


def _relative_note(path: str) -> str:
    return "" if Path(path).is_absolute() else "; path relative to this file"


def _teacher_lines(t: TeacherInfo, base: Path, classes: int) -> list[str]:
    if t.kind == "kdc":
        path = _rel(t.path, base)
        return ["teacher:", f"  path: {_v(path)}   # a CNN student kdc saved{_relative_note(path)}"]
    if t.kind == "huggingface":
        path = _rel(t.path, base)
        lines = ["teacher:", f"  path: {_v(path)}   # Hugging Face directory{_relative_note(path)}"]
        if t.label_names:
            lines.append(f"  # labels (id2label): {', '.join(t.label_names)}")
        return lines
    kwargs = f"  kwargs: {{num_classes: {t.num_labels or classes}}}"
    if t.num_labels is None:  # no classifier/head/fc weight: the data's classes
        kwargs += "   # CHANGE if not: the data's classes (no classifier/head/fc weight)"
    weights = _rel(t.path, base)
    return [
        "teacher:",
        "  # CHANGE: the function that builds the network these weights belong to",
        "  # (package.module:function importable from this file's folder, returning an",
        "  # nn.Module that takes pixel_values and returns logits)",
        "  entrypoint: my_models:build_teacher",
        kwargs,
        f"  weights: {_v(weights)}   # loaded with safetensors, never pickle"
        + _relative_note(weights),
    ]


def _image_lines(t: TeacherInfo, d: DataInfo) -> list[str]:
    """An image folder's read size for a CNN (a vision transformer's is its config.json's), and
    its channels for a one-channel teacher (an image folder is read as RGB otherwise)."""
    if d.kind != "image" or d.source.startswith("sklearn:"):
        return []
    lines = []
    if t.kind == "safetensors" and d.image_size:
        size = d.image_size
        lines.append(f"  image_size: {size}   # every image is {size}x{size} (unset: read at 224)")
    if t.channels == 1:
        basis = "config.json num_channels" if t.kind == "huggingface" else "its first conv"
        lines.append(f"  channels: 1   # grayscale: the teacher takes 1-channel images ({basis})")
    if t.kind != "huggingface" and t.channels != 1:  # a CNN: its training's Normalize, if any
        lines.append(
            "  # mean: [0.485, 0.456, 0.406]   # with std: the teacher's Normalize, if it was "
            "trained with one (ImageNet's here)"
        )
        lines.append("  # std: [0.229, 0.224, 0.225]")
    return lines


def _data_lines(d: DataInfo, t: TeacherInfo, base: Path) -> list[str]:
    source = d.source if d.source.startswith("sklearn:") else _rel(d.source, base)
    where = "" if d.source.startswith("sklearn:") else _relative_note(source)
    unit = "images" if d.kind == "image" else "rows"
    files = f" in {d.files} files, read in name order" if d.files > 1 else ""
    lines = ["data:", f"  source: {_v(source)}   # {d.rows or '?'} {unit}{files}{where}"]
    lines += _image_lines(t, d)
    if d.text_column:
        why = (
            "a text pair: tokenized as (text, text_pair)"
            if isinstance(d.text_column, list)
            else "the longest-text column"
        )
        lines.append(f"  text_column: {_v(d.text_column)}   # {why}")
    if d.label_column:
        lines.append(
            f"  label_column: {_v(d.label_column)}   # {len(d.labels)} classes: "
            f"{', '.join(d.labels[:10])}"
        )
    if d.max_length:
        lines.append(f"  max_length: {d.max_length}   # {d.max_length_note}")
    return [*lines, _eval_line(d, base), *_left_out_lines(d, base)]


def _eval_line(d: DataInfo, base: Path) -> str:
    if d.eval_split:
        return f"  # evaluation reads the directory's '{d.eval_split}' split"
    if d.eval_source:
        what = (
            "test split's folder" if d.kind == "image" else "test (else validation) split's files"
        )
        return f"  eval: {_v(_rel(d.eval_source, base))}   # the {what}"
    return "  eval_fraction: 0.2   # held out for evaluation (or set data.eval: FILE)"


def _left_out_lines(d: DataInfo, base: Path) -> list[str]:
    """A comment for each split's files --data matched that the config does not read."""
    return [
        f"  # not read: {listed([_rel(f, base) for f in lo.files])} (taken for split "
        f"'{lo.split}': {lo.why})"
        for lo in d.left_out
    ]


def _student_lines(t: TeacherInfo) -> list[str]:
    if t.kind == "huggingface" and t.layers:
        keep = max(1, t.layers // 2)
        return [
            "student:",
            f"  layers: {keep}   # keep {keep} of the teacher's {t.layers} layers, evenly spaced",
        ]
    return ["student:", "  width: 0.5   # keep half of each conv's channels"]


def _drop_lines(t: TeacherInfo) -> list[str]:
    if t.task == "sentence-embedding":
        return [
            "  # the shipped engine's mean cosine with the teacher's embeddings on held-out texts",
            "  # (the teacher's own is 1.0; examples/embeddings: 0.84 at 2 of 6 layers, INT8)",
            "  max_accuracy_drop: 0.15",
        ]
    return ["  max_accuracy_drop: 0.02   # teacher accuracy minus the shipped engine's"]


def render(name: str, teacher: TeacherInfo, data: DataInfo, base: Path) -> str:
    """The commented model.yaml text (paths relative to `base`, the file's directory, where
    inside it)."""
    teacher_lines = _teacher_lines(teacher, base, len(data.labels))
    check = ": check the CHANGE lines," if any("CHANGE" in ln for ln in teacher_lines) else ";"
    return "\n".join(
        [
            f"# kdc config written by `kdc init` for {teacher.path.name}{check}",
            "# then run `kdc compress THIS_FILE --target host` (or --target jetson, ...).",
            f"name: {_v(name)}   # run directory: runs/<name>",
            f"task: {teacher.task}",
            "seed: 0",
            *teacher_lines,
            *_data_lines(data, teacher, base),
            *_student_lines(teacher),
            "search:",
            "  strategy: fixed   # or evolution / exhaustive: proxy search under the budget",
            "distill:",
            "  epochs: 3",
            "quantize:",
            "  precision: int8   # fp32, fp16 or int8",
            "constraints:",
            *_drop_lines(teacher),
            "  # latency_budget_ms: 10   # default: the target profile's (host: none, not gated)",
            "",
        ]
    )


def _name(model: Path) -> str:
    stem = (model.resolve().parent if model.is_file() else model.resolve()).name
    return re.sub(r"[^A-Za-z0-9_.-]", "-", stem).lstrip("-_.") or "model"


def init_config(
    model: Path | str, data: str, out: Path | str = "model.yaml", *, force: bool = False
) -> tuple[Path, TeacherInfo, DataInfo]:
    """Inspect `model` and `data`, write a validated model.yaml to `out` (atomically)."""
    model, out = Path(model), Path(out)
    if out.is_dir():
        raise UserError(
            "is a directory",
            source=str(out),
            field="--out",
            fix="pass a file path for the config, e.g. DIR/model.yaml",
        )
    if out.exists() and not force:
        raise UserError(
            "file exists",
            source=str(out),
            field="--out",
            fix="pass another --out, or --force to overwrite it",
        )
    if not model.exists():
        raise UserError("not found", source=str(model), field="MODEL_DIR", fix="check the path")
    teacher = inspect_teacher(model)
    info = inspect_data(data, teacher)
    check_match(teacher, info)
    text = render(_name(model), teacher, info, out.parent)
    with writable(out, "config", "--out", "model.yaml"), atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
        load_config(tmp)  # what we write must validate
    return out, teacher, info
