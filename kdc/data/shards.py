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
    HELD_SPLITS,
    TRAIN_SPLITS,
    Rows,
    TextColumns,
    datasets_dir,
    read_delimited,
    read_jsonl,
    read_txt,
    subfolders,
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


# a name's words: split at `_`, `-`, `.`, spaces, a case change (drugsComTrain) or digits (val2017)
WORD = re.compile(r"[A-Z]+(?![^\W\d_A-Z])|[A-Z]?[^\W\d_A-Z]+")  # any other letter: lower case
# a name's runs of letters: split at `_`, `-`, `.`, digits, a version mark (`_v2`) read as digits
SEGMENT = re.compile(r"(?![vV]\d)[^\W\d_]+")
SPLIT_WORDS = frozenset(TRAIN_SPLITS + HELD_SPLITS)


def split_names(files: list[Path]) -> list[str | None]:
    """The split each file's path below the files' common folder gives (`_split_name`), or
    for a name with its split word inside (`imdb_train_clean.csv`) where a file beside it is
    named alike with another split word (`imdb_test_clean.csv`: `_parallel_splits`)."""
    depth = len(os.path.commonprefix(list({f.parts[:-1] for f in files})))
    named = [_split_name(f, depth) for f in files]
    parallel = _parallel_splits([f for f, n in zip(files, named, strict=True) if n is None])
    return [n or parallel.get(f) for f, n in zip(files, named, strict=True)]


def _parallel_splits(files: list[Path]) -> dict[Path, str]:
    """Files whose stems hold one split word each, anywhere, and are otherwise alike in one
    folder (`imdb_train_clean`, `imdb_test_clean`), by that word: names that differ in nothing
    else are splits of one data set, where `ab_test_results` beside `train` is not."""
    groups: dict[tuple[Path, str], dict[Path, str]] = {}
    for f in files:
        stem = Path(f.name).stem
        words = [m for m in WORD.finditer(stem) if m[0].lower() in SPLIT_WORDS]
        if len(words) == 1:
            key = (f.parent, f"{stem[: words[0].start()]}\0{stem[words[0].end() :]}".lower())
            groups.setdefault(key, {})[f] = words[0][0].lower()
    return {
        f: split
        for group in groups.values()
        if len(set(group.values())) > 1
        for f, split in group.items()
    }


def _split_name(path: Path, depth: int) -> str | None:
    """The one split a path's parts from `depth` on name (`_named_split`: its folders' names,
    its file's stem or a Hub shard's split), else a Hub shard's split
    (`unsupervised-00000-of-00001.parquet`); None for another path, or one naming two splits."""
    hub = HUB_SHARD.fullmatch(path.name)
    names = [*path.parts[depth:-1], hub["split"] if hub else Path(path.name).stem]
    named = {split for name in names if (split := _named_split(name))}
    if named:
        return named.pop() if len(named) == 1 else None
    return hub["split"] if hub else None


def _named_split(name: str) -> str | None:
    """The split word a name gives, as `datasets` infers splits from file and folder names
    though stricter: its only split word, at the start or end of its first or last segment
    (`train`, `imdb_test`, `reviews-validation`, `val2017`, `drugsComTrain_raw`, `test_set`;
    `imdb_test_v2`: a version mark is no segment, as digits are none);
    None inside a name (`ab_test_results`, `MyTESTData`) or a word (`contest`, `trainer_notes`),
    or for a name of two splits' words (`train_test_split`)."""
    named = {w.lower() for w in WORD.findall(name)} & SPLIT_WORDS
    if len(named) != 1:
        return None
    segments = SEGMENT.findall(name)
    ends = {WORD.findall(s)[i].lower() for s in segments[:1] + segments[-1:] for i in (0, -1)}
    return next(iter(named & ends), None)


def file_splits(files: list[Path]) -> dict[str, list[Path]]:
    """Files by the split their paths give (`split_names`); {} unless every file gives one."""
    found: dict[str, list[Path]] = {}
    for f, split in zip(files, split_names(files), strict=True):
        if split is None:
            return {}
        found.setdefault(split, []).append(f)
    return found


