"""Checks of a Hugging Face model directory's own files (config.json, the tokenizer's), made
without importing transformers: by the teacher loaders and by `kdc init`."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from kdc.errors import UserError

# a directory saved with tokenizer.save_pretrained holds one of these (tokenizer_config.json
# always; vocabularies and sentencepiece models under their model's own names)
TOKENIZER_GLOBS = ("tokenizer*.json", "*vocab*", "merges.txt", "*.model", "*.spm")
TOKENIZER_FIX = "save the tokenizer into the model directory with tokenizer.save_pretrained(dir)"
CONFIG_FIX = "re-save the model with save_pretrained"
JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number"}
# config.json integers of a ViT-like image classifier (HFImageAdapter requires them)
VIT_GEOMETRY = ("image_size", "patch_size", "num_channels")
# an image classifier's normalisation, and what is assumed without it (ViTImageProcessor's
# defaults, IMAGENET_STANDARD_MEAN / _STD)
PROCESSOR_FILE = "preprocessor_config.json"
VIT_MEAN_STD = 0.5
# config.json's names for a transformer's sizes in models that name them otherwise (DistilBERT)
SIZE_ALIASES = {
    "num_hidden_layers": "n_layers",
    "hidden_size": "dim",
    "num_attention_heads": "n_heads",
    "intermediate_size": "hidden_dim",
}
# text models whose embeddings number positions from padding_idx + 1 (RoBERTa's scheme): their
# position table holds pad_token_id + 1 rows fewer usable positions than max_position_embeddings
PADDING_OFFSET_POSITIONS = {
    "roberta",
    "xlm-roberta",
    "xlm-roberta-xl",
    "camembert",
    "mpnet",
    "longformer",
    "data2vec-text",
    "ibert",
}


def read_config(path: Path, field: str) -> dict[str, Any]:
    """The config.json of model directory `path`; not UTF-8 JSON holding an object is a
    UserError naming it and `field` (the option that named the directory)."""
    conf = path / "config.json"
    try:
        data = json.loads(conf.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        problem = f"is not UTF-8 (byte {e.start})"
    except json.JSONDecodeError as e:
        problem = f"is not valid JSON (line {e.lineno})"
    else:
        kind = JSON_KINDS.get(type(data), "a JSON value")
        problem = None if isinstance(data, dict) else f"holds {kind}, not an object"
    if problem:
        raise UserError(f"config.json {problem}", source=str(conf), field=field, fix=CONFIG_FIX)
    return data


def max_positions(conf: dict[str, Any]) -> int | None:
    """The most tokens a text model's absolute position table takes (None: no such table, or
    relative positions only, as DeBERTa's)."""
    n = conf.get("max_position_embeddings")
    relative = conf.get("position_embedding_type", "absolute") != "absolute"
    if not isinstance(n, int) or relative or conf.get("position_biased_input") is False:
        return None
    if conf.get("model_type") in PADDING_OFFSET_POSITIONS:
        pad = conf.get("pad_token_id")
        n -= (1 if pad is None else int(pad)) + 1
    return n


def config_size(conf: dict[str, Any], key: str) -> int | None:
    """A transformer size of config.json (`key` as BERT names it: num_hidden_layers,
    hidden_size, num_attention_heads, intermediate_size), None where it states no positive
    integer."""
    n = conf.get(key, conf.get(SIZE_ALIASES.get(key, key)))
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def assumed_processor(path: Path) -> str | None:
    """How images are read for an image classifier in directory `path` without
    preprocessor_config.json, as a warning naming the file to add; None where it has the file."""
    if (path / PROCESSOR_FILE).is_file():
        return None
    return (
        f"{path} has no {PROCESSOR_FILE}: images are resized to config.json's image_size with "
        f"Pillow's bilinear filter and normalised with mean {VIT_MEAN_STD} and std {VIT_MEAN_STD} "
        "per channel (ViTImageProcessor's defaults); if the teacher was trained otherwise, save "
        "its image processor there (image_processor.save_pretrained)"
    )


def label_names(conf: dict[str, Any], path: Path) -> list[str]:
    """The head's class names in index order, from config.json's id2label ([] without one)."""
    id2label = conf.get("id2label") or {}
    fix = 'map each class index to its name, as in {"0": "negative", "1": "positive"}'
    if not isinstance(id2label, dict):
        raise UserError(
            f"id2label is {JSON_KINDS.get(type(id2label), 'a JSON value')}, not an object",
            source=str(path / "config.json"),
            field="id2label",
            fix=fix,
        )
    bad = [k for k in id2label if not re.fullmatch(r"\d+", k.strip())]
    if bad:
        raise UserError(
            f"id2label key {bad[0]!r} is not a class index",
            source=str(path / "config.json"),
            field="id2label",
            fix=fix,
        )
    return [str(id2label[k]) for k in sorted(id2label, key=int)]


def check_single_label(conf: dict[str, Any], path: Path, field: str) -> None:
    """A classifier's head must be single-label (softmax over 2+ classes): a regression head (one
    output, or config.json problem_type regression) or a multi-label one (a sigmoid per class)
    would be distilled, scored and verified as a softmax classifier, wrongly; refused."""
    kind = conf.get("problem_type")
    labels = conf.get("id2label") or {}
    outputs = conf.get("num_labels") or (len(labels) if isinstance(labels, dict) else 0)
    if kind == "multi_label_classification":
        what = "a multi-label classifier (config.json problem_type multi_label_classification)"
    elif kind == "regression" or outputs == 1:
        why = "problem_type regression" if kind == "regression" else "one output (num_labels 1)"
        what = f"a regression model (config.json {why})"
    else:
        return
    raise UserError(
        f"the teacher is {what}; kdc distils single-label classifiers (a softmax over 2 or more "
        "classes, scored by accuracy) and sentence encoders",
        source=str(path / "config.json"),
        field=field,
        fix="give a single-label classifier; for a regression or multi-label head kdc cannot "
        "measure the accuracy it gates on",
    )


