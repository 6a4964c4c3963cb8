"""Readers that turn a data source into (features, labels) lists, one per format."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any, NoReturn

from kdc.config import as_columns
from kdc.errors import UserError, listed

Rows = tuple[list, list]
TextColumns = str | list[str]  # one text column, or two whose rows are text pairs


def separator_fix(header: list[str]) -> str | None:
    """The fix for a one-column header that holds another delimiter (a ';'-separated file read
    as CSV), else None."""
    if len(header) != 1 or not (other := next((d for d in ";|\t" if d in header[0]), None)):
        return None
    return (
        f"the header looks {other!r}-separated: save the file comma-separated (CSV) or "
        "tab-separated (.tsv)"
    )


def table_columns(
    rows: list[tuple[int, dict]],
    path: Path,
    text_col: TextColumns,
    label_col: str | None,
    field: str,
    unit: str = "line",
) -> Rows:
    """Texts (pairs of texts, as tuples, for two text columns) and labels of (line number, row)
    pairs; a row without a text or label key, or with a blank, null or nested text or label, is
    a UserError naming its `unit` ("line", or "row"), and how many more there are."""
    if not rows:
        raise UserError(
            "no rows",
            source=str(path),
            field=field,
            fix="give a file with a header and at least one row",
        )
    text_cols = as_columns(text_col)
    wanted = [*((c, "data.text_column") for c in text_cols), (label_col, "data.label_column")]
    keys = set(rows[0][1])
    for col, col_field in wanted:
        if col is not None and col not in keys:
            raise UserError(
                f"column '{col}' not found (columns: {', '.join(sorted(keys))})",
                source=str(path),
                field=col_field,
                fix=separator_fix(list(keys)) or "name an existing column",
            )
    texts, labels, bad = [], [], []
    for n, row in rows:
        try:
            for col, col_field in wanted:
                if col is not None and col not in row:
                    raise UserError(
                        f"{unit} {n} has no '{col}'",
                        source=str(path),
                        field=col_field,
                        fix=f"give every {unit} a '{col}', or drop that {unit}",
                    )
            pair = tuple(str(_cell(row[c], path, f"{unit} {n}", "text")) for c in text_cols)
            label = _cell(row[label_col], path, f"{unit} {n}", "label") if label_col else None
        except UserError as e:
            bad.append((n, e))
            continue
        texts.append(pair[0] if len(pair) == 1 else pair)
        if label_col:
            labels.append(label.strip() if isinstance(label, str) else label)
    if bad:
        raise _unusable(bad, unit)
    return texts, labels


def _unusable(bad: list[tuple[int, UserError]], unit: str) -> UserError:
    """The first unusable row's error, saying how many more there are and where (a file with
    many blank cells is mended at once, not a row a run)."""
    (_, first), more = bad[0], [n for n, _ in bad[1:]]
    if not more:
        return first
    return UserError(
        f"{first.message}; {len(more)} more {unit}(s) lack a usable text or label too: "
        f"{listed(more, 5)}",
        source=first.source,
        field=first.field,
        fix=f"fill in or drop each of those {unit}s",
    )


def _cell(value: object, path: Path, where: str, kind: str) -> object:
    """A row's text or label (`kind`), bytes read as UTF-8 (parquet's binary strings): one that
    is blank, null, a list/object or bytes of no text is a UserError naming data.<kind>_column."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            _bad_cell(f"is binary, not UTF-8 text ({value[:20]!r})", path, where, kind)
    if value is None or isinstance(value, str) and not value.strip():
        problem = "is blank" if value is not None else "is null"
    elif isinstance(value, list | dict):  # nested parquet values may hold bytes or datetimes
        problem = f"is not a single value ({json.dumps(value, default=str)[:40]})"
    else:
        return value
    _bad_cell(problem, path, where, kind)


def _bad_cell(problem: str, path: Path, where: str, kind: str) -> NoReturn:
    raise UserError(
        f"the {kind} at {where} {problem}",
        source=str(path),
        field=f"data.{kind}_column",
        fix=f"fill in that row's {kind}, or drop the row",
    )


QUOTING_FIX = (
    "put a field that holds the delimiter, a quote or a line break in double quotes, "
    'with each quote inside it doubled ("")'
)