def _split_glob(files: list[Path]) -> str:
    """A pattern for one split's files: their names' (a Hub split's `<split>-*.parquet`, their
    one name, else their common start and end around `*`) in their folder, or under
    `**` of their folders' common one."""
    names = [f.name for f in files]
    hubs = {m["split"] if (m := HUB_SHARD.fullmatch(n)) else None for n in names}
    if len(hubs) == 1 and None not in hubs:
        name = f"{glob.escape(hubs.pop())}-*.parquet"
    elif len(set(names)) == 1:
        name = glob.escape(names[0])
    else:
        start = os.path.commonprefix(names)
        end = os.path.commonprefix([n[len(start) :][::-1] for n in names])[::-1]
        name = f"{glob.escape(start)}*{glob.escape(end)}"
    folders = {f.parent for f in files}
    folder = Path(glob.escape(os.path.commonpath(folders)))
    return str(folder / name if len(folders) == 1 else folder / "**" / name)


def split_value(files: list[Path], base: str | Path) -> str | None:
    """One split's files (paths relative to `base`) as a data path: the one file (not a Hub
    shard), else their pattern (`_split_glob`); None where that names other files too."""
    if len(files) == 1 and not HUB_SHARD.fullmatch(files[0].name):
        return str(files[0])
    value = _split_glob(files)
    named = {os.path.normpath(p) for p in shard_paths(value, base) or []}
    return value if named == {os.path.normpath(resolve_path(str(f), base)) for f in files} else None


def split_sources(files: list[Path], base: str | Path = ".") -> tuple[str, str | None] | None:
    """Of files named as several splits (a folder of Hub shards; a glob over `train.csv` and
    `eval.csv`, or `data/train/*.csv` and `data/test/*.csv`), the data paths (relative to
    `base`, as the files are) of the training split and of its test (else validation) split;
    None when they are one split's, hold no training split, or no data path names just one
    split's files."""
    splits = file_splits(files)
    picked = train_and_held(list(splits)) if len(splits) > 1 else None
    if picked is None:
        return None
    train = split_value(splits[picked[0]], base)
    held = picked[1] and split_value(splits[picked[1]], base)
    return (train, held) if train and (held or not picked[1]) else None


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
    splits = list(file_splits(found))
    if not is_glob(value, base) and len(splits) > 1:
        as_given = [Path(value) / f.name for f in found]  # a folder's files
        train, held = split_sources(as_given, base) or (
            str(Path(value) / "<split>-*.parquet"),
            None,
        )
        example = held if held and field == "data.eval" else train
        also = f", and data.eval: {held}" if held and field == "data.source" else ""
        raise UserError(
            f"{value} holds the parquet shards of several splits ({listed(splits)})",
            source=source,
            field=field,
            fix=f"give one split's shards as {field}, e.g. {example}{also}",
        )
    return found


def shard_folders(path: Path) -> list[Path]:
    """The folders one or two levels below folder `path` that hold parquet files (hidden ones
    passed over), in name order: a Hub download's `data/`, `<config>/` or `<config>/<split>/`."""
    return [
        d
        for sub in subfolders(path)
        for d in (sub, *subfolders(sub))
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
    """A note where a data.source glob reads several splits' files (`data/*.parquet` over the Hub
    shards of train and test; `data/*.csv` over train.csv and eval.csv) or a held-out split's
    beside others, and no data.eval is given: they are trained on as one, and the eval rows are
    held out of that mixture."""
    files = (shard_paths(value, base) or []) if is_glob(value, base) else []
    names = set(split_names(files))
    named = sorted(n for n in names if n)
    held = [n for n in named if n.lower() in HELD_SPLITS]
    if len(named) < 2 and not (held and None in names):
        return []
    others = " and other files" if None in names else ""
    return [
        f"data.source '{value}' reads the files of the splits {listed(named)}{others} as one "
        "training set, with data.eval_fraction of it held out; to train on one split and score "
        "another, give each split's files as data.source and data.eval"
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
