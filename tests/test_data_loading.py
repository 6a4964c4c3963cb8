"""Data loading: which rows are eval, the format each file is read in, the task's kind of data,
and malformed CSV files named by line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny import bert_config, cnn_config, image_folder, write_yaml

from kdc.config import load_config
from kdc.data import load_dataset
from kdc.data.readers import read_delimited
from kdc.errors import UserError


def cnn_cfg(root: Path, **data):
    cfg = cnn_config(weights=None)
    cfg["data"] = {"source": "sklearn:digits", **data}
    return load_config(write_yaml(root / "model.yaml", cfg))


def text_cfg(root: Path, **data):
    cfg = bert_config()
    cfg["data"] = data
    return load_config(write_yaml(root / "model.yaml", cfg))


def csv_file(path: Path, content: str) -> Path:
    path.write_bytes(content.encode())
    return path


ROWS = "".join(f"film {i},{'pos' if i % 2 else 'neg'}\n" for i in range(20))


def test_digits_hold_out_their_eval_split(tmp_path):
    ds = load_dataset(cnn_cfg(tmp_path, eval_fraction=0.2))
    s = ds.summary()
    assert (s["train"], s["eval"]) == (1438, 359)
    assert s["source"] == "sklearn:digits"
    train = {x.tobytes() for x in ds.train.features}
    assert not any(x.tobytes() in train for x in ds.eval.features[:50])


@pytest.mark.parametrize("eval_file", ["nope_eval.csv", "ev.csv"])
def test_digits_with_an_eval_file_is_refused(tmp_path, eval_file):
    csv_file(tmp_path / "ev.csv", "text,label\n" + ROWS)
    with pytest.raises(UserError) as e:
        load_dataset(cnn_cfg(tmp_path, eval=eval_file))
    assert e.value.field == "data.eval" and "sklearn:digits" in str(e.value)


def test_an_eval_file_is_read_in_its_own_format(tmp_path):
    csv_file(tmp_path / "train.csv", "text,label\n" + ROWS)
    (tmp_path / "ev.jsonl").write_text('{"text": "a film", "label": "pos"}\n' * 3)
    ds = load_dataset(text_cfg(tmp_path, source="train.csv", eval="ev.jsonl"))
    assert (len(ds.train), len(ds.eval)) == (20, 3)
    assert ds.source == "csv:train.csv"


def test_a_missing_eval_file_names_data_eval(tmp_path):
    csv_file(tmp_path / "train.csv", "text,label\n" + ROWS)
    with pytest.raises(UserError) as e:
        load_dataset(text_cfg(tmp_path, source="train.csv", eval="nope.csv"))
    assert e.value.field == "data.eval"


def test_an_image_task_refuses_a_text_csv(tmp_path):
    csv_file(tmp_path / "ok.csv", "text,label\nfoo bar,a\nbaz,b\n")
    with pytest.raises(UserError) as e:
        load_dataset(cnn_cfg(tmp_path, source="ok.csv"))
    assert e.value.field == "data.source" and e.value.source.endswith("ok.csv")
    assert "image" in str(e.value) and "'text'" in str(e.value)


def test_a_malformed_eval_csv_names_data_eval(tmp_path):
    csv_file(tmp_path / "train.csv", "text,label\n" + ROWS)
    csv_file(tmp_path / "ev.csv", 'text,label\n"a film,pos\n')
    with pytest.raises(UserError, match="line 2") as e:
        load_dataset(text_cfg(tmp_path, source="train.csv", eval="ev.csv"))
    assert e.value.field == "data.eval"


@pytest.mark.parametrize(
    ("content", "line", "words"),
    [
        ('text,label\ngood,pos\n"bad film,neg\nok,pos\n', 3, "never closed"),
        ('text,label\ngood,"pos\nbad,neg\n', 2, "never closed"),
        ('"text,label\ngood,pos\n', 1, "never closed"),
        ("text,label\ngood, really,pos\nbad,neg\n", 2, "3 field(s), the header has 2"),
        ("text,label\ngood,pos\nbad\n", 3, "1 field(s), the header has 2"),
        ('text,label\n"' + "x" * 140_000 + ",pos\n", 2, "never closed"),
        ('text,label\ngood,pos\n"bad film,neg\nok,pos\n"nice",pos\nfine,neg\n', 3, "wrong place"),
    ],
    ids=[
        "unclosed text",
        "unclosed label",
        "unclosed header",
        "extra field",
        "short row",
        "huge",
        "rows merged by a quote",
    ],
)
def test_malformed_csv_names_the_line(tmp_path, content, line, words):
    path = csv_file(tmp_path / "d.csv", content)
    with pytest.raises(UserError) as e:
        read_delimited(path, "text", "label", ",")
    assert f"line {line}" in str(e.value) and words in str(e.value)
    assert e.value.source == str(path) and e.value.field == "data.source"


def test_lenient_csv_still_reads(tmp_path):
    """Quoted line breaks, CRLF, blank lines, a quote inside a field and text after a closing
    quote are read as before."""
    content = 'text,label\r\n"two\r\nlines",pos\r\n\r\n5" screen,neg\r\n"good" film,pos\r\nlast,neg'
    texts, labels = read_delimited(csv_file(tmp_path / "d.csv", content), "text", "label", ",")
    assert texts == ["two\r\nlines", '5" screen', "good film", "last"]
    assert labels == ["pos", "neg", "pos", "neg"]


def test_a_text_past_the_csv_modules_field_limit_reads(tmp_path):
    """A 200,000-character document (past the csv module's 128 KiB default) is a text, not a
    quoting error; the module's limit is left as it was."""
    import csv

    long = "word " * 40_000
    content = f'text,label\n"{long}",pos\nshort,neg\n'
    before = csv.field_size_limit()
    texts, labels = read_delimited(csv_file(tmp_path / "d.csv", content), "text", "label", ",")
    assert texts == [long, "short"] and labels == ["pos", "neg"]
    assert csv.field_size_limit() == before


def test_spreadsheet_exports_read(tmp_path):
    """Excel's "CSV UTF-8" (a byte-order mark), trailing empty fields, and rows that stop after
    their last non-empty cell (past the text and label columns) read as the header's width."""
    content = "\ufefftext,label,note,extra\ngood,pos,,\nbad,neg,x\nok,pos\nfine,neg,,,,\n"
    texts, labels = read_delimited(csv_file(tmp_path / "d.csv", content), "text", "label", ",")
    assert texts == ["good", "bad", "ok", "fine"] and labels == ["pos", "neg", "pos", "neg"]


def test_labels_are_read_without_surrounding_spaces(tmp_path):
    """`pos ` and ` pos` (a hand-edited row, `a, b` CSV style) are the class `pos`, not more."""
    content = "text,label\ngood,pos\nbad,neg \nok, pos\nfine,\tneg\n"
    _, labels = read_delimited(csv_file(tmp_path / "d.csv", content), "text", "label", ",")
    assert labels == ["pos", "neg", "pos", "neg"]


def test_a_json_array_of_objects_reads_as_json_lines_do(tmp_path):
    """pandas' `to_json(orient="records")`; its rows are named by item."""
    rows = [{"text": f"film {i}", "label": "pos" if i % 2 else "neg"} for i in range(20)]
    csv_file(tmp_path / "d.json", json.dumps(rows, indent=1))
    ds = load_dataset(text_cfg(tmp_path, source="d.json", text_column="text", label_column="label"))
    assert ds.label_names == ["neg", "pos"] and ds.num_labels == 2
    csv_file(tmp_path / "d.json", json.dumps([*rows, {"text": "film"}]))
    with pytest.raises(UserError, match="item 21 has no 'label'"):
        load_dataset(text_cfg(tmp_path, source="d.json", text_column="text", label_column="label"))


def test_integer_labels_are_ordered_by_value(tmp_path):
    """A head with generic names (LABEL_0 …) is read in this order: 2 before 10."""
    rows = "".join(f"text {i} {'x' * (i % 5)},{i % 12}\n" for i in range(48))
    csv_file(tmp_path / "d.csv", "text,label\n" + rows)
    ds = load_dataset(text_cfg(tmp_path, source="d.csv"))
    assert ds.label_names == [str(i) for i in range(12)]
    from kdc.data.labels import class_order

    assert class_order(["10.0", "2.0", "0.0"]) == ["0.0", "2.0", "10.0"]  # pandas after a NaN


def _save_dataset(path: Path, splits: dict[str, int] | None, names: list[str]) -> Path:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}
    )

    def part(n: int):
        rows = {"text": [f"review {i}" for i in range(n)], "label": [i % 2 for i in range(n)]}
        return datasets.Dataset.from_dict(rows, features=features)

    if splits is None:
        part(40).save_to_disk(str(path))
    else:
        datasets.DatasetDict({k: part(n) for k, n in splits.items()}).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("splits", [None, {"train": 40}, {"train": 40, "test": 10}])
