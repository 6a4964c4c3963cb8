"""`kdc init`: inspect a teacher and a data file, write a commented model.yaml that validates
and runs; mismatches and unreadable inputs are one-line errors (exit 2)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from tiny import image_folder, write_csv
from typer.testing import CliRunner

from kdc.cli import app
from kdc.config import load_config

runner = CliRunner()


def _init(*args: str):
    return runner.invoke(app, ["init", *map(str, args)])


def test_init_on_tiny_bert_writes_a_config_that_runs(bert_project, tmp_path):
    root = bert_project.parent
    out = tmp_path / "cfg" / "model.yaml"
    res = _init(root / "teacher", "--data", root / "train.csv", "--out", out)
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert text.count("\n#") + text.count("   # ") > 5  # commented for a person
    cfg = load_config(out)
    assert cfg.task == "text-classification"
    assert cfg.resolve(cfg.teacher.path).resolve() == (root / "teacher").resolve()
    assert cfg.resolve(cfg.data.source).resolve() == (root / "train.csv").resolve()
    assert (cfg.data.text_column, cfg.data.label_column) == ("text", "label")
    assert cfg.student.layers == 2  # half of the teacher's 4
    assert 16 <= cfg.data.max_length <= 64  # the tiny BERT has 64 positions
    assert "of rows fit (at ~1.5 tokens a word), longer are cut" in text

    assert "2 classes" in res.output and "negative, positive" in text
    # ready to run: the plan resolves teacher, data and target
    plan = runner.invoke(app, ["compress", str(out), "--dry-run"])
    assert plan.exit_code == 0, plan.output
    assert json.loads(plan.output)["data"]["num_labels"] == 2


def test_init_guesses_columns_by_content(bert_project, tmp_path):
    root = bert_project.parent
    rows = [{"id": i, "review": t, "stars": lab} for i, (t, lab) in enumerate(_rows(root))]
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = _init(root / "teacher", "--data", data, "--out", tmp_path / "m.yaml")
    assert res.exit_code == 0, res.output
    cfg = load_config(tmp_path / "m.yaml")
    assert (cfg.data.text_column, cfg.data.label_column) == ("review", "stars")


def test_init_reads_a_datasets_directory(bert_project, tmp_path):
    """A `save_to_disk` directory is table data, not an image folder; the config runs."""
    datasets = pytest.importorskip("datasets")
    root = bert_project.parent
    texts, labels = zip(*_rows(root), strict=True)
    part = datasets.Dataset.from_dict({"text": list(texts), "label": list(labels)})
    datasets.DatasetDict({"train": part, "test": part.select(range(20))}).save_to_disk(
        str(tmp_path / "ds")
    )
    res = _init(root / "teacher", "--data", tmp_path / "ds", "--out", tmp_path / "m.yaml")
    assert res.exit_code == 0, res.output
    cfg = load_config(tmp_path / "m.yaml")
    assert (cfg.data.text_column, cfg.data.label_column) == ("text", "label")
    # its test split is the eval set: nothing is held out, and the comment says so
    text = (tmp_path / "m.yaml").read_text()
    assert "reads the directory's 'test' split" in text and "eval_fraction" not in text
    plan = runner.invoke(app, ["compress", str(tmp_path / "m.yaml"), "--dry-run"])
    assert plan.exit_code == 0, plan.output


def _rows(root):
    import csv

    with open(root / "train.csv") as f:
        return [(r["text"], r["label"]) for r in csv.DictReader(f)][:60]


def test_init_refuses_label_count_mismatch(bert_project, tmp_path):
    data = write_csv(
        tmp_path / "three.csv", [("good movie", "a"), ("bad plot", "b"), ("fine film", "c")] * 5
    )
    res = _init(bert_project.parent / "teacher", "--data", data, "--out", tmp_path / "m.yaml")
    assert res.exit_code == 2
    assert "2 labels" in res.output and "3" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "m.yaml").exists()


def test_init_safetensors_asks_for_the_entrypoint(tmp_path):
    from safetensors.torch import save_file

    from kdc.models.cnn import small_cnn

    weights = tmp_path / "teacher" / "model.safetensors"
    weights.parent.mkdir()
    save_file(small_cnn(num_classes=10, channels=[8]).state_dict(), str(weights))
    res = _init(weights, "--data", "sklearn:digits", "--out", tmp_path / "m.yaml")
    assert res.exit_code == 0, res.output
    text = (tmp_path / "m.yaml").read_text()
    assert "CHANGE" in text and "entrypoint:" in text and "num_classes: 10" in text
    cfg = load_config(tmp_path / "m.yaml")
    assert cfg.task == "image-classification" and cfg.name == "teacher"
    assert cfg.resolve(cfg.teacher.weights) == weights
    assert "entrypoint" in res.output


def test_init_weights_without_a_named_head_take_the_datas_classes(tmp_path):
    """An nn.Sequential's weights (`3.weight`, no classifier/head/fc): the config still parses,
    num_classes is the data's class count, marked to check (a comment inside the flow mapping
    made the YAML invalid)."""
    from safetensors.torch import save_file

    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(8), torch.nn.Linear(8, 10)
    )
    net(torch.zeros(1, 1, 8, 8))
    weights = tmp_path / "seq.safetensors"
    save_file(net.state_dict(), str(weights))
    res = _init(weights, "--data", "sklearn:digits", "--out", tmp_path / "m.yaml")
    assert res.exit_code == 0, res.output
    cfg = load_config(tmp_path / "m.yaml")
    assert cfg.teacher.kwargs == {"num_classes": 10}
    assert "CHANGE if not: the data's classes" in (tmp_path / "m.yaml").read_text()


def test_init_errors_are_one_line(bert_project, tmp_path):
    root = bert_project.parent
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("text,label\ncaf\xe9 bien,positive\n".encode("latin-1"))
    (tmp_path / "exists.yaml").write_text("x: 1\n")
    (tmp_path / "adir").mkdir()
    (tmp_path / "list.jsonl").write_text('{"text": "good", "label": 1}\n[1, 2]\n')
    (tmp_path / "texts.txt").write_text("a good film\na bad plot\n")  # no labels
    cases = [
        ([tmp_path / "missing", "--data", root / "train.csv"], "MODEL_DIR"),
        ([root / "teacher", "--data", tmp_path / "nope.csv"], "--data"),
        ([root / "teacher", "--data", bad], "--data"),
        ([root / "teacher", "--data", tmp_path / "list.jsonl"], "--data"),
        ([root / "teacher", "--data", "sklearn:digits"], "--data"),
        ([root / "teacher", "--data", tmp_path / "texts.txt"], "--data"),
        (
            [root / "teacher", "--data", root / "train.csv", "--out", tmp_path / "exists.yaml"],
            "--out",
        ),
        (
            [root / "teacher", "--data", root / "train.csv", "--out", tmp_path / "adir", "--force"],
            "--out",
        ),
    ]
    for args, field in cases:
        res = _init(*args, *([] if "--out" in args else ["--out", tmp_path / "new.yaml"]))
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and field in lines[0], (args, res.output)
    assert not (tmp_path / "new.yaml").exists()
    assert (tmp_path / "exists.yaml").read_text() == "x: 1\n"
    assert (tmp_path / "adir").is_dir() and not list(tmp_path.glob(".*.tmp"))


HF_CONFIG = {
    "architectures": ["BertForSequenceClassification"],
    "num_labels": 2,
    "id2label": {"0": "negative", "1": "positive"},
}


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ({}, ("MODEL_DIR", "no tokenizer", "save_pretrained")),
        ({"tokenizer.json": "{oops"}, ("tokenizer.json", "MODEL_DIR", "save_pretrained")),
        ({"config.json": b"\xff\xfe{\x00}"}, ("config.json", "MODEL_DIR", "UTF-8")),
        ({"config.json": "[1, 2]"}, ("config.json", "MODEL_DIR", "an array")),
        (
            {"config.json": json.dumps({**HF_CONFIG, "id2label": ["negative", "positive"]})},
            ("config.json", "'id2label'", "an array"),
        ),
        (
            {"config.json": json.dumps({**HF_CONFIG, "id2label": {"neg": "negative"}})},
            ("config.json", "'id2label'", "'neg'"),
        ),
    ],
    ids=[
        "no tokenizer",
        "tokenizer.json corrupt",
        "config not UTF-8",
        "config a list",
        "id2label a list",
        "id2label keyed by name",
    ],
)
def test_init_refuses_a_teacher_directory_compress_cannot_load(tmp_path, files, words):
    """kdc init fails as the teacher loader would, instead of writing a config that crashes."""
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    base = {"config.json": json.dumps(HF_CONFIG), "model.safetensors": ""}
    base |= {"vocab.txt": "[UNK]\n"} if files else {}
    for name, content in (base | files).items():
        (teacher / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    data = write_csv(tmp_path / "d.csv", [("good movie", "positive"), ("bad plot", "negative")] * 5)
    res = _init(teacher, "--data", data, "--out", tmp_path / "m.yaml")
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert all(w in lines[0] for w in words), res.output
    assert not (tmp_path / "m.yaml").exists()


@pytest.mark.parametrize(
    "name",
    ["tokenizer_config.json", "spm.model", "sentencepiece.model", "vocab.json", "sp.spm"],
)
def test_tokenizer_layouts_of_other_models_are_recognised(tmp_path, name):
    """DeBERTa's spm.model, RemBERT's sentencepiece.model, a byte-level tokenizer's config."""
    from kdc.hf_files import check_tokenizer

    (tmp_path / name).write_text("{}")
    check_tokenizer(tmp_path, "MODEL_DIR")


