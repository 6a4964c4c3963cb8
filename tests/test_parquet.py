"""Parquet data (what the Hugging Face Hub serves a dataset as, and pandas writes): columns read
as from CSV, a `datasets` file's ClassLabel integers as its names; bad files are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_data_loading import ROWS, csv_file, text_cfg
from tiny import hf_stub
from typer.testing import CliRunner

from kdc.cli import app
from kdc.data import load_dataset
from kdc.errors import UserError

datasets = pytest.importorskip("datasets")


NLI = ["entailment", "neutral", "contradiction"]


def _hub_split(
    path: Path, n: int, labels: list[int] | None = None, start: int = 0, names: list = NLI
) -> Path:
    """A split as the Hub stores it: a parquet file whose schema keeps the ClassLabel (rows
    numbered from `start`)."""
    features = datasets.Features(
        {
            "premise": datasets.Value("string"),
            "hypothesis": datasets.Value("string"),
            "label": datasets.ClassLabel(names=names),
        }
    )
    rows = {
        "premise": [f"a man plays {i}" for i in range(start, start + n)],
        "hypothesis": [f"someone plays {i}" for i in range(start, start + n)],
        "label": labels or [i % 3 for i in range(n)],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


def _hub_download(root: Path) -> Path:
    """A dataset as `huggingface-cli download` leaves it: data/<split>-0000i-of-0000n.parquet."""
    data = root / "data"
    _hub_split(data / "train-00001-of-00002.parquet", 12, start=20)  # sorted: read second
    _hub_split(data / "train-00000-of-00002.parquet", 20)
    _hub_split(data / "test-00000-of-00001.parquet", 9, start=100)
    return data


def _pairs(root: Path, **data):
    return text_cfg(root, text_column=["premise", "hypothesis"], **data)


def _validate_error(cfg) -> str:
    """`kdc validate`'s one line for a config whose data it refuses (exit 2)."""
    hf_stub(Path(cfg.source_file).parent / "teacher", {})  # checked first
    res = CliRunner().invoke(app, ["validate", cfg.source_file])
    assert res.exit_code == 2, res.output
    return res.output.strip()


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


def test_a_split_in_several_parquet_shards_by_glob_or_folder(tmp_path):
    """A Hub download's shards, given as a glob or (one split's) as their folder, are read in
    name order and concatenated, their ClassLabel kept; a folder of several splits' shards is
    refused naming the globs to give."""
    _hub_download(tmp_path)
    ds = load_dataset(_pairs(tmp_path, source="data/train-*.parquet", eval="data/test-*.parquet"))
    assert ds.label_names == NLI and (len(ds.train), len(ds.eval)) == (32, 9)
    assert ds.train.features[0][0] == "a man plays 0" and ds.train.features[20][0] == (
        "a man plays 20"
    )
    assert ds.source == "parquet:data/train-*.parquet"
    with pytest.raises(UserError, match=r"data holds the parquet shards of several splits") as e:
        load_dataset(_pairs(tmp_path, source="data"))
    assert e.value.field == "data.source"
    assert e.value.fix.endswith(
        f"e.g. {Path('data') / 'train-*.parquet'}, and data.eval: {Path('data') / 'test-*.parquet'}"
    )
    with pytest.raises(UserError, match="several splits") as e:
        load_dataset(_pairs(tmp_path, source="data/train-*.parquet", eval="data"))
    assert e.value.field == "data.eval" and e.value.fix.endswith(str(Path("data/test-*.parquet")))
    one = tmp_path / "plain_text" / "train"  # the Hub's parquet conversion: <config>/<split>/
    for i, name in enumerate(["0000.parquet", "0001.parquet"]):
        _hub_split(one / name, 10, start=10 * i)
    ds = load_dataset(_pairs(tmp_path, source="plain_text/train", eval_fraction=0.25))
    assert len(ds.train) + len(ds.eval) == 20 and ds.label_names == NLI