def test_datasets_directory_eval_split_and_class_order(tmp_path, splits):
    """A test split is the eval set; without one (a plain Dataset, or train only)
    data.eval_fraction is held out, never the training rows themselves. Classes keep the
    ClassLabel's index order, not A→Z."""
    _save_dataset(tmp_path / "ds", splits, ["not_positive", "is_positive"])
    ds = load_dataset(text_cfg(tmp_path, source="ds", eval_fraction=0.25))
    assert ds.label_names == ["not_positive", "is_positive"]
    if splits and "test" in splits:
        assert (len(ds.train), len(ds.eval)) == (40, 10)
    else:
        assert (len(ds.train), len(ds.eval)) == (30, 10)
        assert not set(ds.train.features) & set(ds.eval.features)


def test_an_eval_directory_without_a_labelled_split_names_what_is_read(tmp_path):
    """A data.eval DatasetDict whose test split is GLUE-style unlabelled (ClassLabel -1): the
    error names the splits evaluation reads, not a 'test' split it has ('no 'eval' split')."""
    datasets = pytest.importorskip("datasets")
    _save_dataset(tmp_path / "ds", {"train": 40}, ["neg", "pos"])
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    unlabelled = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [-1, -1]}, features)
    datasets.DatasetDict({"test": unlabelled}).save_to_disk(str(tmp_path / "ev"))
    with pytest.raises(UserError, match="no labelled test or validation split") as e:
        load_dataset(text_cfg(tmp_path, source="ds", eval="ev"))
    assert e.value.field == "data.eval" and "splits: test" in str(e.value)