def test_init_reads_past_a_utf8_bom_as_compress_does(bert_project, tmp_path):
    """Excel's "CSV UTF-8" starts with a BOM: the column is `text`, not `\\ufefftext`."""
    root = bert_project.parent
    data = tmp_path / "bom.csv"
    data.write_bytes(b"\xef\xbb\xbf" + (root / "train.csv").read_bytes())
    out = tmp_path / "model.yaml"
    assert _init(root / "teacher", "--data", data, "--out", out).exit_code == 0
    assert load_config(out).data.text_column == "text"


def test_init_parses_quotes_as_compress_does(bert_project, tmp_path):
    """An unquoted TSV text opening a quote it never closes merges rows in a lenient reader:
    kdc init refuses it with compress's error instead of writing a config compress refuses."""
    data = tmp_path / "d.tsv"
    rows = '"Best drug ever\tpositive\nawful side effects\tnegative\n'
    data.write_text("text\tlabel\n" + rows * 5)
    res = _init(bert_project.parent / "teacher", "--data", data, "--out", tmp_path / "m.yaml")
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert "--data" in lines[0] and "quote" in lines[0] and "line 2" in lines[0], res.output


@pytest.mark.parametrize(
    ("arch", "extra"),
    [
        ("ViTModel", {"image_size": 224, "patch_size": 16, "num_channels": 3}),  # no text
        ("GPT2LMHeadModel", {"vocab_size": 50257}),  # a language-model head
        ("T5Model", {"vocab_size": 32128, "is_encoder_decoder": True}),
        ("ResNetForImageClassification", {"num_channels": 3}),  # not a ViT: no patches
        ("BertForMaskedLM", {"vocab_size": 30522}),
    ],
)
def test_init_refuses_architectures_compress_cannot_run(tmp_path, arch, extra):
    """A bare `*Model` is a sentence encoder only as a text encoder (ViTModel was taken for one
    and refused for want of a tokenizer); an image classifier needs a ViT's patch geometry."""
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text(json.dumps({"architectures": [arch], **extra}))
    (teacher / "vocab.txt").write_text("[UNK]\n")
    res = _init(teacher, "--data", "sklearn:digits", "--out", tmp_path / "m.yaml")
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert f"'{arch}'" in lines[0] and "'architectures'" in lines[0], res.output


