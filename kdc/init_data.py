"""`kdc init`'s look at the data: its kind, text and label columns, classes and a max_length
for the config it writes (`kdc/init.py` looks at the teacher and writes the config)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdc.config import MIN_IMAGE_SIZE
from kdc.data import SUFFIX_FORMATS, refuse_text_folder, unlabelled_txt
from kdc.data.images import image_files, image_sizes, split_folders
from kdc.data.labels import class_order, folder_order
from kdc.data.parquet import parquet_table
from kdc.data.readers import (
    HELD_SPLITS,
    TRAIN_SPLITS,
    datasets_dir,
    datasets_layout,
    delimited_records,
    json_objects,
    read_datasets,
    separator_fix,
    subfolders,
)
from kdc.data.shards import (
    data_files,
    file_splits,
    mixed_splits_note,
    read_files,
    refuse_nested,
    shard_paths,
    split_sources,
    split_value,
)
from kdc.errors import UserError, listed

if TYPE_CHECKING:
    from kdc.init import TeacherInfo

MAX_ROWS = 20_000  # rows read to guess columns and labels
MAX_LABELS = 100  # more distinct values than this is not a label column


@dataclass
class LeftOut:
    """One split's files that `--data` matched and the written config does not read."""

    split: str  # the split their names were taken for
    files: list[str]
    why: str  # for the config's comment too: no path
    fix: str = ""  # what to set instead, paths as --data gave them


@dataclass
class DataInfo:
    """What `kdc init` learnt about the data."""

    source: str  # as given: a path, or sklearn:digits
    kind: str  # text | image
    rows: int | None = None
    text_column: str | list[str] | None = None  # two for text pairs
    label_column: str | None = None
    labels: list[str] = field(default_factory=list)
    max_length: int | None = None
    eval_split: str | None = None  # a `datasets` directory's split that evaluation reads
    eval_source: str | None = None  # an image folder's test split folder (`data/test`)
    image_size: int | None = None  # an image folder's images' one size (square, at least 8)
    files: int = 1  # the files `source` names (a glob, a folder of parquet shards)
    max_length_note: str = ""  # what share of rows max_length covers, for the config comment
    notes: list[str] = field(default_factory=list)  # what matching it to the teacher assumed
    left_out: list[LeftOut] = field(default_factory=list)  # matched files the config does not read


def _read_csv(path: Path, delimiter: str) -> list[dict]:
    """The first rows as compress's reader parses them (quoting, BOM, malformed rows)."""
    records = delimited_records(path, delimiter, "--data")[: MAX_ROWS + 1]
    header = records[0][1] if records else []
    return [dict(zip(header, rec, strict=False)) for _, rec in records[1:]]


READERS: dict[str, Callable[[Path], list[dict]]] = {
    ".csv": lambda p: _read_csv(p, ","),
    ".tsv": lambda p: _read_csv(p, "\t"),
    ".jsonl": lambda p: json_objects(p, "--data", MAX_ROWS),
    ".json": lambda p: json_objects(p, "--data", MAX_ROWS),
    ".parquet": lambda p: parquet_table(p, "--data").slice(0, MAX_ROWS).to_pylist(),
}


def _text_len(values: list[Any]) -> float:
    texts = [v for v in values if isinstance(v, str) and not _numeric(v)]
    return sum(map(len, texts)) / len(values) if texts else 0.0


