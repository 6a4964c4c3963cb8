"""Load a task's data (csv/tsv/jsonl/parquet/txt, a `datasets` directory, an image folder or
scikit-learn digits) into a `Dataset` with train and eval splits."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from kdc.config import KdcConfig
from kdc.data.base import Dataset, Split, permuted
from kdc.data.images import IMAGE_SUFFIXES, image_files, image_sizes, read_digits, read_imagefolder
from kdc.data.labels import (
    align_labels,
    check_eval_classes,
    check_spellings,
    check_train_left,
    class_order,
    folder_order,
    held_out_order,
    label_field,
    label_key,
    stratified_head,
    teacher_classes,
    unseen_labels,
)
from kdc.data.readers import datasets_dir, datasets_layout, read_datasets
from kdc.data.shards import (
    FILE_READERS,
    check_disjoint,
    data_files,
    is_glob,
    mixed_splits_note,
    read_files,
    refuse_nested,
    shard_paths,
)
from kdc.errors import UserError, listed
from kdc.hf_files import read_config
from kdc.image_processor import ImageReading, processor_reading, read_processor

SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".txt": "txt",
}
IMAGE_FORMATS = ("imagefolder", "sklearn")
DEFAULT_IMAGE_SIZE = 224  # an image folder's read side without data.image_size or a processor
COLUMN_FORMATS = ("csv", "tsv", "jsonl", "parquet", "datasets")


def _format(cfg: KdcConfig, value: str, field: str) -> str:
    """The format of data path `value` (`field`'s): data.format, else told by the path: a
    folder's kind, a file's suffix, or the suffix every file a glob matches has."""
    if cfg.data.format != "auto":
        return cfg.data.format
    if field == "data.source" and value.startswith("sklearn:"):
        return "sklearn"
    path = cfg.resolve(value)
    if is_glob(value, cfg.base_dir):
        files = data_files(value, cfg.base_dir, field, cfg.source_file)
        suffixes = sorted({f.suffix.lower() for f in files})
        if len(suffixes) > 1:
            read = next((s for s in suffixes if s in SUFFIX_FORMATS), "")  # not README.md's
            raise UserError(
                f"'{value}' matches files of several formats "
                f"({', '.join(s or 'no suffix' for s in suffixes)})",
                source=cfg.source_file,
                field=field,
                fix=f"narrow the pattern to one, e.g. {value}{read}"
                if read and not Path(value).suffix
                else "narrow the pattern to one format",
            )
        path = files[0]
    elif path.is_dir():
        if datasets_dir(path):
            return "datasets"
        if shard_paths(value, cfg.base_dir):
            return "parquet"
        refuse_text_folder(path, value, field)
        return "imagefolder"  # unless a Hub download's root: `_hub_root_named`
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None and path.suffix.lower() in IMAGE_SUFFIXES:
        raise UserError(
            f"'{path.name}' is one image; image data is a folder laid out as "
            "<folder>/<class>/<image>",
            source=cfg.source_file,
            field=field,
            fix=f"point {field} to the folder holding the class folders",
        )
    if fmt is None:
        raise UserError(
            f"cannot tell the format of '{path.name}'",
            source=cfg.source_file,
            field="data.format",
            fix="set data.format (csv, tsv, jsonl, parquet, txt, datasets, imagefolder)",
        )
    return fmt


def refuse_text_folder(path: Path, value: str, field: str) -> None:
    """A folder of csv/jsonl/... files and no class folders is not an image folder: name the
    glob that reads its files (a folder is read as one split only of parquet shards)."""
    entries = [e for e in path.iterdir() if not e.name.startswith(".")]
    found = sorted({e.suffix.lower() for e in entries if e.suffix.lower() in SUFFIX_FORMATS})
    if not found or any(e.is_dir() or e.suffix.lower() in IMAGE_SUFFIXES for e in entries):
        return  # class folders, or images (a class folder given for the whole: images.py says)
    globs = " or ".join(f"{value.rstrip('/')}/*{suffix}" for suffix in found)
    raise UserError(
        f"is a folder of {'/'.join(found)} files, not an image folder (<folder>/<class>/<image>)",
        source=str(path),
        field=field,
        fix=f"name its files by a glob, read in name order as one split: {field}"
        f"{' ' if field.startswith('--') else ': '}'{globs}'"
        if len(found) == 1
        else f"name one format's files by a glob: {globs}",
    )


def _check_kind(cfg: KdcConfig, path: Path, fmt: str, field: str) -> None:
    """The task's kind of input (images, or text) must be what the format holds."""
    if (fmt in IMAGE_FORMATS) == (cfg.task == "image-classification"):
        return
    where = str(path) if fmt != "sklearn" else cfg.data.source
    if fmt in IMAGE_FORMATS:
        raise UserError(
            f"task '{cfg.task}' needs text, but this is image data ({fmt})",
            source=where,
            field=field,
            fix="give a csv/tsv/jsonl/parquet/txt file or a datasets directory, "
            "or set task: image-classification",
        )
    column = f" (text column {cfg.data.text_column_names()})" if fmt in COLUMN_FORMATS else ""
    raise UserError(
        f"task 'image-classification' needs image data, but this is a "
        f"{'datasets directory' if fmt == 'datasets' else fmt + ' file'}, which kdc reads as "
        f"text{column}, not as numeric features or pixel columns",
        source=where,
        field=field,
        fix="give an image folder laid out as <folder>/<class>/<image> or sklearn:digits, "
        "or set task: text-classification for text",
    )


def _saved_dataset(path: Path) -> bool:
    """Whether `datasets`' save_to_disk wrote directory `path` (a DatasetDict or a Dataset)."""
    return (path / "dataset_dict.json").is_file() or all(
        (path / f).is_file() for f in ("dataset_info.json", "state.json")
    )


def _check_path(cfg: KdcConfig, path: Path, fmt: str, field: str) -> None:
    """The format must fit the path: csv/tsv/jsonl/parquet/txt a file, an image folder a
    directory, and `datasets` a directory `datasets.load_from_disk` reads."""
    folder = fmt in ("imagefolder", "datasets")
    if folder == path.is_dir() and (fmt != "datasets" or _saved_dataset(path)):
        return
    if not folder:
        shards = " (or a directory of parquet shards)" if fmt == "parquet" else ""
        problem = "a directory"
        fix = f"point {field} to a {fmt} file{shards} or a glob of them, or set data.format: auto"
    elif fmt == "imagefolder":
        problem = "a file, not a folder laid out as <folder>/<class>/<image>"
        fix = f"point {field} to such a folder, or set data.format: auto for this file"
    else:
        problem = "not saved by save_to_disk (no dataset_dict.json, nor state.json)"
        fix = f"point {field} to one, or set data.format: imagefolder for a folder of images"
    raise UserError(
        f"format '{fmt}' cannot read {field} ({path}): it is {problem}",
        source=cfg.source_file,
        field="data.format",
        fix=fix,
    )


def _check_parquet(cfg: KdcConfig, files: list[Path], fmt: str, value: str, field: str) -> None:
    """A set data.format and the files a data path names (a folder's parquet shards, a glob's
    matches) must agree on parquet or text: a text format (csv, tsv, jsonl, txt) read parquet
    files as text; text files may be read as one another (a .txt file of CSV rows)."""
    for f in files:
        told = SUFFIX_FORMATS.get(f.suffix.lower())
        if told is not None and (told == "parquet") != (fmt == "parquet"):
            raise UserError(
                f"format '{fmt}' cannot read {field} ('{value}'): {f.name} is a {told} file",
                source=cfg.source_file,
                field="data.format",
                fix=f"set data.format: {told} or auto",
            )


def unlabelled_txt(source: str, field: str) -> UserError:
    """The error for a .txt file given to a classifier: it holds texts, one a line, no labels."""
    return UserError(
        "a .txt file holds texts (one a line) but no labels",
        source=source,
        field=field,
        fix="give a csv/tsv/jsonl/parquet file or a datasets directory with a text and a label "
        "column; a .txt file suits a sentence-embedding teacher",
    )


def channel_mismatch(want: int, got: int | str, basis: str) -> UserError:
    """The error for image data of `got` channels (or of shape `got`, e.g. "2-d") given to a
    teacher that takes `want`-channel images (as its `basis` says, e.g. config.json's
    num_channels)."""
    got = f"{got}-channel" if isinstance(got, int) else got
    settable = want in (1, 3)  # what data.channels reads an image folder as
    return UserError(
        f"the teacher takes {want}-channel images ({basis}) but the data are {got}",
        field="data.channels",
        fix=(f"set data.channels: {want} for an image folder, or " if settable else "")
        + "use a teacher trained on this data",
    )


def _hf_teacher_config(cfg: KdcConfig) -> Path | None:
    """The config.json of a teacher given as a Hugging Face directory, None for any other."""
    conf = cfg.resolve(cfg.teacher.path) / "config.json" if cfg.teacher.path else None
    return conf if conf is not None and conf.is_file() else None


def image_reading(cfg: KdcConfig) -> ImageReading:
    """How an image folder is read: as a Hugging Face image teacher's image processor reads
    images (kdc.image_processor; config.json's size, else ViTConfig's 224), else squares of
    `data.image_size` (224 unset) resized with Pillow's default bicubic filter."""
    conf = _hf_teacher_config(cfg)
    if cfg.task == "image-classification" and conf is not None:
        hf = read_config(conf.parent, "teacher.path")
        size, channels = hf.get("image_size", 224), hf.get("num_channels", 3)
        processor = read_processor(conf.parent, size, channels, hf.get("model_type"))
        return processor_reading(processor, size)
    side = cfg.data.image_size or DEFAULT_IMAGE_SIZE
    return ImageReading((side, side), (side, side))


def _read(cfg: KdcConfig, value: str, fmt: str, split: str) -> tuple:
    """(features, labels, the label column's declared class names or None) of data path
    `value` in format `fmt`; several files (a glob, parquet shards) are read in sorted order."""
    d = cfg.data
    label = None if cfg.task == "sentence-embedding" else d.label_column
    field = "data.eval" if split == "eval" else "data.source"
    path = cfg.resolve(value)
    if fmt == "sklearn" and d.source != "sklearn:digits":
        raise UserError(
            f"unknown built-in data '{d.source}'",
            source=cfg.source_file,
            field="data.source",
            fix="use 'sklearn:digits' or a path",
        )
    if fmt not in FILE_READERS and is_glob(value, cfg.base_dir):
        raise UserError(
            f"format '{fmt}' reads one directory, not a pattern ('{value}')",
            source=cfg.source_file,
            field=field,
            fix="give the directory itself",
        )
    files = [] if fmt == "sklearn" else [path]
    if fmt in FILE_READERS:
        files = data_files(value, cfg.base_dir, field, cfg.source_file)
    if files and not files[0].exists():
        raise UserError(
            "data not found",
            source=cfg.source_file,
            field=field,
            fix=f"check that {path} exists (paths are relative to the config)",
        )
    if fmt in FILE_READERS:
        _check_parquet(cfg, files, fmt, value, field)
    for f in files:
        _check_path(cfg, f, fmt, field)
    with _hub_root_named(cfg, value, field, fmt):
        _check_kind(cfg, path, fmt, field)
    if fmt == "txt" and label is not None:
        raise unlabelled_txt(str(path), field)
    if fmt in FILE_READERS:
        return read_files(files, fmt, d.text_column, label, field)
    readers = {
        "datasets": lambda: read_datasets(path, d.text_column, label, split, field),
        "imagefolder": lambda: _images(cfg, path, value, field),
        "sklearn": read_digits,
    }
    return (*readers[fmt](), None)


@contextmanager
def _hub_root_named(cfg: KdcConfig, value: str, field: str, fmt: str) -> Iterator[None]:
    """An image folder refused (not images, or the wrong kind of data) that is a Hub download's
    root, parquet shards in its subfolders, is refused as that, naming the folder to give
    (`refuse_nested`): looked for only then, as it lists every class folder."""
    try:
        yield
    except UserError:
        if fmt == "imagefolder" and cfg.data.format == "auto":
            refuse_nested(value, cfg.base_dir, field, cfg.source_file)
        raise


def _images(cfg: KdcConfig, path: Path, value: str, field: str) -> tuple:
    with _hub_root_named(cfg, value, field, "imagefolder"):
        return read_imagefolder(path, image_reading(cfg), field, cfg.data.channels)


def _split_sentences(texts: list[str]) -> list[str]:

    out = [s.strip() for t in texts for s in re.split(r"(?<=[.!?])\s+", t)]
    return [s for s in out if len(s.split()) >= 3]


def _upscale_note(cfg: KdcConfig, path: Path) -> list[str]:
    """A note where an image folder of one size is read at the 224 default (no data.image_size,
    no Hugging Face teacher's image processor): a CNN trained on 16x16 images scores chance at
    224."""
    if cfg.data.image_size or _hf_teacher_config(cfg) is not None:
        return []
    size = DEFAULT_IMAGE_SIZE
    # headers of a sample (the reader decodes every image after): enough to say "all one size"
    files = [f for fs in image_files(path).values() for f in fs]
    sizes = image_sizes({"": files[:: max(1, len(files) // 256)]}, "data.source")
    if len(sizes) != 1 or next(iter(sizes)) == (size, size):
        return []
    (w, h), *_ = sizes
    return [
        f"the images are {w}x{h}, read at {size}x{size} as data.image_size is unset: set "
        f"data.image_size: {max(w, h)} if the teacher was trained at their size"
    ]


def load_dataset(cfg: KdcConfig, teacher_names: list[str] | None = None) -> Dataset:
    """Read, encode labels and split (the eval file, a `datasets` directory's test/validation
    split, else `data.eval_fraction` held out); raise UserError on unusable data. Classes are
    in the order of the teacher's head when it names them (`teacher_names`, its id2label; a
    class the training split lacks is then allowed and noted), else an image folder's by
    folder name (`folder_order`) and other data's by `class_order`."""
    d = cfg.data
    src_path = cfg.resolve(d.source)
    fmt = _format(cfg, d.source, "data.source")
    feats, labels, declared = _read(cfg, d.source, fmt, "train")  # declared: a ClassLabel's
    field = label_field("image" if fmt in IMAGE_FORMATS else "text")
    # the file a clash is in, all its rows before any are held out (embeddings: no labels)
    check_spellings(labels, [], str(src_path), field)
    if fmt == "sklearn" and d.eval:
        raise UserError(
            f"{d.source} cannot be mixed with an eval file: its eval split is held out from it",
            source=cfg.source_file,
            field="data.eval",
            fix="remove data.eval (data.eval_fraction sets the held-out share)",
        )
    rng = np.random.default_rng(cfg.split_seed())
    label_col = None if cfg.task == "sentence-embedding" else d.label_column
    eval_name = None  # a `datasets` directory's labelled eval split
    if fmt == "datasets":
        eval_name, declared = datasets_layout(src_path, label_col)
    if d.eval:
        ev_fmt = _format(cfg, d.eval, "data.eval")
        ev_feats, ev_labels, ev_declared = _read(cfg, d.eval, ev_fmt, "eval")
        if {fmt, ev_fmt} <= set(FILE_READERS):  # files: none of data.eval's trained on
            check_disjoint(d.source, d.eval, cfg.base_dir, cfg.source_file)
        check_eval_classes(cfg, declared, ev_declared)
    elif eval_name:
        ev_feats, ev_labels, _ = _read(cfg, d.source, fmt, "test")
    else:
        n_eval = max(1, int(round(len(feats) * d.eval_fraction)))
        order = held_out_order(len(feats), labels, n_eval, rng)  # stratified by class
        # the eval rows first, then the training rows: both splits are slices (an image
        # array's views) of the features, reordered without a second copy
        feats, shuffled = permuted(feats, order), permuted(labels, order) if labels else []
        ev_feats, ev_labels = feats[:n_eval], shuffled[:n_eval]
        check_train_left(cfg, len(feats), len(feats) - n_eval, labels, shuffled[n_eval:])
        feats, labels = feats[n_eval:], shuffled[n_eval:]
    notes = _upscale_note(cfg, src_path) if fmt == "imagefolder" else []
    if fmt in FILE_READERS and not d.eval:
        notes += mixed_splits_note(d.source, cfg.base_dir)
    if cfg.task == "sentence-embedding":
        if d.split_sentences:
            feats, ev_feats = _split_sentences(feats), _split_sentences(ev_feats)
        names: list[str] = []
        y_tr = y_ev = np.zeros((0,), np.int64)
    else:
        check_spellings(labels, ev_labels, str(cfg.resolve(d.eval or d.source)), field)
        names = teacher_classes({*map(str, labels), *map(str, ev_labels)}, teacher_names)
        names = names or (
            folder_order(map(str, labels))
            if fmt == "imagefolder"
            else class_order(labels, declared)
        )
        if len(names) < 2:
            raise UserError(
                f"the training data has {len(names)} class(es)",
                source=str(src_path),
                field=field,
                fix="a classifier needs at least two classes in the labels",
            )
        index = {label_key(n): i for i, n in enumerate(names)}
        if unknown := unseen_labels(ev_labels, index, teacher_names):
            held = not d.eval and not eval_name  # eval rows held out of data.source
            why = (
                f" (data.eval_fraction {d.eval_fraction:g} held out all their rows)" if held else ""
            )
            raise UserError(
                f"eval labels not seen in training: {unknown[:5]}{why}",
                source=str(cfg.resolve(d.eval or d.source)),
                field="data.eval_fraction" if held else "data.eval",
                fix="give those classes more rows, or drop them"
                if held
                else "use the same class folder names in both folders"
                if fmt == "imagefolder"
                else "use the same label names in both files",
            )
        y_tr = np.array([index[label_key(x)] for x in labels], np.int64)
        y_ev = np.array([index[label_key(x)] for x in ev_labels], np.int64)
        in_train, in_eval = set(y_tr.tolist()), set(y_ev.tolist())
        if missing := [n for i, n in enumerate(names) if i not in in_train]:
            notes.append(
                f"the training split has no rows of class(es) {listed(missing)}: the student "
                "learns them from the teacher's outputs alone"
            )
        if unseen := [n for i, n in enumerate(names) if i not in in_eval]:
            notes.append(
                f"the eval split has no rows of class(es) {listed(unseen)}: accuracy and "
                "macro-F1 say nothing of them"
            )
    train, evs = Split(feats, y_tr), Split(ev_feats, y_ev)
    limited = bool(d.limit_train and len(train) > d.limit_train)
    if limited:
        train = train.take(rng.permutation(len(train))[: d.limit_train])
    if limited or (d.limit_eval and len(evs) > d.limit_eval):
        # one copy: a held-out view would keep every row read; each class's share of the rows
        n = min(len(evs), d.limit_eval or len(evs))
        head = stratified_head(evs.labels, n) if len(evs.labels) else np.arange(len(evs)) < n
        present, evs = set(evs.labels.tolist()), evs.take(np.flatnonzero(head))
        if left := sorted(present - set(evs.labels.tolist())):  # n below the classes' count
            notes.append(
                f"data.limit_eval {d.limit_eval} keeps fewer eval rows than the split's "
                f"{len(present)} classes: {len(left)} class(es) "
                f"({listed([names[i] for i in left])}) are left out, so accuracy and macro-F1 "
                f"say nothing of them; raise data.limit_eval to {len(present)} or more"
            )
    if len(train) == 0 or len(evs) == 0:
        raise UserError(
            "a split is empty",
            source=str(src_path),
            field="data.source",
            fix="provide more rows or lower data.eval_fraction",
        )
    kind = "image" if fmt in IMAGE_FORMATS else "text"
    notes += _repeated_rows_note(train, evs, kind)
    if kind == "image" and d.mean is not None:
        normalize(cfg, train, evs)
    source = d.source if fmt == "sklearn" else f"{fmt}:{d.source}"
    ds = Dataset(train, evs, names, kind, source, notes)
    return align_labels(ds, teacher_names, cfg.source_file)


REPEAT_SHARE = 0.01  # share of eval rows repeating a training row worth a note


def _row_key(row: str | tuple[str, str] | np.ndarray) -> object:
    """What makes two rows the same input: a text (or pair) up to runs of whitespace, an
    image's pixels (by digest: an image folder's pixels are not held twice)."""
    if isinstance(row, np.ndarray):
        return hashlib.blake2b(row.tobytes(), digest_size=16).digest()
    return (
        tuple(" ".join(t.split()) for t in row) if isinstance(row, tuple) else " ".join(row.split())
    )


def _repeated_rows_note(train: Split, evs: Split, kind: str) -> list[str]:
    """A note where `REPEAT_SHARE` or more of the eval rows repeat a training row (a file
    exported twice, duplicates across a split): accuracy on them is not held out."""
    seen = {_row_key(x) for x in train.features}
    n = sum(_row_key(x) in seen for x in evs.features)
    if not n or n < REPEAT_SHARE * len(evs):
        return []
    what = "image" if kind == "image" else "text"
    return [
        f"{n} of the {len(evs)} eval rows ({n / len(evs):.0%}) have the {what} of a training "
        "row: the models were trained on them, so the accuracies are not wholly held out; "
        "drop them from the eval data for a held-out figure"
    ]


def normalize(cfg: KdcConfig, *splits: Split) -> None:
    """Normalize image `splits` (N×C×H×W in [0, 1]) in place per channel by data.mean and
    data.std, as a CNN teacher trained with torchvision's Normalize reads them; a Hugging Face
    image teacher's processor normalizes instead, so the fields are refused there."""
    d = cfg.data
    if _hf_teacher_config(cfg) is not None:
        raise UserError(
            "data.mean and data.std normalize a CNN teacher's images; a Hugging Face image "
            "teacher's are normalized as its preprocessor_config.json says (image_mean/std)",
            source=cfg.source_file,
            field="data.mean",
            fix="remove data.mean and data.std",
        )
    mean = np.asarray(d.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(d.std, np.float32).reshape(1, -1, 1, 1)
    channels = splits[0].features.shape[1]
    if channels != mean.shape[1]:
        raise UserError(
            f"data.mean and data.std have {mean.shape[1]} value(s), the images {channels} "
            "channel(s)",
            source=cfg.source_file,
            field="data.mean",
            fix="give one value per channel (data.channels)",
        )
    for s in splits:  # the reader's arrays (or views of one), not held twice
        s.features -= mean
        s.features /= std