def test_init_embedding_tables_need_a_text_column(tmp_path):
    """For an encoder a table needs only a text column: without one (numbers only) or without
    rows, the fix names a text column and no label column."""
    from kdc.errors import UserError
    from kdc.init import TeacherInfo
    from kdc.init_data import _read_csv, _rows_data

    teacher = TeacherInfo("huggingface", tmp_path, "sentence-embedding", None)
    (tmp_path / "n.csv").write_text("id,score\n1,0.5\n2,0.7\n")
    (tmp_path / "h.csv").write_text("text\n")
    for name, problem in (("n.csv", "no text column"), ("h.csv", "0 rows")):
        with pytest.raises(UserError, match=problem) as e:
            _rows_data(tmp_path / name, _read_csv(tmp_path / name, ","), teacher)
        assert "label" not in e.value.fix and "text" in e.value.fix
    (tmp_path / "t.csv").write_text("sentence\na good film\na bad plot\n")
    info = _rows_data(tmp_path / "t.csv", _read_csv(tmp_path / "t.csv", ","), teacher)
    assert (info.text_column, info.label_column, info.rows) == ("sentence", None, 2)


def _hf_dir(path, conf: dict, **files: str):
    """A Hugging Face directory as kdc init reads it: config.json (None: none) and `files`."""
    path.mkdir()
    if conf is not None:
        (path / "config.json").write_text(json.dumps(conf))
    for name, content in {"model.safetensors": "", **files}.items():
        (path / name).write_text(content)
    return path


