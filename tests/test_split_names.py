"""Files named as dataset splits (`train.csv` beside `eval.csv`, `imdb_test.csv`, Hub shards,
`data/train/part-0.csv`) under one glob or folder: `kdc init` writes the training split's as
data.source and the held-out split's as data.eval; compress notes a data.source glob that
trains on them as one."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_data_loading import ROWS, csv_file, text_cfg
from test_init import HF_CONFIG, VIT, _hf_dir, _init, runner
from tiny import image_folder

from kdc.cli import app
from kdc.config import load_config
from kdc.data import load_dataset
from kdc.data.readers import train_and_held
from kdc.data.shards import split_names
from kdc.errors import UserError
from kdc.init import TeacherInfo
from kdc.init_data import inspect_data


def _splits(root, *names: str) -> None:
    for name in names:
        (root / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        csv_file(root / "data" / name, "text,label\n" + ROWS)


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("train.csv", "train"),
        ("imdb_test.csv", "test"),
        ("reviews-validation.jsonl", "validation"),
        ("drugsComTrain_raw.tsv", "train"),
        ("MyTEST.csv", "test"),
        ("TESTData.csv", "test"),
        ("test_results_ab.csv", "test"),
        ("val2017.csv", "val"),
        ("dev.v2.csv", "dev"),
        ("imdb_test_v2.csv", "test"),  # a version mark, as digits: not the name's last segment
        ("sst2_dev_v1.csv", "dev"),
        ("reviews-train.V3.jsonl", "train"),
        ("ab_test_results_v2.csv", None),
        ("train-00000-of-00002.parquet", "train"),
        ("imdb_train-00000-of-00002.parquet", "train"),
        ("unsupervised-00000-of-00001.parquet", "unsupervised"),
        ("contest.csv", None),
        ("Contest.csv", None),
        ("trainer_notes.csv", None),
        ("retrain.csv", None),
        ("latest.csv", None),
        ("devices.csv", None),
        ("evaluation.csv", "evaluation"),  # a test split's name to `datasets`, as eval is
        ("model_evaluation.csv", "evaluation"),
        ("evaluations.csv", None),
        ("reevaluation.csv", None),
        ("testé.csv", None),
        ("train_test_split.csv", None),  # two splits' words: neither
        ("ab_test_results.csv", None),  # inside the name: an A/B test's, not a split
        ("abTestResults.csv", None),
        ("MyTESTData.csv", None),
        ("imdb_train_clean.csv", None),
    ],
)
def test_a_split_word_delimited_in_a_file_name(name, split):
    """A split's word set off by `_`, `-`, `.`, a case change or digits, not inside a word, at
    the start or end of the name's first or last segment (not inside the name)."""
    assert split_names([Path("data") / name]) == [split]


def test_a_split_word_in_a_folder_below_the_files_common_one():
    """`data/train/part-0.csv`: the folder names the split; a folder above every file (the
    project's) names none."""
    files = [Path("runs/test/data/train/part-0.csv"), Path("runs/test/data/en/test.csv")]
    assert split_names(files) == ["train", "test"]
    assert split_names([Path("test/a.csv"), Path("test/b.csv")]) == [None, None]
    assert split_names([Path("data/train/test.csv"), Path("data/x.csv")]) == [None, None]
    files = [Path("data/test_set/a.csv"), Path("data/my_test_runs/a.csv"), Path("data/x/a.csv")]
    assert split_names(files) == ["test", None, None]
    files = [Path("data/train/ab_test_results.csv"), Path("data/test/a.csv")]
    assert split_names(files) == ["train", "test"]


@pytest.mark.parametrize(
    ("names", "splits"),
    [
        (["imdb_train_clean.csv", "imdb_test_clean.csv"], ["train", "test"]),
        (["sst2_train_v1.csv", "sst2_dev_v1.csv", "notes.csv"], ["train", "dev", None]),
        (["train.csv", "ab_test_results.csv"], ["train", None]),
        (["imdb_train_clean.csv", "imdb_test_raw.csv"], [None, None]),
    ],
)
def test_a_split_word_inside_names_alike_but_for_it(names, splits):
    """A split word inside a name counts where a file beside it differs only in that word
    (`imdb_train_clean` / `imdb_test_clean`: one data set's splits), not where nothing does
    (`ab_test_results` beside `train`: an A/B test's results)."""
    assert split_names([Path("data") / n for n in names]) == splits


