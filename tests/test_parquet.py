"""Parquet data (what the Hugging Face Hub serves a dataset as, and pandas writes): columns read
as from CSV, a `datasets` file's ClassLabel integers as its names; bad files are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_data_loading import text_cfg
from typer.testing import CliRunner

from kdc.cli import app
from kdc.data import load_dataset
from kdc.errors import UserError

datasets = pytest.importorskip("datasets")


def _hub_split(path: Path, n: int, labels: list[int] | None = None) -> Path:
    """A split as the Hub stores it: a parquet file whose schema keeps the ClassLabel."""
    features = datasets.Features(
        {
            "premise": datasets.Value("string"),
            "hypothesis": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
        }
    )
    rows = {
        "premise": [f"a man plays {i}" for i in range(n)],
        "hypothesis": [f"someone plays {i}" for i in range(n)],
        "label": labels or [i % 3 for i in range(n)],
    }
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


def test_hub_parquet_pairs_with_class_names(tmp_path):
    _hub_split(tmp_path / "train.parquet", 30)
    _hub_split(tmp_path / "test.parquet", 9)
    cfg = text_cfg(
        tmp_path,
        source="train.parquet",
        eval="test.parquet",
        text_column=["premise", "hypothesis"],
    )
    ds = load_dataset(cfg)
    assert ds.source == "parquet:train.parquet"
    assert ds.label_names == ["entailment", "neutral", "contradiction"]  # ClassLabel order
    assert (len(ds.train), len(ds.eval)) == (30, 9)
    assert ds.train.features[1] == ("a man plays 1", "someone plays 1")
    assert ds.train.labels[:3].tolist() == [0, 1, 2]


def test_pandas_parquet_with_string_labels(tmp_path):
    pd = pytest.importorskip("pandas")
    rows = {"text": [f"film {i}" for i in range(20)], "label": ["neg", "pos"] * 10}
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    ds = load_dataset(text_cfg(tmp_path, source="d.parquet", eval_fraction=0.25))
    assert ds.label_names == ["neg", "pos"] and (len(ds.train), len(ds.eval)) == (15, 5)


def test_bad_parquet_files_are_named(tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(UserError, match="cannot read parquet") as e:
        load_dataset(text_cfg(tmp_path, source="broken.parquet"))
    assert e.value.field == "data.source" and "broken.parquet" in e.value.source
    _hub_split(tmp_path / "unlabelled.parquet", 6, labels=[0, 1, 2, -1, 0, 1])
    with pytest.raises(UserError, match="row 4 has label -1") as e:
        load_dataset(text_cfg(tmp_path, source="unlabelled.parquet", text_column="premise"))
    assert e.value.field == "data.label_column"
    with pytest.raises(UserError, match="column 'text' not found") as e:
        load_dataset(text_cfg(tmp_path, source="unlabelled.parquet"))
    assert e.value.field == "data.text_column"


def test_init_reads_parquet(bert_project, tmp_path):
    pd = pytest.importorskip("pandas")
    import csv

    with open(bert_project.parent / "train.csv") as f:
        rows = list(csv.DictReader(f))
    pd.DataFrame(
        {"review": [r["text"] for r in rows], "stars": [r["label"] for r in rows]}
    ).to_parquet(tmp_path / "reviews.parquet")
    out = tmp_path / "m.yaml"
    res = CliRunner().invoke(
        app,
        [
            "init",
            str(bert_project.parent / "teacher"),
            "--data",
            str(tmp_path / "reviews.parquet"),
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "text 'review'" in res.output and "labels 'stars'" in res.output
    plan = CliRunner().invoke(app, ["compress", str(out), "--dry-run"])
    assert plan.exit_code == 0, plan.output


def test_labels_rewritten_as_names_keep_their_classlabel_order(tmp_path):
    """A Hub split whose label column was rewritten with the class names by pyarrow (the
    schema's ClassLabel kept): the names are read as written, in the ClassLabel's order (it
    crashed comparing them with integers)."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pq.read_table(_hub_split(tmp_path / "hub.parquet", 9))
    names = ["entailment", "neutral", "contradiction"]
    relabelled = table.set_column(2, "label", pa.array([names[i % 3] for i in range(9)]))
    pq.write_table(relabelled, tmp_path / "names.parquet")
    cfg = text_cfg(tmp_path, source="names.parquet", text_column=["premise", "hypothesis"])
    ds = load_dataset(cfg)
    assert ds.label_names == names


def test_binary_and_nested_parquet_cells(tmp_path):
    """Binary strings (parquet without the UTF8 annotation) are read as text, not as "b'...'";
    a nested cell holding bytes or dates (an image struct) is a one-line error, not a crash."""
    pa = pytest.importorskip("pyarrow")
    import datetime

    import pyarrow.parquet as pq

    rows = [f"film {i}".encode() for i in range(20)]
    pq.write_table(pa.table({"text": rows, "label": [b"neg", b"pos"] * 10}), tmp_path / "b.parquet")
    ds = load_dataset(text_cfg(tmp_path, source="b.parquet", eval_fraction=0.25))
    assert ds.label_names == ["neg", "pos"] and "film 1" in [*ds.train.features, *ds.eval.features]
    for name, text in (
        ("img.parquet", [{"bytes": b"\x89PNG", "path": None}] * 4),
        ("dates.parquet", [[datetime.date(2020, 1, 1)]] * 4),
        ("raw.parquet", [b"\xff\xfe"] * 4),
    ):
        pq.write_table(pa.table({"text": text, "label": ["a", "b"] * 2}), tmp_path / name)
        with pytest.raises(UserError, match="the text at row 1 is") as e:
            load_dataset(text_cfg(tmp_path, source=name))
        assert e.value.field == "data.text_column"


def test_messages_listing_text_formats_name_parquet(tmp_path):
    from kdc.data import unlabelled_txt

    assert "parquet" in unlabelled_txt("d.txt", "data.source").fix
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match="needs text") as e:
        load_dataset(text_cfg(tmp_path, source="imgs"))
    assert "parquet" in e.value.fix