def test_init_refuses_labels_the_teacher_does_not_name(tmp_path):
    """compress's check: data labels negative/positive cannot be matched to id2label neg/pos."""
    conf = {**HF_CONFIG, "id2label": {"0": "neg", "1": "pos"}}
    teacher = _hf_dir(tmp_path / "teacher", conf, **{"vocab.txt": "[UNK]\n"})
    data = write_csv(tmp_path / "d.csv", [("good movie", "positive"), ("bad plot", "negative")])
    res = _init(teacher, "--data", data, "--out", tmp_path / "m.yaml")
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert "are not the teacher's ['neg', 'pos']" in lines[0] and "d.csv" in lines[0]
    assert not (tmp_path / "m.yaml").exists()
    # names matching but for case and spaces, or generic ones, are accepted as compress does
    write_csv(data, [("good movie", "Pos "), ("bad plot", "NEG")])
    assert _init(teacher, "--data", data, "--out", tmp_path / "m.yaml").exit_code == 0


def test_init_notes_1_based_labels_taken_as_a_named_teachers_classes(tmp_path):
    """As validate and compress: labels 1/2 against id2label neg/pos are matched in order."""
    conf = {**HF_CONFIG, "id2label": {"0": "neg", "1": "pos"}}
    teacher = _hf_dir(tmp_path / "teacher", conf, **{"vocab.txt": "[UNK]\n"})
    data = write_csv(tmp_path / "d.csv", [("good movie", "2"), ("bad plot", "1")] * 3)
    res = _init(teacher, "--data", data, "--out", tmp_path / "m.yaml")
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "labels 1, 2 are taken as the teacher's classes in index order: 1 → neg" in said


def test_init_takes_data_lacking_one_of_the_teachers_named_classes_and_notes_it(tmp_path):
    """As compress: a class the training data lacks is allowed (the teacher's outputs teach it)."""
    conf = {**HF_CONFIG, "id2label": {"0": "neg", "1": "neutral", "2": "pos"}}
    teacher = _hf_dir(tmp_path / "teacher", conf, **{"vocab.txt": "[UNK]\n"})
    data = write_csv(tmp_path / "d.csv", [("good movie", "pos"), ("bad plot", "neg")] * 3)
    res = _init(teacher, "--data", data, "--out", tmp_path / "m.yaml")
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "warning: " in said and "d.csv has no rows of class(es) neutral" in said
    assert (tmp_path / "m.yaml").is_file()