def test_shards_must_agree_and_a_glob_must_match(tmp_path):
    _hub_split(tmp_path / "d" / "train-00000-of-00002.parquet", 9)
    odd = _hub_split(tmp_path / "d" / "train-00001-of-00002.parquet", 9, names=NLI[::-1])
    with pytest.raises(UserError, match="its ClassLabel names for 'label'") as e:
        load_dataset(_pairs(tmp_path, source="d/train-*.parquet"))
    assert e.value.source == str(odd) and e.value.field == "data.source"
    assert len(str(e.value).splitlines()) == 1
    cfg = _pairs(tmp_path, source="d/valid-*.parquet")
    assert _validate_error(cfg) == (
        f"error: {cfg.source_file}: field 'data.source': no file matches 'd/valid-*.parquet' "
        "(fix: check the pattern (relative to the config; `**` matches across folders))"
    )


@pytest.mark.parametrize(("fmt", "source"), [("csv", "d"), ("jsonl", "d"), ("txt", "d/*.parquet")])
def test_a_text_format_set_for_parquet_shards_is_a_data_format_error(tmp_path, fmt, source):
    """A folder of parquet shards or a glob of them given with a text data.format is refused
    naming data.format and the format to set (they were read as text: "not UTF-8 (fix: save
    the file as UTF-8)"); parquet set for CSV files too. Text files may be read as one another
    (a .txt file of CSV rows)."""
    for i in range(2):
        _hub_split(tmp_path / "d" / f"train-0000{i}-of-00002.parquet", 9, start=9 * i)
    cfg = _pairs(tmp_path, source=source, format=fmt)
    assert _validate_error(cfg) == (
        f"error: {cfg.source_file}: field 'data.format': format '{fmt}' cannot read data.source "
        f"('{source}'): train-00000-of-00002.parquet is a parquet file "
        "(fix: set data.format: parquet or auto)"
    )
    assert len(load_dataset(_pairs(tmp_path, source=source, format="parquet")).train) == 14
    (tmp_path / "parts").mkdir()
    for i in range(2):
        rows = "".join(f"a man {i}{j},someone {j},{NLI[j % 3]}\n" for j in range(6))
        (tmp_path / "parts" / f"{i}.txt").write_text("premise,hypothesis,label\n" + rows)
    with pytest.raises(UserError, match=r"0.txt is a txt file") as e:
        load_dataset(_pairs(tmp_path, source="parts/*.txt", format="parquet"))
    assert e.value.field == "data.format" and e.value.fix == "set data.format: txt or auto"
    assert len(load_dataset(_pairs(tmp_path, source="parts/*.txt", format="csv")).eval) == 2


def test_train_and_eval_classlabels_must_name_the_same_classes(tmp_path):
    """Train and eval parquet files whose ClassLabel names differ are one line naming both files
    and the names (it was "eval labels not seen in training"); the same names in another order
    read each file's integer labels as its own names."""
    _hub_split(tmp_path / "train.parquet", 30)
    ev = _hub_split(tmp_path / "test.parquet", 9, names=["entailment", "neutral", "contra"])
    cfg = _pairs(tmp_path, source="train.parquet", eval="test.parquet")
    assert _validate_error(cfg) == (
        f"error: {ev}: field 'data.eval': its ClassLabel names for 'label' differ from those of "
        f"{tmp_path / 'train.parquet'}: only test.parquet names contra; only train.parquet names "
        "contradiction (fix: give the eval split of the training data's dataset, whose classes "
        "are the same)"
    )
    _hub_split(ev, 9, labels=[0, 1, 2] * 3, names=NLI[::-1])
    ds = load_dataset(cfg)
    assert ds.label_names == NLI and ds.eval.labels.tolist() == [2, 1, 0] * 3


def test_csv_and_jsonl_globs_read_alike(tmp_path):
    (tmp_path / "parts").mkdir()
    for i in range(3):
        rows = "".join(f"film {10 * i + j},{'pos' if j % 2 else 'neg'}\n" for j in range(10))
        (tmp_path / "parts" / f"part-{i}.csv").write_text("text,label\n" + rows)
    ds = load_dataset(text_cfg(tmp_path, source="parts/*.csv", eval_fraction=0.2))
    assert (len(ds.train), len(ds.eval)) == (24, 6) and ds.label_names == ["neg", "pos"]
    (tmp_path / "parts" / "part-3.jsonl").write_text('{"text": "film 30", "label": "pos"}\n')
    with pytest.raises(UserError, match=r"'parts/part-\*' matches files of several formats"):
        load_dataset(text_cfg(tmp_path, source="parts/part-*"))
    (tmp_path / "parts" / "part-1.csv").write_text("text,label\nfilm 10,\n")
    with pytest.raises(UserError, match="the label at line 2 is blank") as e:
        load_dataset(text_cfg(tmp_path, source="parts/*.csv"))
    assert e.value.source == str(tmp_path / "parts" / "part-1.csv")  # the shard, its own line