@contextmanager
def _any_field_size() -> Iterator[None]:
    """The csv module without its 128 KiB field limit (a long document is a text, not a quoting
    error), restored after."""
    before = csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        yield
    finally:
        csv.field_size_limit(before)


@_any_field_size()
def delimited_records(path: Path, delimiter: str, field: str) -> list[tuple[int, list[str]]]:
    """(first line number, fields) of each non-blank record. Parsed leniently (`"good" film`
    reads as Excel does), then every record over several lines, and the last one, strictly: a
    quote left open (read to the end of the file) or closed in the wrong place (rows merged
    silently) is a UserError naming its line, as is a record the csv module cannot parse."""
    kind = "CSV" if delimiter == "," else "TSV"
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's "CSV UTF-8"
            lines = f.readlines()
    except UnicodeDecodeError:
        raise _not_utf8(path, field) from None
    reader = csv.reader(lines, delimiter=delimiter)
    records, spans, start = [], [], 1
    try:
        for rec in reader:
            if rec:
                records.append((start, rec))
                spans.append(reader.line_num + 1 - start)
            start = reader.line_num + 1
    except csv.Error as e:
        raise UserError(
            f"malformed {kind}: the row at line {start} cannot be read ({e})",
            source=str(path),
            field=field,
            fix=f"check that row's quotes; {QUOTING_FIX}",
        ) from None
    for i, ((line, _), span) in enumerate(zip(records, spans, strict=True)):
        if span == 1 and i < len(records) - 1:
            continue
        try:
            next(csv.reader(lines[line - 1 : line - 1 + span], delimiter=delimiter, strict=True))
        except csv.Error as e:
            problem = (
                "is never closed"
                if "end of data" in str(e)
                else f"closes in the wrong place, {span} lines on ({e})"
            )
            raise UserError(
                f"malformed {kind}: a quote in the row at line {line} {problem}",
                source=str(path),
                field=field,
                fix=f"close it where the field ends; {QUOTING_FIX}",
            ) from None
    return records


def _fit(rec: list[str], width: int, needed: int) -> list[str] | None:
    """`rec` at the header's `width`: trailing empty fields dropped, missing trailing ones empty
    (spreadsheets write both); None where that would drop a value or leave a column up to index
    `needed` (the text and label columns) without one."""
    if any(x.strip() for x in rec[width:]) or len(rec) <= needed:
        return None
    return rec[:width] + [""] * (width - len(rec))


def read_delimited(
    path: Path,
    text_col: TextColumns,
    label_col: str | None,
    delimiter: str,
    field: str = "data.source",
) -> Rows:
    """Texts and labels of a CSV/TSV with a header row; a row may lack trailing fields after the
    text and label columns, or carry empty ones, but not hold more values than the header."""
    records = delimited_records(path, delimiter, field)
    header = records[0][1] if records else []
    needed = max(
        (header.index(c) for c in (*as_columns(text_col), label_col) if c in header), default=-1
    )
    rows = []
    for line, rec in records[1:]:
        fitted = _fit(rec, len(header), needed)
        if fitted is None:
            raise UserError(
                f"malformed {'CSV' if delimiter == ',' else 'TSV'}: line {line} has {len(rec)} "
                f"field(s), the header has {len(header)}",
                source=str(path),
                field=field,
                fix=separator_fix(header)
                or f"give every row the header's {len(header)} fields; {QUOTING_FIX}",
            )
        rows.append((line, dict(zip(header, fitted, strict=True))))
    return table_columns(rows, path, text_col, label_col, field)