@pytest.mark.parametrize(
    ("name", "content", "field", "words"),
    [
        ("d.jsonl", '{"text": "a", "label": "pos"}\n{"text": "b"}\n', "label", "line 2 has no"),
        ("d.jsonl", '{"text": "a", "label": "pos"}\n{"label": "neg"}\n', "text", "line 2 has no"),
        ("d.jsonl", '{"text": "a", "label": ["pos"]}\n', "label", "line 1 is not a single value"),
        (
            "d.jsonl",
            '{"text": "a", "label": "pos"}\n{"text": "b", "label": null}\n',
            "label",
            "line 2 is null",
        ),
        ("d.csv", "text,label\na,pos\nb,\nc,neg\n", "label", "line 3 is blank"),
        ("d.csv", "text,label\na,pos\n ,neg\nc,neg\n", "text", "line 3 is blank"),
        ("d.jsonl", '{"text": null, "label": "pos"}\n', "text", "line 1 is null"),
    ],
    ids=[
        "jsonl no label",
        "jsonl no text",
        "jsonl list label",
        "jsonl null label",
        "csv blank",
        "csv blank text",
        "jsonl null text",
    ],
)
def test_a_row_without_a_usable_text_or_label_names_its_line(tmp_path, name, content, field, words):
    """Every row is checked, not only the first; a blank or null label is not a class."""
    path = csv_file(tmp_path / name, content)
    with pytest.raises(UserError) as e:
        load_dataset(text_cfg(tmp_path, source=name))
    assert e.value.field == f"data.{field}_column" and e.value.source == str(path)
    assert words in str(e.value)