def test_init_on_a_model_directory_without_config_json_says_so(tmp_path):
    """A save_pretrained directory that lost config.json is not a CNN's weights."""
    from safetensors.torch import save_file

    files = {"vocab.txt": "[UNK]\n"}, {}
    data = write_csv(tmp_path / "d.csv", [("good movie", "positive"), ("bad plot", "negative")])
    for i, side in enumerate(files):
        teacher = _hf_dir(tmp_path / f"t{i}", None, **side)
        weights = {"classifier.weight": torch.zeros(2, 4)}
        save_file(weights, str(teacher / "model.safetensors"), metadata={"format": "pt"})
        res = _init(teacher, "--data", data, "--out", tmp_path / "m.yaml")
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 2 and len(lines) == 1, res.output
        assert "no config.json" in lines[0] and "MODEL_DIR" in lines[0], res.output


VIT = {
    "architectures": ["ViTForImageClassification"],
    "image_size": 8,
    "patch_size": 2,
    "num_channels": 3,
    "id2label": {"0": "cat", "1": "dog"},
}


def test_init_reads_an_image_folder_as_compress_does(tmp_path):
    """Hidden folders are not classes; an empty class folder or a broken image is refused with
    the reader's error naming it."""
    teacher = _hf_dir(tmp_path / "vit", VIT)
    imgs = image_folder(tmp_path, {"cat": 2, "dog": 3, ".ipynb_checkpoints": 1})
    out = tmp_path / "m.yaml"
    res = _init(teacher, "--data", imgs, "--out", out)
    assert res.exit_code == 0, res.output
    assert "2 classes" in res.output and "5 images" in out.read_text()
    (imgs / "bird").mkdir()
    res = _init(teacher, "--data", imgs, "--out", out, "--force")
    (imgs / "bird").rmdir()
    (imgs / "cat" / "broken.jpg").write_text("not an image")
    res2 = _init(teacher, "--data", imgs, "--out", out, "--force")
    for r, problem, source in ((res, "holds no images", "bird"), (res2, "not an image", "broken")):
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1, r.output
        assert problem in lines[0] and source in lines[0] and "--data" in lines[0], r.output


def test_init_reads_a_folder_of_split_folders_as_source_and_eval(tmp_path):
    """`data/train/<class>`, `data/test/<class>`: train is data.source, test data.eval."""
    teacher = _hf_dir(tmp_path / "vit", VIT)
    for split, n in (("train", 3), ("test", 2)):
        image_folder(tmp_path / split, {"cat": n, "dog": n}).rename(tmp_path / split / split)
        (tmp_path / "data").mkdir(exist_ok=True)
        (tmp_path / split / split).rename(tmp_path / "data" / split)
    out = tmp_path / "m.yaml"
    res = _init(teacher, "--data", tmp_path / "data", "--out", out)
    assert res.exit_code == 0, res.output
    cfg = load_config(out)
    assert cfg.data.source == "data/train" and cfg.data.eval == "data/test"
    assert "6 images" in out.read_text() and "eval_fraction" not in out.read_text()
    res = _init(teacher, "--data", tmp_path / "data" / "train", "--out", out, "--force")
    assert res.exit_code == 0, res.output
    assert load_config(out).data.eval == "data/test"  # the training split's sibling


def test_init_names_the_line_of_a_blank_text_or_label(bert_project, tmp_path):
    teacher = bert_project.parent / "teacher"
    good, bad = "a good film, well acted", "a bad plot and worse acting"
    for rows, words in (
        ([(good, "positive"), (bad, ""), (good, "positive")], "label at line 3"),
        ([(good, "positive"), ("", "negative"), (bad, "negative")], "text at line 3"),
    ):
        write_csv(tmp_path / "d.csv", rows)
        res = _init(teacher, "--data", tmp_path / "d.csv", "--out", tmp_path / "m.yaml")
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 2 and len(lines) == 1, res.output
        assert words in lines[0] and "blank" in lines[0] and "d.csv" in lines[0], res.output