def _numeric(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def _max_length(texts: list[str], limit: int | None) -> tuple[int, str]:
    """A token budget covering ~95 % of rows (words × 1.5), a power of two in [16, 512] within
    the teacher's positions (`limit`), and the config comment saying what share of rows fit."""
    counts = sorted(len(t.split()) for t in texts)
    p95 = counts[int(0.95 * (len(counts) - 1))] if counts else 0
    n = 16
    while n < 512 and n < 1.5 * p95 + 2:
        n *= 2
    n = min(n, limit or 512)
    fits = sum(1.5 * c + 2 <= n for c in counts) / len(counts) if counts else 1.0
    capped = " (the teacher's max_position_embeddings)" if limit == n and fits < 0.95 else ""
    return n, f"tokens{capped}; ~{fits:.0%} of rows fit (at ~1.5 tokens a word), longer are cut"


def _table_data(files: list[Path], source: str, teacher: TeacherInfo) -> DataInfo:
    """The columns, labels and rows of a table file, or of several (`source` a glob or a folder
    of parquet shards), read in order."""
    suffixes = sorted({f.suffix.lower() for f in files})
    reader = READERS.get(suffixes[0]) if len(suffixes) == 1 else None
    if reader is None:
        raise UserError(
            f"cannot read '{'/'.join(suffixes)}' files" + " together" * (len(suffixes) > 1),
            source=source,
            field="--data",
            fix=f"use {', '.join(READERS)} (one of them), an image folder or sklearn:digits",
        )
    rows: list[dict] = []
    for f in files:  # the first MAX_ROWS rows, to guess columns and labels from
        rows += reader(f)[: MAX_ROWS - len(rows)]
        if len(rows) >= MAX_ROWS:
            break
    info = _read_all(files, _rows_data(source, rows, teacher))
    info.files = len(files)
    return info


def _datasets_rows(path: Path, limit: int = 5000) -> list[dict]:
    """The first `limit` rows of a `datasets` directory's train split (or its only one)."""
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError:
        raise UserError(
            "the 'datasets' package is not installed",
            source=str(path),
            field="--data",
            fix="pip install 'kdc[datasets]'",
        ) from None
    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    return [dict(r) for r in ds.select(range(min(limit, len(ds))))]


# Column pairs a classifier reads as text pairs (GLUE, SNLI/MNLI, QQP, BoolQ, reranking data).
PAIR_COLUMNS = [
    ("sentence1", "sentence2"),
    ("premise", "hypothesis"),
    ("question1", "question2"),
    ("question", "sentence"),
    ("question", "passage"),
    ("question", "answer"),
    ("query", "passage"),
    ("query", "document"),
    ("text_a", "text_b"),
    ("text1", "text2"),
]


def _pair_columns(values: dict[str, list[Any]]) -> list[str] | None:
    """A known pair of text columns of the table (PAIR_COLUMNS), both holding text."""
    return next(
        ([a, b] for a, b in PAIR_COLUMNS if all(_text_len(values.get(c, [])) for c in (a, b))),
        None,
    )


def _rows_data(path: Path | str, rows: list[dict], teacher: TeacherInfo) -> DataInfo:
    """The text and label columns of table rows (a classifier's text pair where the table has a
    known pair of text columns, else the longest-text column; the label column with the
    teacher's number of classes, else the one with fewest; none for an embedding teacher), and
    a max_length for the texts."""
    columns = list(rows[0]) if rows else []
    embedding = teacher.task == "sentence-embedding"  # texts only: no label column
    if not rows or len(columns) < (1 if embedding else 2):
        raise UserError(
            f"{len(rows)} rows, columns {columns}",
            source=str(path),
            field="--data",
            fix=separator_fix(columns)
            or f"give a header with a text{'' if embedding else ' and a label'} column, and some "
            "rows",
        )
    values = {c: [r.get(c) for r in rows] for c in columns}
    text = max(columns, key=lambda c: _text_len(values[c]))
    if embedding:
        if _text_len(values[text]) == 0:  # numbers and blanks only
            raise UserError(
                f"no text column (columns {columns})",
                source=str(path),
                field="--data",
                fix="give a column of texts",
            )
        return _texts_data(path, [str(v or "") for v in values[text]], teacher, text)
    distinct = {c: sorted({str(v).strip() for v in values[c]}) for c in columns if c != text}
    usable = [c for c, d in distinct.items() if 2 <= len(d) <= MAX_LABELS]
    pair = _pair_columns(values)
    if pair and all(c in pair for c in usable):  # its second column is the labels (yes/no)
        pair = None
    text_cols = pair or [text]
    usable = [c for c in usable if c not in text_cols]
    if _text_len(values[text]) == 0 or not usable:
        raise UserError(
            f"no text column with a label column beside it (columns {columns})",
            source=str(path),
            field="--data",
            fix="give a column of texts and one of class labels (2 or more values)",
        )
    label = next(
        (c for c in usable if len(distinct[c]) == teacher.num_labels),
        min(usable, key=lambda c: len(distinct[c])),
    )
    texts = [" ".join(str(r.get(c) or "") for c in text_cols) for r in rows]
    n, note = _max_length(texts, teacher.max_positions)
    return DataInfo(
        str(path), "text", len(rows), pair or text, label, distinct[label], n, max_length_note=note
    )


def _read_all(files: list[Path], info: DataInfo, declared: list[str] | None = None) -> DataInfo:
    """`info` with the row count and classes of every row of its columns in `files` (a
    `datasets` directory, or table files), read by compress's readers (a blank text or label,
    or a row without one, is its error naming the line); classes in compress's order
    (`declared`: a ClassLabel's names)."""
    text, label = info.text_column or "", info.label_column
    if files[0].is_dir():
        texts, labels = read_datasets(files[0], text, label, "train", "--data")
    else:
        fmt = SUFFIX_FORMATS[files[0].suffix.lower()]
        texts, labels, names = read_files(files, fmt, text, label, "--data")
        declared = declared or names
    info.rows = len(texts)
    info.labels = class_order(labels, declared) if label else []
    return info


def _texts_data(
    path: Path, texts: list[str], teacher: TeacherInfo, column: str | None = None
) -> DataInfo:
    """Unlabelled texts (an embedding teacher's data) from a table's `column` or a text file."""
    n, note = _max_length(texts, teacher.max_positions)
    return DataInfo(str(path), "text", len(texts), column, max_length=n, max_length_note=note)


def _file_data(files: list[Path], source: str, teacher: TeacherInfo) -> DataInfo:
    """A data file, or several alike: texts one a line (.txt, an embedding teacher's), else a
    table (`_table_data` refuses files of several formats, a .txt among them)."""
    if {f.suffix.lower() for f in files} != {".txt"}:
        return _table_data(files, source, teacher)
    if teacher.task != "sentence-embedding":
        raise unlabelled_txt(source, "--data")
    texts = read_files(files, "txt", "", None, "--data")[0]
    info = _texts_data(Path(source), texts[:MAX_ROWS], teacher)
    info.files = len(files)
    return info


def _shards_data(data: str, shards: list[Path], teacher: TeacherInfo) -> DataInfo:
    """A split given as several files (a glob, a folder of parquet shards); of files named as
    several splits (a folder of Hub shards, a glob over `train.csv` and `eval.csv`), the
    training split's, its test (else validation) split's then being the eval data; a glob
    that mixes splits otherwise is noted, as compress notes it."""
    picked = split_sources(shards)
    source = picked[0] if picked else data
    info = _file_data(data_files(source, ".", "--data", None), source, teacher)
    info.eval_source = picked[1] if picked else None
    info.notes += [] if picked else mixed_splits_note(data, ".")
    if picked:
        read = {p.resolve() for v in picked if v for p in data_files(v, ".", "--data", None)}
        splits = file_splits(shards)
        used = [s for s, fs in splits.items() if fs[0].resolve() in read]
        _note_left_out(info, f"--data '{data}' matches", _left_out(splits, used))
    return info


def _note_left_out(info: DataInfo, given: str, left_out: list[LeftOut]) -> None:
    """`info` with the splits' files the config does not read, each noted: what --data `given`
    (`--data 'data/*.csv' matches`), which split's, why, and what to set instead."""
    info.left_out = left_out
    for lo in left_out:
        info.notes.append(
            f"{given} {listed(lo.files)}, taken for split '{lo.split}', which the config does "
            f"not read: {lo.why}" + (f"; {lo.fix}" if lo.fix else "")
        )


def _left_out(splits: dict[str, list[Path]], used: list[str]) -> list[LeftOut]:
    """Of files or folders by the split their names give, each split's that the config reads
    neither as data.source nor as data.eval (`used`: those it reads): a held-out split beside
    the one taken as data.eval (validation beside test; `valid_notes.csv`), a second training
    split (`training_notes.csv` beside `train.csv`), another split (a Hub download's
    `unsupervised`)."""
    train = next(s for s in used if s.lower() in TRAIN_SPLITS)
    held = next((s for s in used if s.lower() in HELD_SPLITS), None)
    out = []
    for split, fs in splits.items():
        if split in used:
            continue
        names = [str(f) for f in fs]
        if split.lower() in HELD_SPLITS:
            why = f"kdc evaluates on one held-out split, and init took '{held}' as data.eval"
            value = split_value(fs, ".") or names[0]
            fix = f"to evaluate on '{split}' instead, set data.eval: {value}"
        elif split.lower() in TRAIN_SPLITS:
            why = f"a second training split beside '{train}' (data.source)"
            fix = (  # image split folders: no pattern names several
                "to train on both, give data.source a pattern that names them all"
                if fs[0].is_file()
                else f"to train on '{split}' instead, set data.source: {names[0]}"
            )
        else:
            why, fix = f"'{split}' is neither a training nor a held-out split", ""
        out.append(LeftOut(split, names, why, fix))
    return out


def _image_data(path: Path) -> DataInfo:
    """The classes of an image folder as compress reads it (hidden folders skipped; an empty
    one, or a file that is not an image, refused), and its images' size where all are one
    square size that data.image_size can take."""
    files = image_files(path, "--data")
    sizes = image_sizes(files, "--data")
    classes = folder_order(files)
    if len(classes) < 2:
        raise UserError(
            f"{len(classes)} class folder(s)",
            source=str(path),
            field="--data",
            fix="lay images out as <folder>/<class>/<image>, two classes or more",
        )
    (width, height), *others = sizes
    one = width if not others and width == height and width >= MIN_IMAGE_SIZE else None
    return DataInfo(
        str(path), "image", sum(map(len, files.values())), labels=classes, image_size=one
    )


def inspect_data(data: str, teacher: TeacherInfo) -> DataInfo:
    """Columns, labels and a max_length for csv/tsv/jsonl/parquet or a `datasets` directory;
    classes of an image folder."""
    if data == "sklearn:digits":
        return DataInfo(data, "image", 1797, labels=[str(i) for i in range(10)])
    if (shards := shard_paths(data)) is not None:
        return _shards_data(data, shards, teacher)
    path = Path(data)
    if not path.exists():
        raise UserError("data not found", source=data, field="--data", fix="check the path")
    if datasets_dir(path):
        info = _rows_data(path, _datasets_rows(path), teacher)
        info.eval_split, declared = datasets_layout(path, info.label_column)
        return _read_all([path], info, declared)
    if not path.is_dir():
        return _file_data([path], data, teacher)
    refuse_nested(data, ".", "--data", data, splits_ok=True)  # a Hub download's root
    refuse_text_folder(path, data, "--data")
    given = f"--data '{data}' holds"
    if splits := split_folders(path):  # `data/`: `data/train/<class>`, `data/test/<class>`
        path = path / splits[0]
    else:  # `data/train` beside `data/test`
        splits = split_folders(path.parent)
        splits = splits if splits and splits[0] == path.name else None
        given = f"--data '{data}' is beside"
    info = _image_data(path)
    if splits:
        info.eval_source = splits[1] and str(path.parent / splits[1])
        folders = {d.name: [d] for d in subfolders(path.parent)}
        _note_left_out(info, given, _left_out(folders, [s for s in splits if s]))
    return info