def test_a_datasets_row_without_a_class_is_refused(tmp_path):
    """A ClassLabel of -1 ("no label") is not the last class."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    rows = {"text": [f"review {i}" for i in range(6)], "label": [0, 1, -1, 1, 0, 1]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(UserError, match="row 2") as e:
        load_dataset(text_cfg(tmp_path, source="ds"))
    assert e.value.field == "data.label_column"


def test_an_unlabelled_test_split_is_passed_over_for_validation(tmp_path):
    """GLUE-style: test is all ClassLabel -1; eval comes from the labelled validation split, and
    with no labelled eval split the eval rows are held out from train."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )

    def split(labels):
        texts = [f"review {i}" for i in range(len(labels))]
        return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)

    train = split([0, 1] * 10)
    datasets.DatasetDict(
        train=train, validation=split([1, 0, 1, 1]), test=split([-1] * 5)
    ).save_to_disk(str(tmp_path / "glue"))
    ds = load_dataset(text_cfg(tmp_path, source="glue"))
    assert len(ds.eval) == 4 and len(ds.train) == 20
    datasets.DatasetDict(train=train, test=split([-1] * 5)).save_to_disk(str(tmp_path / "only"))
    ds = load_dataset(text_cfg(tmp_path, source="only"))
    assert len(ds.train) + len(ds.eval) == 20
    bare = datasets.Dataset.from_dict({"text": ["a", "b"]})  # a test split with no label column
    datasets.DatasetDict(train=train, test=bare, validation=split([1, 0, 1])).save_to_disk(
        str(tmp_path / "nolabel")
    )
    assert len(load_dataset(text_cfg(tmp_path, source="nolabel")).eval) == 3
    blank = datasets.DatasetDict(train=train, validation=split([1, 0, -1]))
    blank.save_to_disk(str(tmp_path / "blank"))
    with pytest.raises(UserError, match=r"blank \(split 'validation'\): field 'data.label_co"):
        load_dataset(text_cfg(tmp_path, source="blank"))


def test_labels_are_matched_to_the_teacher_by_name_or_refused():
    """By name (case and spaces aside), by index for generic names or integer labels; labels
    named otherwise than the teacher's are refused, not mapped in sorted order."""
    from kdc.data.base import Dataset, Split
    from kdc.data.labels import align_labels

    def data(names):
        labels = np.array([0, 1, 2, 1], np.int64)
        return Dataset(Split([], labels), Split([], labels), names, "text", "x.csv", [])

    teacher = ["negative", "neutral", "positive"]
    ds = align_labels(data([" Negative", "neutral", "positive "]), teacher, "x.csv")
    assert ds.label_names == teacher and list(ds.train.labels) == [0, 1, 2, 1]
    ds = align_labels(data(["neutral", "negative", "positive"]), teacher, "x.csv")
    assert list(ds.train.labels) == [1, 0, 2, 0]
    for generic in (["0", "1", "2"], ["0.0", "1.0", "2.0"]):
        assert list(align_labels(data(generic), teacher, "x.csv").train.labels) == [0, 1, 2, 1]
        assert align_labels(data(generic), teacher, "x.csv").notes == []  # the indices
    (note,) = align_labels(data(["1", "2", "3"]), teacher, "x.csv").notes  # not the indices
    assert note.endswith("in index order: 1 → negative, 2 → neutral, 3 → positive")
    generic_head = ["LABEL_0", "LABEL_1", "LABEL_2"]
    ds = align_labels(data(["mixed", "negative", "positive"]), generic_head, "x.csv")
    assert ds.label_names == ["mixed", "negative", "positive"]
    with pytest.raises(UserError, match="not the teacher's") as e:
        align_labels(data(["mixed", "negative", "positive"]), teacher, "x.csv")
    assert e.value.field == "data.label_column"