def test_init_messages_and_comments(bert_project, tmp_path):
    """A .txt file for a classifier says it has no labels; an image teacher is "an"
    image-classification model; no CHANGE lines, no "check the CHANGE lines"; a path outside
    the config's folder is absolute, one inside it relative."""
    root = bert_project.parent
    (tmp_path / "t.txt").write_text("a good film\n")
    res = _init(root / "teacher", "--data", tmp_path / "t.txt", "--out", tmp_path / "m.yaml")
    assert res.exit_code == 2 and "a .txt file holds texts" in res.output
    assert "label column" in res.output
    vit = _hf_dir(tmp_path / "vit", VIT)
    res = _init(vit, "--data", root / "train.csv", "--out", tmp_path / "m.yaml")
    assert res.exit_code == 2 and "is an image-classification model" in res.output
    (tmp_path / "cfg").mkdir()
    data = shutil.copy(root / "train.csv", tmp_path / "cfg" / "train.csv")
    out = tmp_path / "cfg" / "model.yaml"
    assert _init(root / "teacher", "--data", data, "--out", out).exit_code == 0
    text = out.read_text()
    assert "CHANGE" not in text
    cfg = load_config(out)
    assert cfg.teacher.path == str((root / "teacher").resolve()) and cfg.data.source == "train.csv"


def _images(root, sizes: dict[str, list[int]]):
    """root/imgs/<class>/<i>.png: RGB squares of the given side lengths per class."""
    from PIL import Image

    for cls, sides in sizes.items():
        (root / "imgs" / cls).mkdir(parents=True, exist_ok=True)
        for i, side in enumerate(sides):
            Image.new("RGB", (side, side), (60 * i, 0, 100)).save(root / "imgs" / cls / f"{i}.png")
    return root / "imgs"


@pytest.mark.parametrize("in_channels", [1, 3])
def test_init_sets_a_cnns_image_size_and_channels_from_the_images_and_weights(
    tmp_path, in_channels
):
    """32×32 images were read at 224 px, and a grayscale CNN's as RGB (compress then failed):
    the config reads them at their own size, with the channels the first conv takes."""
    from safetensors.torch import save_file

    from kdc.data import load_dataset
    from kdc.models.cnn import small_cnn

    weights = tmp_path / "teacher" / "model.safetensors"
    weights.parent.mkdir()
    model = small_cnn(in_channels=in_channels, num_classes=2, channels=[8, 16])
    save_file(model.state_dict(), str(weights))
    imgs = _images(tmp_path, {"a": [32] * 3, "b": [32] * 3})
    out = tmp_path / "m.yaml"
    assert _init(weights, "--data", imgs, "--out", out).exit_code == 0
    cfg = load_config(out)
    assert (cfg.data.image_size, cfg.data.channels) == (32, in_channels)
    assert load_dataset(cfg).train.features.shape[1:] == (in_channels, 32, 32)
    # images of several sizes: no one size to read them at
    _images(tmp_path, {"b": [32, 32, 32, 16]})
    assert _init(weights, "--data", imgs, "--out", out, "--force").exit_code == 0
    assert load_config(out).data.image_size is None


@pytest.mark.parametrize(("stem", "channels"), [(3, 3), (1, 1)])
def test_init_reads_a_cnns_channels_from_its_stem_not_a_depthwise_conv(tmp_path, stem, channels):
    """timm names its depthwise blocks before its stem (`blocks` < `conv_stem`); a depthwise conv
    reads one channel per group, which is no grayscale input."""
    from safetensors.torch import save_file

    weights = tmp_path / "model.safetensors"
    shapes = {
        "blocks.0.0.conv_dw.weight": (8, 1, 3, 3),
        "conv_stem.weight": (8, stem, 3, 3),
        "classifier.weight": (2, 8),
    }
    save_file({k: torch.zeros(s) for k, s in shapes.items()}, str(weights))
    imgs = _images(tmp_path, {"a": [8], "b": [8]})
    assert _init(weights, "--data", imgs, "--out", tmp_path / "m.yaml").exit_code == 0
    assert load_config(tmp_path / "m.yaml").data.channels == channels
    hint = "# mean: [0.485, 0.456, 0.406]"  # an RGB CNN's Normalize, commented out
    assert (hint in (tmp_path / "m.yaml").read_text()) == (channels == 3)


