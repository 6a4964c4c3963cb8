"""Files named as dataset splits (`train.csv` beside `eval.csv`, Hub shards) under one glob or
folder: `kdc init` writes the training split's as data.source and the held-out split's as
data.eval; compress notes a data.source glob that trains on them as one."""

from __future__ import annotations

import pytest
from test_data_loading import ROWS, csv_file, text_cfg

from kdc.data import load_dataset
from kdc.errors import UserError
from kdc.init import TeacherInfo
from kdc.init_data import inspect_data


def _splits(root, *names: str) -> None:
    (root / "data").mkdir()
    for name in names:
        csv_file(root / "data" / name, "text,label\n" + ROWS)


@pytest.mark.parametrize("held", ["eval.csv", "test.csv", "validation.csv", "dev.csv"])
def test_init_splits_a_glob_over_train_and_a_held_out_split(tmp_path, monkeypatch, held):
    """`--data 'data/*.csv'` over train.csv and eval.csv was read as one training set."""
    monkeypatch.chdir(tmp_path)
    _splits(tmp_path, "train.csv", held)
    info = inspect_data(
        "data/*.csv", TeacherInfo("huggingface", tmp_path, "text-classification", 2)
    )
    assert (info.source, info.eval_source) == ("data/train.csv", f"data/{held}")
    assert (info.rows, info.files, info.notes) == (20, 1, [])


def test_init_prefers_test_to_validation_and_notes_a_mix_it_cannot_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _splits(tmp_path, "train.csv", "validation.csv", "test.csv")
    teacher = TeacherInfo("huggingface", tmp_path, "text-classification", 2)
    assert inspect_data("data/*.csv", teacher).eval_source == "data/test.csv"
    csv_file(tmp_path / "data" / "extra.csv", "text,label\n" + ROWS)  # not a split's name
    info = inspect_data("data/*.csv", teacher)
    assert (info.source, info.eval_source, info.files) == ("data/*.csv", None, 4)
    (note,) = info.notes
    assert "reads the files of the splits test, train, validation and other files as one" in note


def test_a_folder_of_split_named_parquet_files_names_each_split(tmp_path):
    """A folder of train.parquet and test.parquet was read as one split, as Hub shards are not."""
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d").mkdir()
    for name in ("train", "test"):
        pq.write_table(
            pa.table({"text": ["a b", "c d"], "label": ["x", "y"]}),
            tmp_path / "d" / f"{name}.parquet",
        )
    with pytest.raises(UserError, match="d holds the parquet shards of several splits") as e:
        load_dataset(text_cfg(tmp_path, source="d"))
    assert e.value.fix == (
        "give one split's shards as data.source, e.g. d/train.parquet, "
        "and data.eval: d/test.parquet"
    )


def test_compress_notes_a_glob_that_trains_on_an_eval_file(tmp_path):
    """compress keeps reading such a glob as one training set (a merge may be meant), noted."""
    _splits(tmp_path, "train.csv", "eval.csv")
    ds = load_dataset(text_cfg(tmp_path, source="data/*.csv", eval_fraction=0.25))
    (note,) = [n for n in ds.notes if "splits" in n]
    assert "data.source 'data/*.csv' reads the files of the splits eval, train as one" in note
    for data in ({"eval_fraction": 0.25}, {"eval": "data/eval.csv"}):
        ds = load_dataset(text_cfg(tmp_path, source="data/train.csv", **data))
        assert not [n for n in ds.notes if "splits" in n]