def test_a_utf8_bom_is_skipped_in_jsonl_as_in_csv(tmp_path):
    rows = "".join(
        f'{{"text": "film {i}", "label": "{"pos" if i % 2 else "neg"}"}}\n' for i in range(20)
    )
    (tmp_path / "d.jsonl").write_bytes(b"\xef\xbb\xbf" + rows.encode())
    ds = load_dataset(text_cfg(tmp_path, source="d.jsonl"))
    assert len(ds.train) + len(ds.eval) == 20


def test_a_txt_file_for_a_classifier_says_it_has_no_labels(tmp_path):
    (tmp_path / "d.txt").write_text("a good film\na bad plot\n")
    with pytest.raises(UserError, match="a .txt file holds texts .* but no labels") as e:
        load_dataset(text_cfg(tmp_path, source="d.txt"))
    assert e.value.field == "data.source" and "label column" in e.value.fix


def test_an_image_folder_skips_hidden_entries_and_other_files(tmp_path):
    """.ipynb_checkpoints is not a class (nor __MACOSX, nor .DS_Store an image); notes.txt is not
    an image file and is passed over."""
    imgs = image_folder(tmp_path, {"cat": 3, "dog": 3, ".ipynb_checkpoints": 1, "__MACOSX": 1})
    (imgs / "cat" / "notes.txt").write_text("taken in 2021")
    (imgs / "cat" / ".DS_Store").write_bytes(b"\0\0")
    (imgs / "cat" / ".hidden.png").write_bytes(b"not a png")
    ds = load_dataset(cnn_cfg(tmp_path, source="imgs", image_size=8, eval_fraction=0.5))
    assert ds.label_names == ["cat", "dog"] and len(ds.train) + len(ds.eval) == 6


def test_an_image_folder_reads_a_class_folders_subfolders(tmp_path):
    """As torchvision's ImageFolder: images in cat/indoor/ are cats (they were passed over, and
    a class holding only subfolders was refused as empty); hidden subfolders stay out."""
    imgs = image_folder(tmp_path, {"cat": 2, "dog": 2})
    nested = image_folder(tmp_path / "more", {"indoor": 2, ".thumbs": 1})
    (nested / "indoor").rename(imgs / "cat" / "indoor")
    (nested / ".thumbs").rename(imgs / "cat" / ".thumbs")
    ds = load_dataset(cnn_cfg(tmp_path, source="imgs", image_size=8, eval_fraction=0.5))
    assert ds.label_names == ["cat", "dog"] and len(ds.train) + len(ds.eval) == 6