def _not_utf8(path: Path, field: str) -> UserError:
    """The error for a file that is not UTF-8, naming its first bad bytes by line and offset in
    the file (a text stream's UnicodeDecodeError counts from the chunk it was decoding)."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
        where = ""  # it changed since it failed to read
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        where = f" at line {line} (byte {e.start}: {raw[e.start : e.end]!r})"
    return UserError(
        f"not UTF-8{where}", source=str(path), field=field, fix="save the file as UTF-8"
    )


def _lines(path: Path, field: str) -> list[str]:
    try:
        # -sig: a BOM skipped; not splitlines: JSON may hold U+2028
        return path.read_text(encoding="utf-8-sig").split("\n")
    except UnicodeDecodeError:
        raise _not_utf8(path, field) from None


JSON_FIX = "one JSON object per line (JSON Lines), or a JSON array of objects"


def json_objects(path: Path, field: str = "data.source", limit: int | None = None) -> list[dict]:
    """The objects of a JSON Lines file (of its first `limit` lines, read as a stream; blank
    lines skipped) or of a JSON array (`[{...}, ...]`, pandas' `orient="records"`); a line or
    item that is not a JSON object is a UserError naming `field`."""
    return [row for _, row in _numbered_objects(path, field, limit)[0]]


def _numbered_objects(
    path: Path, field: str, limit: int | None
) -> tuple[list[tuple[int, dict]], str]:
    """(number, object) pairs of a JSON Lines file or a JSON array (see json_objects), and what
    the numbers count: "line" or "item"."""
    try:
        with open(path, encoding="utf-8-sig") as f:  # a BOM skipped; splits on newlines only
            if f.read(256).lstrip().startswith("["):
                f.seek(0)
                return _array_objects(path, f.read(), field, limit), "item"
            f.seek(0)
            return _line_objects(path, f, field, limit), "line"
    except UnicodeDecodeError:
        raise _not_utf8(path, field) from None


def _line_objects(path: Path, f: Iterable[str], field: str, limit: int | None) -> list:
    """JSON Lines; a file that is one JSON object (over several lines, or on one line holding a
    list of objects: `{"rows": [{...}, ...]}`) is a UserError saying what is expected."""
    rows = []
    for i, line in enumerate(islice(f, limit), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            whole = None if rows else _whole_json(path)
            if isinstance(whole, dict):
                raise _one_object(path, field, whole) from None
            raise UserError(
                f"line {i} is not JSON", source=str(path), field=field, fix=JSON_FIX
            ) from None
        rows.append((i, _object(row, path, field, f"line {i}")))
    if len(rows) == 1 and any(_holds_objects(v) for v in rows[0][1].values()):
        raise _one_object(path, field, rows[0][1])
    return rows


def _holds_objects(value: object) -> bool:
    """Whether `value` is a list of JSON objects (rows nested under a key)."""
    return isinstance(value, list) and bool(value) and all(isinstance(x, dict) for x in value)


def _whole_json(path: Path) -> object:
    """The file read as one JSON document; None where it is not one."""
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError:
        return None


def _one_object(path: Path, field: str, obj: dict) -> UserError:
    return UserError(
        "expected a JSON array of objects (or JSON Lines), not one JSON object "
        f"(keys: {', '.join(list(obj)[:5])})",
        source=str(path),
        field=field,
        fix="give the rows themselves: [{...}, ...], or one object per line",
    )


def _array_objects(path: Path, text: str, field: str, limit: int | None) -> list:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(
            f"not valid JSON ({e.msg} at line {e.lineno})",
            source=str(path),
            field=field,
            fix=JSON_FIX,
        ) from None
    return [(i, _object(x, path, field, f"item {i}")) for i, x in enumerate(items[:limit], 1)]


def _object(row: object, path: Path, field: str, where: str) -> dict:
    if not isinstance(row, dict):
        raise UserError(
            f"{where} is not a JSON object", source=str(path), field=field, fix=JSON_FIX
        )
    return row


def read_jsonl(
    path: Path, text_col: TextColumns, label_col: str | None, field: str = "data.source"
) -> Rows:
    rows, unit = _numbered_objects(path, field, None)
    return table_columns(rows, path, text_col, label_col, field, unit)


def read_txt(path: Path, field: str = "data.source") -> Rows:
    texts = [ln.strip() for ln in _lines(path, field) if ln.strip()]
    if not texts:
        raise UserError("no text lines", source=str(path), field=field, fix="one text per line")
    return texts, []


def read_datasets(
    path: Path,
    text_col: TextColumns,
    label_col: str | None,
    split: str,
    field: str = "data.source",
) -> Rows:
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError:
        raise UserError(
            "the 'datasets' package is not installed",
            source=str(path),
            field=field,
            fix="pip install 'kdc[datasets]'",
        ) from None
    ds, name = load_from_disk(str(path)), None
    if isinstance(ds, DatasetDict):
        name = eval_split(ds, label_col, split) if split != "train" else "train"
        if name not in ds:
            wanted = "train" if split == "train" else "labelled test or validation"
            raise UserError(
                f"no {wanted} split (splits: {', '.join(ds)})",
                source=str(path),
                field=field,
                fix=f"save a DatasetDict with a {wanted} split, or point data.source (and "
                f"data.eval) at split folders, e.g. {path / next(iter(ds), 'train')}",
            )
        ds = ds[name]
    rows = [
        (i, dict(zip(ds.column_names, vals, strict=True)))
        for i, vals in enumerate(zip(*(ds[c] for c in ds.column_names), strict=True))
    ]
    where = f"{path} (split '{name}')" if name else str(path)  # which split of a DatasetDict
    try:
        texts, labels = table_columns(rows, path, text_col, label_col, field, unit="row")
    except UserError as e:
        raise UserError(e.message, source=where, field=e.field, fix=e.fix) from None
    feat = ds.features.get(label_col) if label_col else None
    if feat is not None and hasattr(feat, "names"):  # a ClassLabel
        labels = class_label_names(labels, list(feat.names), where, first=0)
    return texts, labels


def class_label_names(labels: list, names: list[str], where: str, first: int = 1) -> list:
    """A ClassLabel column's integers as its `names` (rows numbered from `first`); -1 (no
    label) or another integer out of range is a UserError naming the row. Labels that are not
    integers (the column rewritten with the names, the schema's ClassLabel kept) stay as read."""
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in labels):
        return labels
    bad = next((n for n, i in enumerate(labels) if not 0 <= i < len(names)), None)
    if bad is not None:
        raise UserError(
            f"row {bad + first} has label {labels[bad]}, not one of the {len(names)} classes"
            + (" (ClassLabel -1: no label)" if labels[bad] == -1 else ""),
            source=where,
            field="data.label_column",
            fix="drop the unlabelled rows, or label them",
        )
    return [names[i] for i in labels]