def check_tokenizer(path: Path, field: str) -> None:
    """Model directory `path` must hold tokenizer files, and its tokenizer.json (if any) be
    JSON: what a tokenizer needs, checked without loading one."""
    if not any(next(path.glob(g), None) for g in TOKENIZER_GLOBS):
        raise UserError(
            "no tokenizer files (tokenizer_config.json, tokenizer.json, a vocabulary or model)",
            source=str(path),
            field=field,
            fix=TOKENIZER_FIX,
        )
    tok = path / "tokenizer.json"
    try:
        if tok.is_file():
            json.loads(tok.read_bytes())
    except ValueError:  # JSONDecodeError, or UnicodeDecodeError
        raise UserError(
            "tokenizer.json is not valid JSON", source=str(tok), field=field, fix=TOKENIZER_FIX
        ) from None


# config.json lists of a hierarchical model's stages (Swin, ConvNeXt, ResNet, PVT, ...)
STAGE_KEYS = ("depths", "hidden_sizes")
HF_FAMILIES_FIX = (
    "use a BERT-like text classifier or a ViT-like image classifier (ViT, DeiT, BEiT); a CNN "
    "can be given by teacher.entrypoint, a function returning it as an nn.Module"
)


def unsupported_teacher(conf: dict[str, Any], image: bool) -> str | None:
    """Why config.json `conf` is a Hugging Face model kdc cannot compress, None if it can: an
    image classifier (`image`) must be ViT-like (integer image_size, patch_size and
    num_channels, one stack of equal transformer layers); a text model's layers must each have
    their own weights (not ALBERT's, shared by groups of layers)."""
    arch = ", ".join(repr(str(a)) for a in conf.get("architectures") or []) or "the teacher"
    if image:
        for key in VIT_GEOMETRY:
            value = conf.get(key)
            if not isinstance(value, int) or isinstance(value, bool):
                return (
                    f"{arch} is not a ViT-like image classifier: config.json has no integer {key!r}"
                )
        stages = next((k for k in STAGE_KEYS if isinstance(conf.get(k), list)), None)
        if stages:
            return (
                f"{arch} is a hierarchical model (config.json {stages!r}: stages of different "
                "widths), not one stack of equal transformer layers kdc can keep a subset of"
            )
    elif isinstance(conf.get("num_hidden_groups"), int):
        return (
            f"{arch} shares its layers' weights (ALBERT-style, config.json num_hidden_groups): "
            "kdc keeps a subset of distinct layers"
        )
    return None


# the PyTorch weights from_pretrained reads (one file, or a sharded checkpoint's index)
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _index(v: Any, n: int | None) -> bool:
    """Whether `v` indexes one of `n` things (of any number where `n` is None)."""
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < (n or math.inf)


def check_pruned_heads(conf: dict[str, Any], path: Path) -> None:
    """A UserError unless config.json's `pruned_heads` (layer index → the heads transformers
    prunes from it when it builds the model; a pruned kdc student's) names layers and distinct
    heads the config has, keeping a head in every layer: transformers' IndexError otherwise."""
    pruned = conf.get("pruned_heads") or {}
    layers, heads = (config_size(conf, k) for k in ("num_hidden_layers", "num_attention_heads"))

    def fits(layer: str, gone: Any) -> bool:
        return (
            layer.isdecimal()
            and _index(int(layer), layers)
            and isinstance(gone, list)
            and all(_index(h, heads) for h in gone)
            and len(set(gone)) == len(gone) < (heads or math.inf)
        )

    bad = (
        next(({k: v} for k, v in pruned.items() if not fits(k, v)), None)
        if isinstance(pruned, dict)
        else pruned
    )
    if bad is not None:
        raise UserError(
            f"pruned_heads {json.dumps(bad)} names no heads of this config's layers "
            f"({layers} layers of {heads} heads): a layer index, then distinct head indices, "
            "one kept",
            source=str(path / "config.json"),
            field="pruned_heads",
            fix='map layer indices to the heads pruned from them, as in {"0": [1]}, or remove '
            "pruned_heads",
        )


def check_model_dir(path: Path, field: str) -> None:
    """A UserError unless `path` holds a readable config.json (a well-formed `pruned_heads`)."""
    if not (path / "config.json").is_file():
        raise UserError(
            "not a Hugging Face model directory (no config.json)",
            source=str(path),
            field=field,
            fix="point to a directory saved with save_pretrained",
        )
    check_pruned_heads(read_config(path, field), path)


def check_weights(path: Path, field: str) -> None:
    """A UserError unless model directory `path` holds weights from_pretrained reads."""
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise UserError(
            f"no PyTorch weights ({', '.join(WEIGHT_FILES)})",
            source=str(path),
            field=field,
            fix="save the model into the directory with model.save_pretrained(dir)",
        )


def check_loadable(path: Path, field: str, text: bool) -> None:
    """A UserError unless model directory `path` holds what loading it reads, checked without
    loading it: config.json, weights from_pretrained reads, and for a text model tokenizer
    files."""
    check_model_dir(path, field)
    check_weights(path, field)
    if text:
        check_tokenizer(path, field)
