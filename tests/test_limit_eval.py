"""data.limit_eval keeps each class's share of the eval rows (`labels.stratified_head`), not the
split's first rows; the stages that read those rows hash the cut's version, so a resume of a run
that took the first rows reads the new ones."""

from __future__ import annotations

from collections import Counter

from test_data_loading import cnn_cfg, csv_file
from tiny import bert_config, write_yaml

from kdc.config import load_config
from kdc.data import load_dataset
from kdc.pipeline import _stages


def test_limit_eval_keeps_each_classs_share_of_an_eval_file_sorted_by_class(tmp_path):
    """30 neg, 15 pos and 5 mixed rows in that order, 10 kept: the first 10 would all be neg;
    6, 3 and 1 are, each class's first rows, in the file's order."""
    labels = ["neg"] * 30 + ["pos"] * 15 + ["mixed"] * 5
    csv_file(
        tmp_path / "eval.csv",
        "text,label\n" + "".join(f"film {i},{y}\n" for i, y in enumerate(labels)),
    )
    train = "".join(f"review {i},{y}\n" for i, y in enumerate(labels))
    csv_file(tmp_path / "train.csv", "text,label\n" + train)
    cfg = bert_config(data={"source": "train.csv", "eval": "eval.csv", "limit_eval": 10})
    ds = load_dataset(load_config(write_yaml(tmp_path / "model.yaml", cfg)))
    assert Counter(ds.label_names[i] for i in ds.eval.labels) == {"neg": 6, "pos": 3, "mixed": 1}
    kept = [f"film {i}" for i in (0, 1, 2, 3, 4, 5, 30, 31, 32, 45)]
    assert list(ds.eval.features) == kept


def _cut(tmp_path, counts: dict[str, int], limit: int):
    """An eval file of `counts` rows per class (a training file of the same), cut to `limit`."""
    labels = [y for y, n in counts.items() for _ in range(n)]
    for name in ("train", "eval"):
        rows = "".join(f"{name} {i},{y}\n" for i, y in enumerate(labels))
        csv_file(tmp_path / f"{name}.csv", "text,label\n" + rows)
    cfg = bert_config(data={"source": "train.csv", "eval": "eval.csv", "limit_eval": limit})
    return load_dataset(load_config(write_yaml(tmp_path / "model.yaml", cfg)))


def test_limit_eval_keeps_a_row_of_a_class_whose_share_rounds_to_none(tmp_path):
    """49 neg, 49 pos, 2 mixed, 10 kept: mixed's share (0.2) rounds to none; it keeps one row,
    taken from the largest share (5 and 5: the first class's), and nothing is warned."""
    ds = _cut(tmp_path, {"neg": 49, "pos": 49, "mixed": 2}, 10)
    assert Counter(ds.label_names[i] for i in ds.eval.labels) == {"neg": 4, "pos": 5, "mixed": 1}
    assert not [n for n in ds.notes if "limit_eval" in n]


def test_limit_eval_below_the_classes_count_warns_of_those_left_out(tmp_path):
    ds = _cut(tmp_path, {"neg": 10, "pos": 10, "mixed": 10}, 2)
    assert len(ds.eval) == 2
    [note] = [n for n in ds.notes if "limit_eval" in n]
    assert "data.limit_eval 2" in note and "1 class(es) (mixed)" in note
    assert "raise data.limit_eval to 3 or more" in note and "\n" not in note


def test_a_held_out_split_cut_to_limit_eval_keeps_each_classs_share(tmp_path):
    ds = load_dataset(cnn_cfg(tmp_path, eval_fraction=0.5, limit_eval=100))
    assert len(ds.eval) == 100
    assert set(Counter(ds.eval.labels.tolist()).values()) <= {9, 10, 11}


def _cut_by(cfg: dict, tmp_path) -> set[str]:
    c = load_config(write_yaml(tmp_path / "model.yaml", cfg))
    return {s.name for s in _stages() if "eval_cut" in s.versions(c)}


def test_the_stages_reading_cut_eval_rows_hash_the_cut(tmp_path):
    """Export (its parity rows) and verify; for a text classifier also the latency predictions'
    padding: search's, and distill's when it prunes to a latency. A run without limit_eval, or
    an embedding teacher's (no classes), hashes as before."""
    limited = {"source": "train.csv", "eval": "test.csv", "limit_eval": 10}
    text = bert_config(data=limited)
    assert _cut_by(text, tmp_path) == {"search", "export", "verify"}
    pruned = {**text, "prune": {"enabled": True, "target_latency_ms": 1.0}}
    assert _cut_by(pruned, tmp_path) == {"search", "distill", "export", "verify"}
    assert _cut_by(bert_config(), tmp_path) == set()
    assert _cut_by({**text, "task": "sentence-embedding"}, tmp_path) == set()
    image = cnn_cfg(tmp_path, limit_eval=200)
    assert {s.name for s in _stages() if "eval_cut" in s.versions(image)} == {"export", "verify"}
