"""A dataset's classes: their order (declared, by index value, by name), how they match the
teacher's head by name, and the checks that train and eval name them alike."""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

from kdc.config import KdcConfig
from kdc.data.base import Dataset, Split
from kdc.errors import UserError, listed

INDEX = r"-?\d+(\.0+)?"  # a class index as data holds it: 3, or 3.0 (pandas after a NaN)


def class_order(labels: list, declared: list[str] | None = None) -> list[str]:
    """Class names in index order: the data's declared order (a `datasets` ClassLabel), else
    integer labels by value (`2` before `10`, also written `2.0`), else names A→Z. A teacher
    whose head has generic names (LABEL_0 …) is read in this order."""
    present = {str(x) for x in labels}
    if declared and present <= set(declared):
        return list(declared)
    if all(re.fullmatch(INDEX, n) for n in present):
        return sorted(present, key=float)
    return sorted(present)


def folder_order(names: Iterable[str]) -> list[str]:
    """An image folder's class names in index order: by name, `10` before `2`, as torchvision's,
    `datasets`' and Keras's ImageFolder readers index class folders (a CNN trained by one has
    its outputs in this order), whatever `class_order` makes of numbered names."""
    return sorted(set(names))


def label_key(name: object) -> str:
    return str(name).strip().casefold()


def _by_index(name: object) -> bool:
    """A class name that stands for its index: `LABEL_3`, `3`."""
    return re.fullmatch(f"(label_)?{INDEX}", label_key(name)) is not None


def label_field(kind: str) -> str:
    """The config field that gives data of `kind` ("text" or "image") its classes."""
    return "data.source" if kind == "image" else "data.label_column"


def teacher_order(
    names: list[str], teacher_names: list[str], source: str, field: str, data: str = ""
) -> list[int] | None:
    """Each of the data's class `names`' index in the teacher's head, matched by name (case and
    spaces aside); None where either side's names are generic (LABEL_0 …) or class indices (the
    data's sorted order is then the head's). A different count, or names that do not match, is
    a UserError naming `field` (and the `data` file, where `source` is the config)."""
    data = f" (in {data})" if data else ""
    if len(teacher_names) != len(names):
        raise UserError(
            f"the teacher has {len(teacher_names)} labels {teacher_names[:6]} but the "
            f"data has {len(names)} {names[:6]}{data}",
            source=source,
            field=field,
            fix="use the data the teacher was trained on, or its label column",
        )
    key = {label_key(n): i for i, n in enumerate(teacher_names)}
    if set(key) == {label_key(n) for n in names}:
        return [key[label_key(n)] for n in names]
    if all(_by_index(n) for n in teacher_names) or all(_by_index(n) for n in names):
        return None
    raise UserError(
        f"the data's labels {names[:6]}{data} are not the teacher's {teacher_names[:6]} "
        "(its config.json id2label), so no class can be matched to its output",
        source=source,
        field=field,
        fix="rename the data's labels to the teacher's, or give the teacher's id2label the "
        "data's names",
    )


def index_note(names: list[str], teacher_names: list[str]) -> list[str]:
    """A note where the data's class indices (`1`, `2`, `3`) are taken as a named teacher's
    classes in order, unless they are its indices `0 … n-1` (no note needed)."""
    named = not all(_by_index(n) for n in teacher_names)  # so the data's are indices
    given = named and [float(re.sub("^label_", "", label_key(n))) for n in names]
    if not given or given == list(range(len(teacher_names))):
        return []
    pairs = [f"{d} → {t}" for d, t in zip(names, teacher_names, strict=True)]
    return [
        f"the data's labels {listed(names)} are taken as the teacher's classes "
        f"in index order: {listed(pairs)}"
    ]


def align_labels(ds: Dataset, teacher_names: list[str] | None, source: str) -> Dataset:
    """Order class indices as the teacher's head does (by name) when the teacher names them."""
    if not teacher_names or not ds.label_names:
        return ds
    data = ds.source.partition(":")[2] or ds.source  # `csv:data/train.csv` → the file
    order = teacher_order(ds.label_names, teacher_names, source, label_field(ds.kind), data)
    if order is None:
        ds.notes += index_note(ds.label_names, teacher_names)
        return ds
    remap = np.array(order, np.int64)
    return Dataset(
        Split(ds.train.features, remap[ds.train.labels]),
        Split(ds.eval.features, remap[ds.eval.labels]),
        list(teacher_names),
        ds.kind,
        ds.source,
        ds.notes,
    )


def teacher_classes(present: set[str], teacher_names: list[str] | None) -> list[str] | None:
    """The teacher's class names, when they are names (not LABEL_0 …) and every label of the
    data is one of them (case and spaces aside); else None."""
    if not teacher_names or all(_by_index(n) for n in teacher_names):
        return None
    keys = {label_key(n) for n in teacher_names}
    if len(keys) < len(teacher_names) or not {label_key(p) for p in present} <= keys:
        return None
    return list(teacher_names)


def unseen_labels(
    ev_labels: list, index: dict[str, int], teacher_names: list[str] | None
) -> list[str]:
    """Eval labels without a class index: those the teacher does not name either, where there
    are any (a class it names needs no training rows, once the others are its names too)."""
    unseen = sorted({str(x) for x in ev_labels if label_key(x) not in index})
    named = {label_key(n) for n in teacher_names or []}
    return [x for x in unseen if label_key(x) not in named] or unseen