def test_init_reads_an_image_folder_with_a_vits_channels_at_its_size(tmp_path):
    """A one-channel ViT: the config reads the folder as grayscale (validate, which checks the
    channels against config.json, passes) and leaves the size to the ViT's config (8 px)."""
    from kdc.data import load_dataset

    teacher = _hf_dir(tmp_path / "vit", {**VIT, "num_channels": 1})
    imgs = _images(tmp_path, {"cat": [32] * 3, "dog": [32] * 3})
    out = tmp_path / "m.yaml"
    assert _init(teacher, "--data", imgs, "--out", out).exit_code == 0
    cfg = load_config(out)
    assert (cfg.data.image_size, cfg.data.channels) == (None, 1)
    assert load_dataset(cfg).train.features.shape[1:] == (1, 8, 8)
    (teacher / "model.safetensors").write_bytes(b"")  # validate checks it is there
    res = runner.invoke(app, ["validate", str(out)])
    assert res.exit_code == 0, res.output
    # a three-channel one: RGB, as an image folder is read by default
    teacher = _hf_dir(tmp_path / "vit3", VIT)
    assert _init(teacher, "--data", imgs, "--out", out, "--force").exit_code == 0
    assert load_config(out).data.channels == 3 and "  channels:" not in out.read_text()


def test_init_says_when_max_length_is_capped_by_the_teachers_positions():
    from kdc.init_data import _max_length

    n, note = _max_length(["word " * 300] * 10 + ["short one"] * 5, 128)
    assert n == 128 and note.startswith("tokens (the teacher's max_position_embeddings); ~33%")
    n, note = _max_length(["a few words here"] * 20, 512)
    assert n == 16 and "~100% of rows fit" in note


def test_init_reads_a_glob_of_text_files_alone(tmp_path, monkeypatch):
    """An embedding teacher's `--data 'd/*'`: .txt files are read as texts, counted as files;
    a .csv among them was read as text lines too (its header a text), where compress refuses
    the glob (several formats)."""
    from kdc.errors import UserError
    from kdc.init import TeacherInfo
    from kdc.init_data import inspect_data

    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("one review here\nanother review there\n")
    (tmp_path / "d" / "b.txt").write_text("a third review\n")
    teacher = TeacherInfo("huggingface", tmp_path, "sentence-embedding", None)
    info = inspect_data("d/*", teacher)
    assert (info.rows, info.files) == (3, 2)
    (tmp_path / "d" / "c.csv").write_text("text,label\nfilm one,pos\n")
    with pytest.raises(UserError, match=r"cannot read '\.csv/\.txt' files together") as e:
        inspect_data("d/*", teacher)
    assert e.value.field == "--data" and e.value.source == "d/*"


def test_init_into_a_place_it_cannot_write_is_a_user_error(tmp_path):
    """--out under a file (or a read-only folder): one line naming --out (exit 2), not an
    internal error with a traceback."""
    teacher = _hf_dir(tmp_path / "t", HF_CONFIG, **{"vocab.txt": "[UNK]\n"})
    data = write_csv(tmp_path / "d.csv", [("good movie", "positive"), ("bad plot", "negative")])
    (tmp_path / "afile").write_text("")
    res = _init(teacher, "--data", data, "--out", tmp_path / "afile" / "m.yaml")
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert "field '--out': cannot write the config" in lines[0], res.output


def test_init_on_a_semicolon_separated_csv_says_so_as_compress_does(tmp_path):
    """An Excel export with ';': init said only "columns ['text;label']" and to give a header
    with a text and a label column, which it has; compress named the delimiter."""
    teacher = _hf_dir(tmp_path / "t", HF_CONFIG, **{"vocab.txt": "[UNK]\n"})
    data = tmp_path / "d.csv"
    data.write_text("text;label\ngood movie;positive\nbad plot;negative\n")
    res = _init(teacher, "--data", data, "--out", tmp_path / "m.yaml")
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert "field '--data'" in lines[0] and "looks ';'-separated" in lines[0], res.output
