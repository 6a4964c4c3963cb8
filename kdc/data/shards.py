"""A data path that names several files: a glob (`data/train-*.parquet`, `reviews/*.csv`) or a
directory of parquet shards (a Hugging Face dataset's split as the Hub serves it:
`data/train-00000-of-00003.parquet` …), read in sorted order and concatenated."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable
from pathlib import Path

from kdc.config import resolve_path
from kdc.data.parquet import parquet_classes, read_parquet
from kdc.data.readers import (
    Rows,
    TextColumns,
    datasets_dir,
    read_delimited,
    read_jsonl,
    read_txt,
    train_and_held,
    visible,
)
from kdc.errors import UserError, listed

# a Hub shard's name: <split>-<index>-of-<count>.parquet
HUB_SHARD = re.compile(r"(?P<split>.+)-\d+-of-\d+\.parquet", re.IGNORECASE)

# the formats a data path of several files may have: each file read alone, rows concatenated
FILE_READERS: dict[str, Callable[[Path, TextColumns, str | None, str], Rows]] = {
    "csv": lambda p, text, label, field: read_delimited(p, text, label, ",", field),
    "tsv": lambda p, text, label, field: read_delimited(p, text, label, "\t", field),
    "jsonl": read_jsonl,
    "parquet": read_parquet,
    "txt": lambda p, text, label, field: read_txt(p, field),
}


def is_glob(value: str, base: str | Path = ".") -> bool:
    """Whether a data path (relative to `base`) is a pattern (`*`, `?` or `[...]`) rather than
    one path: a file or folder that exists under that name (`data[1].csv`, `images [v2]/`) is
    itself."""
    return any(c in value for c in "*?[") and not resolve_path(value, base).exists()


def shard_paths(value: str, base: str | Path = ".") -> list[Path] | None:
    """The files a data path (relative to `base`) names when it names several, in sorted order:
    a glob's matching files, or a directory's parquet files (not a saved `datasets` directory);
    None where it names one path (a file, or a folder another reader takes)."""
    given, path = Path(value).expanduser(), resolve_path(value, base)
    if is_glob(value, base):
        pattern = str(given) if given.is_absolute() else os.path.join(glob.escape(str(base)), given)
        return sorted(Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not path.is_dir() or datasets_dir(path):
        return None
    shards = [p for p in path.iterdir() if p.suffix.lower() == ".parquet" and visible(p)]
    return sorted(p for p in shards if p.is_file()) or None


def hub_splits(files: list[Path]) -> dict[str, list[Path]]:
    """Hub shards (`train-00000-of-00002.parquet`) by split; {} unless every file is one."""
    found: dict[str, list[Path]] = {}
    for f in files:
        if not (m := HUB_SHARD.fullmatch(f.name)):
            return {}
        found.setdefault(m["split"], []).append(f)
    return found


def split_patterns(directory: str, files: list[Path]) -> tuple[str, str | None] | None:
    """Of a directory of several splits' Hub shards, the globs of its training split and of its
    test (else validation) split; None when it holds one split's, or no training split."""
    splits = list(hub_splits(files))
    picked = train_and_held(splits) if len(splits) > 1 else None
    if picked is None:
        return None
    train, held = picked
    folder = glob.escape(directory)  # `hub[1]/data` matched as itself

    def pattern(split: str) -> str:
        return str(Path(folder) / f"{glob.escape(split)}-*.parquet")

    return pattern(train), held and pattern(held)


def data_files(value: str, base: str | Path, field: str, source: str | None) -> list[Path]:
    """The files a data path names (`shard_paths`, else the path itself); a glob that matches no
    file, or a directory of several splits' shards, is a UserError naming `field` (in the config
    `source`)."""
    found = shard_paths(value, base)
    if found is None:
        return [resolve_path(value, base)]
    if not found:
        base_is = "the working directory" if (source or "<").startswith("<") else "the config"
        raise UserError(
            f"no file matches '{value}'",
            source=source,
            field=field,
            fix=f"check the pattern (relative to {base_is}; `**` matches across folders)",
        )
    splits = list(hub_splits(found))
    if not is_glob(value, base) and len(splits) > 1:
        train, held = split_patterns(value, found) or (str(Path(value) / "<split>-*.parquet"), None)
        example = held if held and field == "data.eval" else train
        also = f", and data.eval: {held}" if held and field == "data.source" else ""
        raise UserError(
            f"{value} holds the parquet shards of several splits ({listed(splits)})",
            source=source,
            field=field,
            fix=f"give one split's shards as {field}, e.g. {example}{also}",
        )
    return found