def check_spellings(labels: list, ev_labels: list, source: str, field: str) -> None:
    """Labels that differ only in case or surrounding spaces (`Positive`, `positive`) would be
    two classes: refused, naming them."""
    spellings: dict[str, set[str]] = {}
    for x in (*labels, *ev_labels):
        spellings.setdefault(label_key(x), set()).add(str(x))
    clashes = [" / ".join(sorted(v)) for v in spellings.values() if len(v) > 1]
    if clashes:
        raise UserError(
            f"labels {listed(clashes, 5)} differ only in case or spaces, so they would count as "
            "different classes",
            source=source,
            field=field,
            fix="write each class one way throughout the data (train and eval)",
        )


def check_eval_classes(
    cfg: KdcConfig, declared: list[str] | None, ev_declared: list[str] | None
) -> None:
    """Training and eval files that both declare their label column's class names (a `datasets`
    ClassLabel, each file's integer labels read as its own names) must name the same classes
    (case and spaces aside; in any order): a UserError naming both files and the names that
    differ."""
    if declared is None or ev_declared is None:
        return
    keys, ev_keys = {label_key(n) for n in declared}, {label_key(n) for n in ev_declared}
    only_eval = [n for n in ev_declared if label_key(n) not in keys]
    only_train = [n for n in declared if label_key(n) not in ev_keys]
    if not only_eval and not only_train:
        return
    d = cfg.data
    differ = [
        f"only {f} names {listed(n, 6)}"
        for f, n in ((d.eval, only_eval), (d.source, only_train))
        if n
    ]
    raise UserError(
        f"its ClassLabel names for '{d.label_column}' differ from those of "
        f"{cfg.resolve(d.source)}: " + "; ".join(differ),
        source=str(cfg.resolve(d.eval or "")),
        field="data.eval",
        fix="give the eval split of the training data's dataset, whose classes are the same",
    )


# the eval split data.eval_fraction holds out: 3, stratified by class, each class of two or more
# rows holding out one where there is room (2: a small class's share could round to none; 1: the
# seed's permutation's first rows); runs that hold it out hash it (`kdc.fingerprint`), so a
# resume trains on the new one
HELD_OUT_VERSION = 3


def held_out_order(n_rows: int, labels: list, n_eval: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices, the `n_eval` held-out rows first, then the training rows, each in the seed's
    shuffled order: each class's share of `n_eval` (`stratified_head` of the permutation, a class
    of two or more rows keeping one to train on), as scikit-learn's
    `train_test_split(stratify=labels)` draws it; unlabelled rows (`labels` empty) the first
    `n_eval` of the permutation."""
    order = rng.permutation(n_rows)
    if not labels:
        return order
    held = stratified_head(np.array([label_key(labels[i]) for i in order]), n_eval, keep=1)
    return np.concatenate([order[held], order[~held]])


def stratified_head(labels: np.ndarray, n: int, keep: int = 0) -> np.ndarray:
    """Which of the rows of `labels` (in their order) are kept when `n` are: each class's first
    rows, as many as its share of `n` (rounded down, the rows left to the largest remainders,
    ties to the class the rows reach first), and at least one of each class of more than `keep`
    rows while a larger share can give it one (the largest, of equal shares the one rounded up
    most). Draws the held-out split (`held_out_order`, `keep` 1: a class's only row is trained
    on) and cuts the eval split to data.limit_eval."""
    _, first, y = np.unique(labels, return_index=True, return_inverse=True)
    y = np.argsort(np.argsort(first))[y.ravel()]  # classes numbered as the rows reach them
    counts = np.bincount(y)
    share, rest = np.divmod(n * counts, len(y))
    share[np.argsort(-rest, kind="stable")[: n - share.sum()]] += 1
    for c in np.flatnonzero((share == 0) & (counts > keep)):  # classes rounded to no rows
        donors = np.flatnonzero(share > 1)
        if not len(donors):
            break
        over = share[donors] * len(y) - n * counts[donors]  # how far rounding raised each
        share[donors[np.lexsort((-over, -share[donors]))[0]]] -= 1
        share[c] = 1
    rank = np.empty(len(y), np.int64)  # each row's place among its class's
    rank[np.argsort(y, kind="stable")] = np.arange(len(y)) - np.repeat(
        counts.cumsum() - counts, counts
    )
    return rank < share[y]


def check_train_left(
    cfg: KdcConfig, n_rows: int, n_train: int, labels: list, train_labels: list
) -> None:
    """What `data.eval_fraction` leaves of `n_rows` to train on must be some rows, and (for a
    classifier) two classes where the data has two or more."""
    classes, kept = {str(x) for x in labels}, {str(x) for x in train_labels}
    if n_train and len(kept) >= min(2, len(classes)):
        return
    f = cfg.data.eval_fraction
    raise UserError(
        f"the training split is empty: data.eval_fraction {f:g} holds out all {n_rows} row(s)"
        if not n_train
        else f"the training split has {n_train} row(s) of {len(kept)} of the data's "
        f"{len(classes)} classes: data.eval_fraction {f:g} holds out {n_rows - n_train} of "
        f"the {n_rows} rows",
        source=cfg.source_file,
        field="data.eval_fraction",
        fix="lower data.eval_fraction, give more rows, or give an eval file as data.eval",
    )