def test_every_shard_is_in_the_inputs_fingerprint(tmp_path):
    """--resume redoes the stages that read data when any shard changes (even at the same
    size), or one is added to the glob; not when nothing did."""
    from kdc.fingerprint import inputs_fingerprint

    data = _hub_download(tmp_path)
    globbed = _pairs(tmp_path, source="data/train-*.parquet")
    folder = tmp_path / "one"
    folder.mkdir()
    for f in data.glob("train-*"):
        (folder / f.name).write_bytes(f.read_bytes())
    in_folder = _pairs(tmp_path, source="one")
    before = [inputs_fingerprint(c) for c in (globbed, in_folder)]
    assert [inputs_fingerprint(c) for c in (globbed, in_folder)] == before
    for shard in (data / "train-00001-of-00002.parquet", folder / "train-00001-of-00002.parquet"):
        raw = bytearray(shard.read_bytes())
        raw[len(raw) // 2] ^= 1  # same size, other bytes
        shard.write_bytes(bytes(raw))
    after = [inputs_fingerprint(c) for c in (globbed, in_folder)]
    assert all(a != b for a, b in zip(after, before, strict=True))
    _hub_split(data / "train-00002-of-00002.parquet", 3)
    assert inputs_fingerprint(globbed) != after[0]


def test_init_reads_a_hub_download_folder(bert_project, tmp_path):
    """`kdc init --data data/` on a Hub download: the train shards as data.source and the test
    shards as data.eval, as globs; compress reads them as init did."""
    pd = pytest.importorskip("pandas")
    import csv

    with open(bert_project.parent / "train.csv") as f:
        rows = list(csv.DictReader(f))
    data = tmp_path / "hub" / "data"
    data.mkdir(parents=True)
    cut = [0, len(rows) // 3, 2 * len(rows) // 3, len(rows)]
    for name, (a, b) in zip(
        ["train-00000-of-00002", "train-00001-of-00002", "test-00000-of-00001"],
        zip(cut, cut[1:], strict=False),
        strict=True,
    ):
        part = rows[a:b]
        frame = {"review": [r["text"] for r in part], "stars": [r["label"] for r in part]}
        pd.DataFrame(frame).to_parquet(data / f"{name}.parquet")
    out = tmp_path / "m.yaml"
    teacher = str(bert_project.parent / "teacher")
    res = CliRunner().invoke(app, ["init", teacher, "--data", str(data), "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert "source: hub/data/train-*.parquet" in text and "in 2 files" in text
    assert "eval: hub/data/test-*.parquet" in text
    res = CliRunner().invoke(app, ["validate", str(out)])
    assert res.exit_code == 0, res.output
    n_train, n_eval = cut[2], len(rows) - cut[2]
    assert f"data {n_train} train / {n_eval} eval rows" in res.output


def test_a_folder_or_file_named_with_glob_characters_is_itself(tmp_path):
    """A data path with `[`, `*` or `?` that exists is that file or folder, as before globs: an
    image folder `imgs [v2]` and a saved `datasets` directory `ds[1]` (auto format, and set) were
    refused ("cannot tell the format", "reads one directory, not a pattern"); a folder of several
    splits' Hub shards named so is refused as any such folder (it was read as one split), and
    the globs named for its splits match it."""
    from test_data_loading import cnn_cfg
    from tiny import image_folder

    from kdc.data.shards import data_files

    image_folder(tmp_path, {"cat": 3, "dog": 3}).rename(tmp_path / "imgs [v2]")
    for fmt in ("auto", "imagefolder"):
        cfg = cnn_cfg(tmp_path, source="imgs [v2]", format=fmt, eval_fraction=0.34)
        assert load_dataset(cfg).label_names == ["cat", "dog"]
    rows = {"text": [f"film {i}" for i in range(10)], "label": ["neg", "pos"] * 5}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds[1]"))
    for fmt in ("auto", "datasets"):
        assert len(load_dataset(text_cfg(tmp_path, source="ds[1]", format=fmt)).train) == 8
    _hub_download(tmp_path)
    (tmp_path / "data").rename(tmp_path / "hub[1]")
    with pytest.raises(UserError, match="several splits") as e:
        load_dataset(_pairs(tmp_path, source="hub[1]"))
    train, test = e.value.fix.split("e.g. ")[1].split(", and data.eval: ")
    assert [len(data_files(p, tmp_path, "data.source", None)) for p in (train, test)] == [2, 1]
    ds = load_dataset(_pairs(tmp_path, source=train, eval=test))
    assert (len(ds.train), len(ds.eval)) == (32, 9)


@pytest.mark.parametrize(
    ("source", "evals", "shared"),
    [
        ("data/*.parquet", "data/test-*.parquet", "test-00000-of-00001.parquet"),
        ("data/train-*.parquet", "data/train-00001-of-00002.parquet", "train-00001-of-00002"),
    ],
)
def test_eval_files_that_data_source_reads_too_are_refused(tmp_path, source, evals, shared):
    """A glob over a Hub download's every split (`data/*.parquet`) with its test shards as
    data.eval trained on the eval rows, then scored them as held out (41 training rows, 9 of
    them the eval's): one line naming the shared file, data.eval and the fix."""
    _hub_download(tmp_path)
    cfg = _pairs(tmp_path, source=source, eval=evals)
    said = _validate_error(cfg)
    assert said.startswith(f"error: {cfg.source_file}: field 'data.eval': {shared}")
    assert f"is read by data.source ('{source}') too" in said and "narrow data.source" in said
    ds = load_dataset(_pairs(tmp_path, source="data/train-*.parquet", eval="data/test-*.parquet"))
    assert (len(ds.train), len(ds.eval)) == (32, 9)
    csv = tmp_path / "rows.csv"
    csv.write_text("premise,hypothesis,label\n" + "a,b,neutral\n" * 6)
    with pytest.raises(UserError, match="rows.csv is read by data.source") as e:
        load_dataset(_pairs(tmp_path, source="rows.csv", eval=str(csv)))  # one file, two names
    assert e.value.field == "data.eval"


def test_a_glob_over_files_of_several_formats_names_one_kdc_reads(tmp_path):
    """`hub/*` over a Hub download's README.md and its parquet shard suggested `hub/*.md`, and
    a file without a suffix was listed as ''."""
    _hub_split(tmp_path / "hub" / "train-00000-of-00001.parquet", 6)
    (tmp_path / "hub" / "README.md").write_text("# a dataset card\n")
    with pytest.raises(UserError, match=r"several formats \(\.md, \.parquet\)") as e:
        load_dataset(_pairs(tmp_path, source="hub/*"))
    assert e.value.fix == "narrow the pattern to one, e.g. hub/*.parquet"
    (tmp_path / "hub" / "LICENSE").write_text("MIT\n")
    with pytest.raises(UserError, match=r"\(no suffix, \.md, \.parquet\)"):
        load_dataset(_pairs(tmp_path, source="hub/*"))
    (tmp_path / "hub" / "train-00000-of-00001.parquet").unlink()
    with pytest.raises(UserError, match=r"\(no suffix, \.md\)") as e:
        load_dataset(_pairs(tmp_path, source="hub/*"))
    assert e.value.fix == "narrow the pattern to one format"


def test_shards_on_another_drive_than_the_config_are_fingerprinted(tmp_path, monkeypatch):
    """On Windows a shard on another drive than the config has no path relative to it:
    os.path.relpath raised ValueError, an internal error (exit 3) on every compress; its key
    is then its absolute path. Keys are `/`-separated, the same on every OS."""
    import os

    from kdc.fingerprint import inputs_fingerprint

    _hub_download(tmp_path)
    cfg = _pairs(tmp_path, source="data/train-*.parquet")
    here = inputs_fingerprint(cfg)

    def other_drive(path, start=None):
        raise ValueError("path is on mount 'D:', start on mount 'C:'")

    monkeypatch.setattr(os.path, "relpath", other_drive)
    elsewhere = inputs_fingerprint(cfg)
    assert elsewhere != here  # keyed by the absolute paths
    monkeypatch.undo()
    assert inputs_fingerprint(cfg) == here


def test_a_hub_downloads_root_names_the_subfolder_of_its_shards(tmp_path, monkeypatch):
    """`huggingface-cli download` leaves a dataset's shards in `<config>/` or `data/` beside its
    README.md (the Hub's parquet conversion: `<config>/<split>/`): its root given as the data
    was taken for an image folder ("needs text, but this is image data"; kdc init: "class folder
    'plain_text' holds no images"). It names the folder or the globs to give instead."""
    from kdc.init import TeacherInfo
    from kdc.init_data import inspect_data

    for split, n in (("train", 12), ("test", 6)):
        _hub_split(tmp_path / "imdb" / "plain_text" / f"{split}-00000-of-00001.parquet", n)
        _hub_split(tmp_path / "conv" / "plain_text" / split / "0000.parquet", n)
    (tmp_path / "imdb" / "README.md").write_text("# imdb\n")
    with pytest.raises(UserError, match="imdb/plain_text holds the parquet shards of sev") as e:
        load_dataset(_pairs(tmp_path, source="imdb"))
    assert e.value.fix.endswith(
        "e.g. imdb/plain_text/train-*.parquet, and data.eval: imdb/plain_text/test-*.parquet"
    )
    with pytest.raises(UserError, match="conv holds no parquet file itself") as e:
        load_dataset(_pairs(tmp_path, source="conv"))
    assert e.value.field == "data.source" and e.value.fix == (
        "give data.source as conv/plain_text/train, and data.eval: conv/plain_text/test"
    )
    ds = load_dataset(_pairs(tmp_path, source="conv/plain_text/train", eval="conv/plain_text/test"))
    assert (len(ds.train), len(ds.eval)) == (12, 6)
    monkeypatch.chdir(tmp_path)
    teacher = TeacherInfo("huggingface", tmp_path, "text-classification", 3)
    with pytest.raises(UserError, match="imdb holds no parquet file itself") as e:
        inspect_data("imdb", teacher)
    assert e.value.fix == "give --data as imdb/plain_text"  # which init splits into two globs
    assert inspect_data("imdb/plain_text", teacher).eval_source == "imdb/plain_text/test-*.parquet"


def test_a_glob_over_several_hub_splits_without_data_eval_is_noted(tmp_path):
    """`data/*.parquet` over train and test shards, no data.eval: read as one training set (a
    merge may be meant) with a note naming the splits and the globs to give instead; one split's
    glob, or an eval split given, gets no note."""
    _hub_download(tmp_path)
    ds = load_dataset(_pairs(tmp_path, source="data/*.parquet", eval_fraction=0.2))
    assert len(ds.train) + len(ds.eval) == 41
    (note,) = [n for n in ds.notes if "splits" in n]
    assert "'data/*.parquet' reads the files of the splits test, train as one" in note
    for data in ({"eval_fraction": 0.2}, {"eval": "data/test-*.parquet"}):
        ds = load_dataset(_pairs(tmp_path, source="data/train-*.parquet", **data))
        assert not [n for n in ds.notes if "splits" in n]


def test_a_folder_of_csv_files_names_the_glob_that_reads_them(tmp_path):
    """A folder of csv files was taken for an image folder ("needs text, but this is image
    data (imagefolder)"; `kdc init`: "no class folders"): both now say what it holds and give
    the glob, which reads its files as one split."""
    from kdc.init import TeacherInfo
    from kdc.init_data import inspect_data

    (tmp_path / "parts").mkdir()
    for name in ("a.csv", "b.csv"):
        csv_file(tmp_path / "parts" / name, "text,label\n" + ROWS)
    with pytest.raises(UserError, match=r"is a folder of \.csv files, not an image folder") as e:
        load_dataset(text_cfg(tmp_path, source="parts"))
    assert e.value.field == "data.source" and "data.source: 'parts/*.csv'" in e.value.fix
    teacher = TeacherInfo("huggingface", tmp_path, "text-classification", 2)
    with pytest.raises(UserError, match="is a folder of .csv files") as e:
        inspect_data(str(tmp_path / "parts"), teacher)
    assert e.value.field == "--data" and "--data '" in e.value.fix
    ds = load_dataset(text_cfg(tmp_path, source="parts/*.csv", eval_fraction=0.25))
    assert len(ds.train) + len(ds.eval) == 40