def _subfolders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and visible(p))


def shard_folders(path: Path) -> list[Path]:
    """The folders one or two levels below folder `path` that hold parquet files (hidden ones
    passed over), in name order: a Hub download's `data/`, `<config>/` or `<config>/<split>/`."""
    return [
        d
        for sub in _subfolders(path)
        for d in (sub, *_subfolders(sub))
        if any(f.suffix.lower() == ".parquet" and f.is_file() for f in d.iterdir())
    ]


def refuse_nested(
    value: str, base: str | Path, field: str, source: str | None, *, splits_ok: bool = False
) -> None:
    """A folder that holds no parquet file itself but parquet shards in subfolders (a Hub
    download's root, which was taken for an image folder) is a UserError naming the folder (or
    the training split's, and the test split's as data.eval) to give, or, unless the caller
    reads a folder of several splits' Hub shards (`splits_ok`: kdc init), each split's glob;
    nothing where no subfolder holds parquet files."""
    path = resolve_path(value, base)
    found = {d.name: Path(value) / d.relative_to(path) for d in shard_folders(path)}
    if not found:
        return
    picked = train_and_held(list(found)) if len(found) > 1 else None
    if picked is None:  # one folder (or none named as a split), maybe of several splits' shards
        first = next(iter(found.values()))
        if not splits_ok:
            data_files(str(first), base, field, source)  # names each split's glob
        picked = (first.name, None)
    train, held = found[picked[0]], picked[1] and found[picked[1]]
    also = f", and data.eval: {held}" if held and field == "data.source" else ""
    raise UserError(
        f"{value} holds no parquet file itself, but its subfolders do "
        f"({listed(list(found.values()), 4)})",
        source=source,
        field=field,
        fix=f"give {field} as {train}{also}",
    )


def check_disjoint(source: str, evals: str, base: str | Path, config: str | None) -> None:
    """A file that data.eval names and data.source names too (a glob `data/*.parquet` over a Hub
    download's test shards beside its train ones; one file given as both) is a UserError: its
    rows would be trained on, then scored as held out."""
    train = {p.resolve() for p in data_files(source, base, "data.source", config)}
    shared = [p for p in data_files(evals, base, "data.eval", config) if p.resolve() in train]
    if shared:
        raise UserError(
            f"{shared[0].name} is read by data.source ('{source}') too: its rows would be "
            "trained on, then evaluated as held out",
            source=config,
            field="data.eval",
            fix="narrow data.source to the training files (a Hub download's: "
            "<folder>/train-*.parquet), or remove data.eval to hold out data.eval_fraction",
        )


def mixed_splits_note(value: str, base: str | Path) -> list[str]:
    """A note where a data.source glob reads the Hub shards of several splits (`data/*.parquet`
    over train and test) and no data.eval is given: they are trained on as one, and the eval
    rows are held out of that mixture."""
    files = shard_paths(value, base) if is_glob(value, base) else None
    splits = sorted(hub_splits(files or []))
    if len(splits) < 2:
        return []
    return [
        f"data.source '{value}' reads the shards of the splits {listed(splits)} as one training "
        "set, with data.eval_fraction of it held out; to train on one split and score another, "
        "give each split's glob as data.source and data.eval"
    ]


def read_files(
    files: list[Path], fmt: str, text_col: TextColumns, label_col: str | None, field: str
) -> tuple[list, list, list[str] | None]:
    """Texts and labels of every file (of `fmt`: FILE_READERS) in order, concatenated, and for
    parquet the label column's ClassLabel names (in index order), which every shard must give
    alike: a shard that differs is a UserError naming it."""
    texts: list = []
    labels: list = []
    for f in files:
        t, lab = FILE_READERS[fmt](f, text_col, label_col, field)
        texts += t
        labels += lab
    return texts, labels, _agreed_classes(files, label_col, field) if fmt == "parquet" else None


def _agreed_classes(files: list[Path], label_col: str | None, field: str) -> list[str] | None:
    """The parquet shards' ClassLabel names (read already), the same in every shard."""
    first = parquet_classes(files[0], label_col)
    for f in files[1:]:
        names = parquet_classes(f, label_col)
        if names != first:
            raise UserError(
                f"its ClassLabel names for '{label_col}' ({listed(names or ['none'], 6)}) are "
                f"not those of {files[0].name} ({listed(first or ['none'], 6)})",
                source=str(f),
                field=field,
                fix="give shards of one dataset split, whose label column's classes agree",
            )
    return first
