"""Parquet files (a Hugging Face dataset's split as the Hub stores it, or pandas' to_parquet) read
as tables of text and label columns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdc.data.readers import Rows, TextColumns, class_label_names, table_columns
from kdc.errors import UserError, first_line


def parquet_classes(path: Path, label_col: str | None) -> list[str] | None:
    """The label column's class names in index order where the file says them: a Hugging Face
    `datasets` parquet file (what the Hub serves) keeps its features, a ClassLabel's names among
    them, in the schema's `huggingface` metadata."""
    import pyarrow.parquet as pq  # read_parquet read the file first, so both are there

    return _class_names(pq.read_schema(path), label_col)


def _class_names(schema: Any, label_col: str | None) -> list[str] | None:
    meta = (schema.metadata or {}).get(b"huggingface")
    try:
        feature = json.loads(meta)["info"]["features"][label_col] if meta and label_col else {}
    except (ValueError, KeyError, TypeError):
        return None
    names = feature.get("names") if isinstance(feature, dict) else None
    return list(names) if isinstance(names, list) else None


def parquet_table(path: Path, field: str = "data.source") -> Any:
    """The pyarrow Table of a parquet file; a missing pyarrow or an unreadable file is a
    UserError naming `field`."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(
            "reading parquet needs pyarrow, which is not installed",
            source=str(path),
            field=field,
            fix="pip install 'kdc[datasets]'",
        ) from None
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise UserError(
            f"cannot read parquet: {first_line(e)}",
            source=str(path),
            field=field,
            fix="give a parquet file (pandas' or datasets' to_parquet), or set data.format",
        ) from None
    return table


def read_parquet(
    path: Path, text_col: TextColumns, label_col: str | None, field: str = "data.source"
) -> Rows:
    """Texts and labels of a parquet file (a Hugging Face dataset's split as the Hub stores it:
    integer labels of a ClassLabel read as its names, -1 refused as no label; labels written
    as the names themselves are kept)."""
    table = parquet_table(path, field)
    rows = list(enumerate(table.to_pylist(), start=1))
    texts, labels = table_columns(rows, path, text_col, label_col, field, unit="row")
    names = _class_names(table.schema, label_col)
    return texts, class_label_names(labels, names, str(path)) if names else labels