def test_an_image_folder_is_read_into_one_array_without_copies(tmp_path):
    """The images land in the float32 array returned, in [0, 1] and class order, and reading
    allocates little beyond it (a list of images, stacked, then cast, held three copies)."""
    import tracemalloc

    from kdc.data.images import read_imagefolder
    from kdc.image_processor import ImageReading

    imgs = image_folder(tmp_path, {"cat": 60, "dog": 60})
    tracemalloc.start()
    x, labels = read_imagefolder(imgs, ImageReading((32, 32), (32, 32)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert x.dtype == np.float32 and x.shape == (120, 3, 32, 32)
    assert labels == ["cat"] * 60 + ["dog"] * 60
    assert np.allclose(x[:, 2], 100 / 255) and np.isclose(x[1, 0, 0, 0], 40 / 255)
    assert peak < 1.5 * x.nbytes


@pytest.mark.parametrize(
    ("make", "source", "words"),
    [
        (lambda d: (d / "cat" / "broken.jpg").write_text("not an image"), "broken.jpg", "not an"),
        (lambda d: (d / "bird").mkdir(), "bird", "class folder 'bird' holds no images"),
        (lambda d: (d / "bird").mkdir() or (d / "bird" / "a.txt").write_text("x"), "bird", "no"),
    ],
    ids=["unreadable image", "empty class", "class without image files"],
)
def test_an_image_folder_refuses_a_broken_image_or_an_empty_class(tmp_path, make, source, words):
    """Neither is dropped silently: an empty class would shift the classes after it."""
    imgs = image_folder(tmp_path, {"cat": 2, "dog": 2})
    make(imgs)
    with pytest.raises(UserError) as e:
        load_dataset(cnn_cfg(tmp_path, source="imgs", image_size=8))
    assert e.value.source.endswith(source) and e.value.field == "data.source"
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_class_mismatch_of_image_data_names_data_source():
    """Image folders have no label column: their classes are the folders of data.source."""
    from types import SimpleNamespace

    from kdc.data.base import Dataset, Split
    from kdc.data.labels import align_labels
    from kdc.teacher_fit import check_label_count

    labels = np.array([0, 1, 2], np.int64)
    ds = Dataset(Split([], labels), Split([], labels), ["bird", "cat", "dog"], "image", "x", [])
    with pytest.raises(UserError, match="3 classes") as e:
        ctx = SimpleNamespace(cfg=SimpleNamespace(task="image-classification", source_file="m"))
        ctx.dataset = ds
        check_label_count(ctx, SimpleNamespace(config=SimpleNamespace(num_labels=2)))
    assert e.value.field == "data.source"
    for teacher in (["cat", "dog"], ["bird", "cat", "fish"]):
        with pytest.raises(UserError) as e:
            align_labels(ds, teacher, "m")
        assert e.value.field == "data.source"


def test_an_image_folder_of_split_folders_is_refused(tmp_path):
    """`data/train/<class>`, `data/val/<class>` given as data.source: read as classes 'train'
    and 'val' (subfolders are read), it would train a 2-class model on the splits."""
    image_folder(tmp_path / "data", {"cat": 2})
    (tmp_path / "data" / "imgs").rename(tmp_path / "data" / "train")
    image_folder(tmp_path / "data2", {"cat": 2})
    (tmp_path / "data2" / "imgs").rename(tmp_path / "data" / "val")
    with pytest.raises(UserError, match=r"its folders \(train, val\) look like splits") as e:
        load_dataset(cnn_cfg(tmp_path, source="data", image_size=8, eval_fraction=0.5))
    assert e.value.field == "data.source" and "data/train" in e.value.fix
    assert "data.eval: " + str(tmp_path / "data" / "val") in e.value.fix


def test_split_folders_fix_names_train_as_source_even_when_test_sorts_first(tmp_path):
    image_folder(tmp_path / "data", {"cat": 2})
    (tmp_path / "data" / "imgs").rename(tmp_path / "data" / "train")
    image_folder(tmp_path / "d2", {"cat": 2})
    (tmp_path / "d2" / "imgs").rename(tmp_path / "data" / "test")
    image_folder(tmp_path / "d3", {"cat": 2})
    (tmp_path / "d3" / "imgs").rename(tmp_path / "data" / "dev")
    with pytest.raises(UserError) as e:
        load_dataset(cnn_cfg(tmp_path, source="data", image_size=8, eval_fraction=0.5))
    data = tmp_path / "data"
    assert f"data.source: {data / 'train'}, data.eval: {data / 'test'}" in e.value.fix
    shutil.rmtree(data / "train")  # test/ and dev/: neither is suggested for training
    with pytest.raises(UserError, match="look like splits") as e:
        load_dataset(cnn_cfg(tmp_path, source="data", image_size=8, eval_fraction=0.5))
    assert "the training split's folder as data.source" in e.value.fix


def test_labels_spelled_two_ways_are_refused_naming_both(tmp_path):
    csv_file(tmp_path / "train.csv", "text,label\n" + ROWS + "film x,Pos\nfilm y,NEG\n")
    with pytest.raises(UserError, match="labels NEG / neg, Pos / pos differ only in case") as e:
        load_dataset(text_cfg(tmp_path, source="train.csv"))
    assert e.value.field == "data.label_column"


def test_a_class_only_the_teacher_and_eval_know_is_kept_in_the_teachers_order(tmp_path):
    """With a teacher that names its classes, the training split may lack one (noted); without
    names to go by, an eval label training lacks is still refused."""
    csv_file(tmp_path / "train.csv", "text,label\n" + ROWS)
    csv_file(tmp_path / "ev.csv", "text,label\nok film,neutral\nbad film,neg\n")
    cfg = text_cfg(tmp_path, source="train.csv", eval="ev.csv")
    ds = load_dataset(cfg, ["Neg", "Neutral", "Pos"])
    assert ds.label_names == ["Neg", "Neutral", "Pos"]
    assert list(ds.eval.labels) == [1, 0] and set(ds.train.labels.tolist()) == {0, 2}
    assert ds.notes == [
        "the training split has no rows of class(es) Neutral: the student learns them from "
        "the teacher's outputs alone",
        "the eval split has no rows of class(es) Pos: accuracy and macro-F1 say nothing of them",
    ]
    for generic in (None, ["LABEL_0", "LABEL_1", "LABEL_2"]):
        with pytest.raises(UserError, match=r"eval labels not seen in training: \['neutral'\]"):
            load_dataset(cfg, generic)


def test_one_image_as_the_data_source_says_a_folder_is_wanted(tmp_path):
    (tmp_path / "cat.png").write_bytes(b"\x89PNG")
    cfg = cnn_cfg(tmp_path)
    cfg.data.source = "cat.png"
    with pytest.raises(UserError, match="'cat.png' is one image; image data is a folder") as e:
        load_dataset(cfg)
    assert e.value.field == "data.source"


def test_a_semicolon_separated_csv_says_so(tmp_path):
    from kdc.data.readers import read_delimited

    path = csv_file(tmp_path / "d.csv", "text;label\na b;pos\nc d;neg\n")
    with pytest.raises(UserError, match="looks ';'-separated: save the file comma-separated"):
        read_delimited(path, "text", "label", ",")
    path = csv_file(tmp_path / "d.csv", "text;label\na, b;pos\nc d;neg\n")  # a comma in a text
    with pytest.raises(UserError, match="line 2 has 2 field.*looks ';'-separated"):
        read_delimited(path, "text", "label", ",")


def test_labels_spelled_two_ways_in_training_name_the_training_file(tmp_path):
    csv_file(tmp_path / "train.csv", "text,label\n" + ROWS + "film x,Pos\n")
    csv_file(tmp_path / "ev.csv", "text,label\na film,pos\n")
    with pytest.raises(UserError, match=r"train\.csv: field 'data.label_column': labels Pos / pos"):
        load_dataset(text_cfg(tmp_path, source="train.csv", eval="ev.csv"))


def test_eval_rows_that_repeat_training_rows_are_noted(tmp_path):
    """An eval file sharing rows with the training file (spaces aside) is noted with the count;
    one share under 1 % is not, nor are distinct rows."""
    csv_file(tmp_path / "train.csv", "text,label\n" + ROWS)
    repeats = "film  1,pos\n film 2 ,neg\n" + "".join(f"new {i},pos\n" for i in range(8))
    csv_file(tmp_path / "ev.csv", "text,label\n" + repeats)
    ds = load_dataset(text_cfg(tmp_path, source="train.csv", eval="ev.csv"))
    assert [n for n in ds.notes if "training row" in n] == [
        "2 of the 10 eval rows (20%) have the text of a training row: the models were trained "
        "on them, so the accuracies are not wholly held out; drop them from the eval data for "
        "a held-out figure"
    ]
    fresh = "".join(f"new {i},{'pos' if i % 2 else 'neg'}\n" for i in range(200))
    csv_file(tmp_path / "ev.csv", "text,label\nfilm 1,pos\n" + fresh)
    ds = load_dataset(text_cfg(tmp_path, source="train.csv", eval="ev.csv"))
    assert not [n for n in ds.notes if "training row" in n]
    # images: the same pixels in the training and eval folders
    train, held = (
        image_folder(tmp_path, {"cat": 4, "dog": 4}),
        image_folder(tmp_path / "ev", {"cat": 2, "dog": 2}),
    )
    ds = load_dataset(cnn_cfg(tmp_path, source=str(train), eval=str(held), image_size=8))
    assert [n for n in ds.notes if "training row" in n][0].startswith(
        "4 of the 4 eval rows (100%) have the image of a training row"
    )


def test_an_eval_label_training_lacks_is_named_with_what_to_change(tmp_path):
    """A class whose only row the held-out split took names data.eval_fraction (there is no
    eval file to fix); an eval file's labels are named without those the teacher knows."""
    rows = [f"film {i},{'rare' if i == 0 else 'pos' if i % 2 else 'neg'}" for i in range(20)]
    csv_file(tmp_path / "d.csv", "text,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(UserError) as e:  # 18 held out: 9 of 10 pos, 8.1 of 9 neg, 0.9 of 1 rare
        load_dataset(text_cfg(tmp_path, source="d.csv", eval_fraction=0.9))
    assert e.value.field == "data.eval_fraction" and "['rare']" in e.value.message
    assert "held out all their rows" in e.value.message and "more rows" in e.value.fix
    csv_file(tmp_path / "train.csv", "text,label\n" + ROWS)
    csv_file(tmp_path / "ev.csv", "text,label\nok,neutral\nso-so,misc\nbad,neg\n")
    with pytest.raises(UserError, match=r"not seen in training: \['misc'\] \(fix") as e:
        load_dataset(
            text_cfg(tmp_path, source="train.csv", eval="ev.csv"), ["neg", "neutral", "pos"]
        )
    assert e.value.field == "data.eval"


@pytest.mark.parametrize(("name", "row"), [("d.csv", b"film %d,pos\n"), ("d.jsonl", None)])
def test_a_byte_that_is_not_utf8_is_named_by_its_line_and_offset_in_the_file(tmp_path, name, row):
    """Past the text stream's first chunk its error counted bytes from that chunk: a Latin-1
    byte at byte 100,000 was reported at byte 1,700 or so."""
    lines = [b"text,label\n" if row else b""]
    lines += [row % i if row else b'{"text": "film %d", "label": "pos"}\n' % i for i in range(5000)]
    data = b"".join(lines)
    at = data.index(b"film 4000") + 4
    path = tmp_path / name
    path.write_bytes(data[:at] + b"\xe9" + data[at + 1 :])
    cfg = text_cfg(tmp_path, source=name)
    with pytest.raises(UserError) as e:
        load_dataset(cfg)
    line = data.count(b"\n", 0, at) + 1
    assert e.value.message == f"not UTF-8 at line {line} (byte {at}: b'\\xe9')"
    assert e.value.field == "data.source" and e.value.source == str(path)


def test_every_row_without_a_usable_text_or_label_is_counted_in_one_error(tmp_path):
    """Blank cells over a file are named at once (the first, how many more and where), not one
    run at a time."""
    rows = [f"film {i},{'pos' if i % 2 else 'neg'}" for i in range(40)]
    for i in (3, 9, 20, 31, 33, 35, 37):
        rows[i] = f",{'pos' if i % 2 else 'neg'}"
    rows[25] = "film 25,"
    path = csv_file(tmp_path / "d.csv", "text,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(UserError) as e:
        read_delimited(path, "text", "label", ",")
    assert e.value.message == (
        "the text at line 5 is blank; 7 more line(s) lack a usable text or label too: "
        "11, 22, 27, 33, 35 … and 2 more"
    )
    assert (
        e.value.field == "data.text_column" and e.value.fix == "fill in or drop each of those lines"
    )