def _labelled(part: Any, label_col: str | None) -> bool:
    """Whether a split has labels: the label column, and not a ClassLabel column of -1s only
    (GLUE's test splits)."""
    if label_col and label_col not in part.column_names:
        return False
    feat = part.features.get(label_col) if label_col else None
    if feat is None or not hasattr(feat, "names") or not len(part):
        return True
    return max(part[label_col]) >= 0


def eval_split(ds: Any, label_col: str | None, first: str = "test") -> str | None:
    """The split of a DatasetDict that evaluation reads: the first labelled one of `first`,
    `validation` and `test`; None where none is (eval rows are then held out from train)."""
    names = (first, "validation", "test")
    return next((n for n in names if n in ds and _labelled(ds[n], label_col)), None)


def datasets_dir(path: Path) -> bool:
    """Whether `path` is a directory `datasets` saved (a DatasetDict or a Dataset)."""
    return (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file()


def datasets_layout(path: Path, label_col: str | None) -> tuple[str | None, list[str] | None]:
    """Of a `datasets` directory: its eval split's name (None: not a DatasetDict or no labelled
    `test` / `validation` split), and its label column's declared class names in index order (a
    ClassLabel)."""
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(path))  # memory-mapped: cheap to open again
    split = eval_split(ds, label_col) if isinstance(ds, DatasetDict) else None
    first = next(iter(ds.values())) if isinstance(ds, DatasetDict) else ds
    feat = first.features.get(label_col) if label_col else None
    return split, list(feat.names) if hasattr(feat, "names") else None


def visible(p: Path) -> bool:
    """Not hidden (.ipynb_checkpoints, .DS_Store) nor private (__MACOSX), as Hugging Face's
    imagefolder skips them."""
    return not p.name.startswith((".", "__"))


def subfolders(path: Path) -> list[Path]:
    """The visible folders in folder `path`, in name order."""
    return sorted(p for p in path.iterdir() if p.is_dir() and visible(p))


TRAIN_SPLITS = ("train", "training")
# preferred first: test's names, then validation's, as Hugging Face `datasets` groups them
HELD_SPLITS = ("test", "testing", "eval", "evaluation", "validation", "val", "valid", "dev")


def train_and_held(names: list[str]) -> tuple[str, str | None] | None:
    """Of a dataset's split names, the training split's and its test (else validation) split's;
    None without a training split (test and validation only: neither is for training)."""
    train = next((n for n in names if n.lower() in TRAIN_SPLITS), None)
    if train is None:
        return None
    held = [n for n in names if n.lower() in HELD_SPLITS and n != train]
    held.sort(key=lambda n: HELD_SPLITS.index(n.lower()))
    return train, held[0] if held else None