# layouts of --data's files below data/: the data.source and data.eval kdc init writes
LAYOUTS = {
    "folders": (
        ["train/part-0.csv", "train/part-1.csv", "test/part-0.csv"],
        "data/**/*.csv",
        ("data/train/part-*.csv", "data/test/part-0.csv"),
    ),
    "languages": (
        ["en/train.csv", "fr/train.csv", "en/test.csv"],
        "data/**/*.csv",
        ("data/**/train.csv", "data/en/test.csv"),
    ),
    "prefixed": (
        ["imdb_train.csv", "imdb_test.csv"],
        "data/*.csv",
        ("data/imdb_train.csv", "data/imdb_test.csv"),
    ),
    "camel case": (
        ["drugsComTrain_raw.csv", "drugsComTest_raw.csv"],
        "data/*.csv",
        ("data/drugsComTrain_raw.csv", "data/drugsComTest_raw.csv"),
    ),
    "versioned": (
        ["train.csv", "imdb_test_v2.csv"],
        "data/*.csv",
        ("data/train.csv", "data/imdb_test_v2.csv"),
    ),
    "numbered": (
        ["reviews-train-0.csv", "reviews-train-1.csv", "reviews-dev.csv"],
        "data/*.csv",
        ("data/reviews-train-*.csv", "data/reviews-dev.csv"),
    ),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_init_splits_split_folders_and_split_words(tmp_path, monkeypatch, layout):
    names, data, written = LAYOUTS[layout]
    monkeypatch.chdir(tmp_path)
    _splits(tmp_path, *names)
    info = inspect_data(data, TeacherInfo("huggingface", tmp_path, "text-classification", 2))
    assert (info.source, info.eval_source, info.notes) == (*written, [])
    assert (info.rows, info.files) == (20 * (len(names) - 1), len(names) - 1)


@pytest.mark.parametrize("layout", ["folders", "languages"])
def test_the_split_globs_init_writes_validate_and_load(tmp_path, monkeypatch, layout):
    """The config kdc init writes beside the data validates and, read from another folder,
    reads the training split's files as data.source and the held-out one's as data.eval."""
    names, data, written = LAYOUTS[layout]
    monkeypatch.chdir(tmp_path)
    _splits(tmp_path, *names)
    conf = {**HF_CONFIG, "id2label": {"0": "neg", "1": "pos"}}
    teacher = _hf_dir(tmp_path / "t", conf, **{"vocab.txt": "[UNK]\n"})
    res = _init(teacher, "--data", data, "--out", "model.yaml")
    assert res.exit_code == 0, res.output
    monkeypatch.chdir(teacher)
    res = runner.invoke(app, ["validate", str(tmp_path / "model.yaml")])
    assert res.exit_code == 0, res.output
    cfg = load_config(tmp_path / "model.yaml")
    assert (cfg.data.source, cfg.data.eval) == written
    ds = load_dataset(cfg)
    assert (len(ds.train), len(ds.eval)) == (40, 20)
    assert not [n for n in ds.notes if "splits" in n]


def test_init_keeps_a_glob_no_split_pattern_names_alone(tmp_path, monkeypatch):
    """No split words (contest, trainer), or a split's files that no pattern names without
    another file the glob left out: the glob is kept, noted where it mixes splits."""
    monkeypatch.chdir(tmp_path)
    teacher = TeacherInfo("huggingface", tmp_path, "text-classification", 2)
    _splits(tmp_path, "contest.csv", "trainer_notes.csv")
    info = inspect_data("data/*.csv", teacher)
    assert (info.source, info.eval_source, info.notes) == ("data/*.csv", None, [])
    _splits(tmp_path, "train/a.csv", "train/b.csv", "test/a.csv", "train/long.csv")
    info = inspect_data("data/*/?.csv", teacher)  # data/train/*.csv would read long.csv too
    assert (info.source, info.eval_source, info.rows) == ("data/*/?.csv", None, 60)
    (note,) = info.notes
    assert "reads the files of the splits test, train as one" in note


@pytest.mark.parametrize(
    "held", ["eval.csv", "evaluation.csv", "test.csv", "validation.csv", "dev.csv"]
)
def test_init_splits_a_glob_over_train_and_a_held_out_split(tmp_path, monkeypatch, held):
    """`--data 'data/*.csv'` over train.csv and eval.csv was read as one training set."""
    monkeypatch.chdir(tmp_path)
    _splits(tmp_path, "train.csv", held)
    info = inspect_data(
        "data/*.csv", TeacherInfo("huggingface", tmp_path, "text-classification", 2)
    )
    assert (info.source, info.eval_source) == ("data/train.csv", f"data/{held}")
    assert (info.rows, info.files, info.notes) == (20, 1, [])


def test_evaluation_is_a_test_split_preferred_to_validation() -> None:
    """As `datasets` groups it: with test, testing and eval, before validation's names."""
    assert train_and_held(["validation", "evaluation", "train"]) == ("train", "evaluation")
    assert train_and_held(["evaluation", "test", "train"]) == ("train", "test")


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


# --data over train, validation and test files or image folders: what init says --data does,
# and the files' suffix (none: image folders)
LEFT_OUT = {
    "files": ("data/*.csv", "matches", ".csv"),
    "image folders": ("data", "holds", ""),
    "image folder": ("data/train", "is beside", ""),
}


@pytest.mark.parametrize("layout", list(LEFT_OUT))
def test_init_notes_and_comments_the_validation_split_it_leaves_out(tmp_path, monkeypatch, layout):
    """train, test and validation files or image folders: init takes test as data.eval, and
    says validation is not read and how to evaluate on it instead, as a warning and in the
    config's comments (an image folder's was left out unsaid)."""
    data, how, suffix = LEFT_OUT[layout]
    monkeypatch.chdir(tmp_path)
    names = [f"{split}{suffix}" for split in ("train", "validation", "test")]
    if suffix:
        _splits(tmp_path, *names)
        conf = {**HF_CONFIG, "id2label": {"0": "neg", "1": "pos"}}
        teacher = _hf_dir(tmp_path / "t", conf, **{"vocab.txt": "[UNK]\n"})
    else:
        (tmp_path / "data").mkdir()
        for name in names:
            image_folder(tmp_path / name, {"cat": 2, "dog": 2}).rename(tmp_path / "data" / name)
        teacher = _hf_dir(tmp_path / "t", VIT)
    res = _init(teacher, "--data", data, "--out", "model.yaml")
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert (
        f"warning: --data '{data}' {how} data/validation{suffix}, taken for split 'validation', "
        "which the config does not read: kdc evaluates on one held-out split, and init took "
        "'test' as data.eval; to evaluate on 'validation' instead, set data.eval: "
        f"data/validation{suffix}"
    ) in said, said
    text = (tmp_path / "model.yaml").read_text()
    assert (
        f"  # not read: data/validation{suffix} (taken for split 'validation': kdc evaluates on "
        "one held-out split, and init took 'test' as data.eval)"
    ) in text.splitlines(), text
    cfg = load_config(tmp_path / "model.yaml")
    assert (cfg.data.source, cfg.data.eval) == (f"data/train{suffix}", f"data/test{suffix}")


@pytest.mark.parametrize(
    ("names", "written", "notes"),
    [
        (  # a held-out split's word by accident, beside the test split
            ["train.csv", "test.csv", "valid_notes.csv"],
            ("data/train.csv", "data/test.csv"),
            [
                "data/valid_notes.csv, taken for split 'valid', which the config does not read: "
                "kdc evaluates on one held-out split, and init took 'test' as data.eval; to "
                "evaluate on 'valid' instead, set data.eval: data/valid_notes.csv"
            ],
        ),
        (  # a second training split's word
            ["train.csv", "test.csv", "training_notes.csv"],
            ("data/train.csv", "data/test.csv"),
            [
                "data/training_notes.csv, taken for split 'training', which the config does not "
                "read: a second training split beside 'train' (data.source); to train on both, "
                "give data.source a pattern that names them all"
            ],
        ),
        (  # val is preferred to dev, whose file is left out
            ["train.csv", "dev.csv", "val-notes.csv"],
            ("data/train.csv", "data/val-notes.csv"),
            [
                "data/dev.csv, taken for split 'dev', which the config does not read: kdc "
                "evaluates on one held-out split, and init took 'val' as data.eval; to evaluate "
                "on 'dev' instead, set data.eval: data/dev.csv"
            ],
        ),
    ],
)
def test_init_notes_each_split_named_file_it_does_not_read(
    tmp_path, monkeypatch, names, written, notes
):
    """A file whose name starts with a split's word by accident (`valid_notes.csv`) is taken
    for that split, as `datasets` takes it: left out of the config where init took another
    split's files, noted, naming it and why."""
    monkeypatch.chdir(tmp_path)
    _splits(tmp_path, *names)
    info = inspect_data(
        "data/*.csv", TeacherInfo("huggingface", tmp_path, "text-classification", 2)
    )
    assert (info.source, info.eval_source) == written
    assert len(info.notes) == len(notes), info.notes
    for note, want in zip(info.notes, notes, strict=True):
        assert want in note, note


@pytest.mark.parametrize(
    ("names", "notes"),
    [
        (["train.csv", "ab_test_results.csv"], []),
        (
            ["train.csv", "test.csv", "ab_test_results.csv"],
            ["reads the files of the splits test, train and other files as one training set"],
        ),
    ],
)
def test_init_takes_a_split_word_inside_a_name_for_no_split(tmp_path, monkeypatch, names, notes):
    """`ab_test_results.csv` names no split (it became data.eval beside train.csv, and beside
    test.csv too made a test split of two files no pattern names alone): the glob reads it as
    it reads any other file, noted where it mixes splits (as `extra.csv` beside them)."""
    monkeypatch.chdir(tmp_path)
    _splits(tmp_path, *names)
    info = inspect_data(
        "data/*.csv", TeacherInfo("huggingface", tmp_path, "text-classification", 2)
    )
    assert (info.source, info.eval_source, info.files) == ("data/*.csv", None, len(names))
    assert len(info.notes) == len(notes), info.notes
    for note, want in zip(info.notes, notes, strict=True):
        assert want in note, note


def test_init_notes_a_hub_split_neither_trained_on_nor_evaluated(tmp_path, monkeypatch):
    """A Hub download's `unsupervised` shards beside train and test (IMDB) are named as left out."""
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    for split in ("train", "test", "unsupervised"):
        pq.write_table(
            pa.table({"text": ["a b", "c d"] * 5, "label": ["x", "y"] * 5}),
            tmp_path / "d" / f"{split}-00000-of-00001.parquet",
        )
    info = inspect_data("d", TeacherInfo("huggingface", tmp_path, "text-classification", 2))
    assert (info.source, info.eval_source) == ("d/train-*.parquet", "d/test-*.parquet")
    assert info.notes == [
        "--data 'd' matches d/unsupervised-00000-of-00001.parquet, taken for split "
        "'unsupervised', which the config does not read: 'unsupervised' is neither a training "
        "nor a held-out split"
    ]


@pytest.mark.parametrize(
    ("train", "test"), [("train", "test"), ("imdb_train", "imdb_test"), ("aTrain", "aTest")]
)
def test_a_folder_of_split_named_parquet_files_names_each_split(tmp_path, train, test):
    """A folder of train.parquet and test.parquet was read as one split, as Hub shards are not."""
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d").mkdir()
    for name in (train, test):
        pq.write_table(
            pa.table({"text": ["a b", "c d"], "label": ["x", "y"]}),
            tmp_path / "d" / f"{name}.parquet",
        )
    with pytest.raises(
        UserError, match=r"d holds the parquet shards of several splits \(test, train\)"
    ) as e:
        load_dataset(text_cfg(tmp_path, source="d"))
    assert e.value.fix == (
        f"give one split's shards as data.source, e.g. d/{train}.parquet, "
        f"and data.eval: d/{test}.parquet"
    )


def test_compress_notes_a_glob_that_trains_on_an_eval_file(tmp_path):
    """compress keeps reading such a glob as one training set (a merge may be meant), noted."""
    _splits(tmp_path, "train.csv", "eval.csv", "en/imdb_train.csv", "en/imdb_test.csv")
    ds = load_dataset(text_cfg(tmp_path, source="data/*.csv", eval_fraction=0.25))
    (note,) = [n for n in ds.notes if "splits" in n]
    assert "data.source 'data/*.csv' reads the files of the splits eval, train as one" in note
    ds = load_dataset(text_cfg(tmp_path, source="data/en/*.csv", eval_fraction=0.25))
    (note,) = [n for n in ds.notes if "splits" in n]
    assert "reads the files of the splits test, train as one" in note
    _splits(tmp_path, "train/part-0.csv", "dev/part-0.csv", "Contest/trainer_notes.csv")
    ds = load_dataset(text_cfg(tmp_path, source="data/*/part-*.csv", eval_fraction=0.25))
    (note,) = [n for n in ds.notes if "splits" in n]
    assert "reads the files of the splits dev, train as one" in note
    ds = load_dataset(text_cfg(tmp_path, source="data/Contest/*.csv", eval_fraction=0.25))
    assert not [n for n in ds.notes if "splits" in n]
    for data in ({"eval_fraction": 0.25}, {"eval": "data/eval.csv"}):
        ds = load_dataset(text_cfg(tmp_path, source="data/train.csv", **data))
        assert not [n for n in ds.notes if "splits" in n]


def test_init_notes_a_second_training_image_folder_and_how_to_train_on_it(tmp_path, monkeypatch):
    """Image split folders `train/`, `training/` and `test/`: no pattern names two folders, so
    the note tells how to train on the one left out instead."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for name in ("train", "training", "test"):
        image_folder(tmp_path / name, {"cat": 2, "dog": 2}).rename(tmp_path / "data" / name)
    teacher = TeacherInfo("huggingface", tmp_path, "image-classification", 2)
    info = inspect_data("data", teacher)
    assert (info.source, info.eval_source) == ("data/train", "data/test")
    assert info.notes == [
        "--data 'data' holds data/training, taken for split 'training', which the config does "
        "not read: a second training split beside 'train' (data.source); to train on "
        "'training' instead, set data.source: data/training"
    ]
