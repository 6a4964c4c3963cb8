"""`kdc validate` and the start of every run check what needs no model or data loaded: the
teacher's source and entrypoint import, files the config names, loss and proxy names (validate
then reads the data, as --dry-run does, and checks it against the teacher's config.json as the
run would). One line, exit 2, naming the config file (or the data file) and the field; a run
that fails them leaves nothing behind."""

from __future__ import annotations

import re

import pytest
from preflight_projects import (
    PROCESSOR_8,
    runner,
)
from preflight_projects import config as _config
from preflight_projects import dry_run as _dry_run
from preflight_projects import image_project as _image_project
from preflight_projects import one_line as _one_line
from preflight_projects import text_project as _text_project
from preflight_projects import weights as _weights
from tiny import cnn_config, hf_stub, write_yaml

from kdc.cli import app

BAD = [
    ("teacher", {"teacher": {"entrypoint": None, "weights": None}}),
    ("teacher", {"teacher": {"path": "teacher_dir"}}),  # path and entrypoint
    ("teacher.weights", {"teacher": {"weights": "missing.safetensors"}}),
    ("data.source", {"data": {"source": "missing.csv"}}),
    ("data.eval", {"data": {"eval": "missing_eval.csv"}}),
    ("distill.losses", {"distill": {"losses": [{"name": "logitz"}]}}),
    ("distill.losses", {"distill": {"losses": ["logits", "logitz"]}}),  # bare names
    (
        "distill.losses[1].params",
        {"distill": {"losses": [{"name": "ce"}, {"name": "logits", "params": {"bogus": 1}}]}},
    ),
    ("distill.losses[0].wieght", {"distill": {"losses": [{"name": "logits", "wieght": 1}]}}),
    ("search.proxy", {"search": {"proxy": "nosuch"}}),
    ("distill.augment", {"distill": {"augment": "swap"}}),  # a text augmentation, a CNN
    (  # a sentence encoder has no classifier head whose input a loss could read
        "distill.losses[0].params.on",
        {
            "task": "sentence-embedding",
            "distill": {"losses": [{"name": "relation", "params": {"on": "pooled"}}]},
        },
    ),
    ("search.proxies", {"search": {"proxies": ["params", "nosuch"]}}),
    ("search.space.layers", {"search": {"space": {"layers": [2]}}}),  # a CNN's sizes
    ("teacher.entrypoint", {"teacher": {"entrypoint": "nosuchpkg.mod:fn"}}),  # not importable
    ("teacher.entrypoint", {"teacher": {"entrypoint": "kdc.models.cnn:nosuchfn"}}),
    ("build.max_batch", {"build": {"max_batch": 2}, "verify": {"batch": 4}}),  # below verify's
    (  # a classifier that would read its labels as its input
        "data.text_column",
        {"task": "text-classification", "data": {"text_column": "label"}},
    ),
]


@pytest.mark.parametrize(("field", "over"), BAD, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD)])
def test_validate_rejects_what_compress_would(tmp_path, field, over):
    cfg = _config(tmp_path, **over)
    line = _one_line(runner.invoke(app, ["validate", str(cfg)]))
    assert line.startswith(f"error: {cfg}: field '{field}'"), line


@pytest.mark.parametrize(
    ("entrypoint", "said"),
    [  # the package not installed; a module the package lacks; a function the module lacks
        ("nosuchpkg.mod:fn", "not importable (no package 'nosuchpkg' is installed or in the "),
        ("kdc.models.nosuch:fn", "not importable (no module 'kdc.models.nosuch')"),
        ("kdc.models.cnn:nosuchfn", "module 'kdc.models.cnn' has no 'nosuchfn'"),
    ],
)
def test_an_entrypoint_that_does_not_import_says_why(tmp_path, entrypoint, said):
    """The fix was "use 'package.module:function' importable from the config's folder" whatever
    failed: now it names what is missing and, for a package, `pip install` or the path."""
    line = _one_line(
        runner.invoke(app, ["validate", str(_config(tmp_path, teacher={"entrypoint": entrypoint}))])
    )
    assert said in line, line
    fix = "pip install nosuchpkg, or fix the path" if "pkg" in entrypoint else "fix:"
    assert fix in line, line


def test_compress_fails_before_the_run_dir_is_made(tmp_path):
    cfg = _config(tmp_path, distill={"losses": [{"name": "logitz"}]})
    run = tmp_path / "run"
    line = _one_line(runner.invoke(app, ["compress", str(cfg), "--out", str(run), "-q"]))
    assert "distill.losses" in line and "logits" in line and not run.exists()


def test_fp16_is_refused_for_a_target_without_tensorrt(tmp_path):
    """ONNX Runtime builds FP32 and INT8 only: on the host, fp16 used to run every stage and
    then fail its constraints for want of an fp16 engine (exit 1)."""
    cfg = _config(tmp_path, quantize={"precision": "fp16"})
    run = tmp_path / "run"
    for args in (["--out", str(run), "-q"], ["--dry-run"]):
        line = _one_line(runner.invoke(app, ["compress", str(cfg), "--target", "host", *args]))
        assert line.startswith(f"error: {cfg}: field 'quantize.precision'") and "jetson" in line
    assert not run.exists()
    res = runner.invoke(app, ["compress", str(cfg), "--target", "jetson", "--dry-run"])
    assert res.exit_code == 0, res.output


def test_engines_the_target_does_not_run_are_refused(tmp_path):
    """Only TensorRT asked for on the host: nothing would be built or verified, yet the run
    passed (its one engine `unavailable`)."""
    cfg = _config(tmp_path, build={"engines": ["tensorrt"]})
    line = _one_line(runner.invoke(app, ["compress", str(cfg), "--target", "host", "--dry-run"]))
    assert line == (
        f"error: {cfg}: field 'build.engines': target host runs onnxruntime only: no engine of "
        "tensorrt would be built or verified (fix: add onnxruntime, or pick a target that runs "
        "tensorrt)"
    )
    res = runner.invoke(app, ["compress", str(cfg), "--target", "jetson", "--dry-run"])
    assert res.exit_code == 0, res.output


def test_a_field_error_from_a_stage_names_the_config(tmp_path):
    cfg = _config(tmp_path, teacher={"entrypoint": "nosuchpkg.mod:fn"})
    res = runner.invoke(app, ["compress", str(cfg), "--out", str(tmp_path / "r"), "-q"])
    line = _one_line(res)
    assert line.startswith(f"error: {cfg}: field 'teacher.entrypoint'"), line


def test_an_unknown_loss_parameter_names_the_ones_it_takes(tmp_path):
    cfg = _config(tmp_path, distill={"losses": [{"name": "logits", "params": {"temp": 2}}]})
    line = _one_line(runner.invoke(app, ["validate", str(cfg)]))
    assert "loss 'logits' takes no parameter 'temp'" in line and "use temperature, alpha" in line


def test_an_unquoted_on_parameter_is_read_as_on(tmp_path):
    """YAML 1.1 reads `on:` as true; the relation loss's parameter is named `on`."""
    cfg = _config(tmp_path, distill={"losses": [{"name": "relation", "params": {"on": "output"}}]})
    text = cfg.read_text()
    assert "'on':" in text  # as PyYAML writes it; a user writes it bare
    cfg.write_text(text.replace("'on':", "on:"))
    res = runner.invoke(app, ["validate", str(cfg)])
    assert res.exit_code == 0, res.output


def test_a_good_config_is_valid(tmp_path):
    res = runner.invoke(app, ["validate", str(_config(tmp_path))])
    assert res.exit_code == 0 and "valid" in res.output
    assert "data 600 train / 200 eval rows, 10 classes" in res.output


@pytest.mark.parametrize(
    ("content", "field", "words"),
    [
        ("text,stars\nok,1\nno,2\n", "data.label_column", "'label' not found"),
        ("", "data.source", "no rows"),
        ("text,label\n" + "good film,pos\n" * 20, "data.label_column", "1 class"),
    ],
    ids=["no label column", "empty", "one class"],
)
def test_validate_reads_the_data_as_dry_run_does(tmp_path, content, field, words):
    """Data that `kdc compress` refuses at once is refused by `kdc validate` too."""
    from tiny import bert_config

    hf_stub(tmp_path / "teacher", {})
    (tmp_path / "d.csv").write_text(content)
    cfg = write_yaml(tmp_path / "model.yaml", bert_config(data={"source": "d.csv", "eval": None}))
    line = _one_line(runner.invoke(app, ["validate", str(cfg)]))
    assert line.startswith(f"error: {tmp_path / 'd.csv'}: field '{field}'") and words in line


def test_a_max_length_beyond_the_teachers_positions_is_refused(tmp_path):
    """A text teacher of 64 positions and data.max_length 128: refused before any stage (it
    failed in distillation, on the first batch holding a longer row)."""

    from tiny import bert_config, sentences, write_csv

    hf_stub(tmp_path / "teacher", {"model_type": "bert", "max_position_embeddings": 64})
    write_csv(tmp_path / "train.csv", sentences(8, 1))
    write_csv(tmp_path / "test.csv", sentences(8, 2))
    cfg = write_yaml(tmp_path / "model.yaml", bert_config(data={"max_length": 128}))
    line = _one_line(runner.invoke(app, ["validate", str(cfg)]))
    assert "data.max_length" in line and "64 positions" in line and "to 64 or less" in line


@pytest.mark.parametrize(
    "conf, limit",
    [
        ({"model_type": "bert", "max_position_embeddings": 512}, 512),
        ({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}, 512),
        ({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 0}, 513),
        (
            {
                "model_type": "deberta-v2",
                "max_position_embeddings": 512,
                "position_biased_input": False,
            },
            None,
        ),
        (
            {
                "model_type": "bert",
                "max_position_embeddings": 512,
                "position_embedding_type": "relative_key",
            },
            None,
        ),
    ],
)
def test_max_positions_of_text_configs(conf, limit):
    from kdc.hf_files import max_positions

    assert max_positions(conf) == limit


@pytest.mark.parametrize(("layers", "message"), [(0, "cannot keep 0 of 4"), ([1, 9], "[1, 9]")])
def test_student_layers_beyond_a_hugging_face_teacher_are_refused_by_validate(
    tmp_path, layers, message
):
    """The layer count is in the teacher's config.json: read there, no model loaded."""
    from tiny import bert_config

    hf_stub(tmp_path / "teacher", {"num_hidden_layers": 4})
    for name in ("train.csv", "test.csv"):
        (tmp_path / name).write_text("text,label\na,x\nb,y\n")
    cfg = write_yaml(tmp_path / "model.yaml", bert_config(student={"layers": layers}))
    line = _one_line(runner.invoke(app, ["validate", str(cfg)]))
    assert "field 'student.layers': " in line and message in line


def test_data_labels_the_teacher_does_not_name_are_refused_before_the_run(tmp_path):
    """compress refuses data labels that are not the teacher's id2label names at once: validate
    and --dry-run said "valid" for them (text labels, and an image folder's class folders)."""
    conf = {"num_hidden_layers": 4, "id2label": {"0": "negative", "1": "positive"}}
    text = _text_project(tmp_path / "t", conf, [("good film", "pos"), ("bad plot", "neg")] * 5)
    images = _image_project(tmp_path / "i", ["zero", "one"])
    for cfg, field, names, data in (
        (text, "data.label_column", "['negative', 'positive']", "(in d.csv)"),
        (images, "data.source", "['cat', 'dog']", "(in imgs)"),
    ):
        for res in (runner.invoke(app, ["validate", str(cfg)]), _dry_run(cfg)):
            line = _one_line(res)
            assert line.startswith(f"error: {cfg}: field '{field}'"), line
            assert f"{data} are not the teacher's {names}" in line


@pytest.mark.parametrize(
    ("model_channels", "data", "fix"),
    [
        (3, {"channels": 1}, "set data.channels: 3"),
        (1, {}, "set data.channels: 1"),
        (3, {"source": "sklearn:digits"}, "use a teacher trained on this data"),
    ],
    ids=["grayscale images, RGB teacher", "RGB images, grayscale teacher", "digits, RGB teacher"],
)
def test_image_channels_other_than_the_teachers_are_refused_before_the_run(
    tmp_path, model_channels, data, fix
):
    """A Hugging Face image teacher's config.json num_channels against the channels the data
    are read with: compress refused them at its first batch, validate said "valid"."""
    import json

    cfg = _image_project(tmp_path, ["cat", "dog"], data=data)
    conf_file = tmp_path / "teacher" / "config.json"
    conf = {**json.loads(conf_file.read_text()), "num_channels": model_channels}
    if "source" in data:  # digits' classes
        conf["id2label"] = {str(i): str(i) for i in range(10)}
    conf_file.write_text(json.dumps(conf))  # validate reads it; no model is loaded
    got = 4 - model_channels  # the other of 1 and 3
    for res in (runner.invoke(app, ["validate", str(cfg)]), _dry_run(cfg)):
        line = _one_line(res)
        assert line.startswith(f"error: {cfg}: field 'data.channels'"), line
        assert f"takes {model_channels}-channel images (config.json num_channels)" in line
        assert f"data are {got}-channel" in line and fix in line


def test_a_student_architecture_the_heads_do_not_divide_is_refused_by_validate(tmp_path):
    """hidden_size 24 in 5 heads: compress refused it when the search stage built the space;
    validate read config.json's sizes and said "valid"."""
    conf = {
        "num_hidden_layers": 4,
        "hidden_size": 32,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    }
    rows = [("good film", "pos"), ("bad plot", "neg")] * 5
    bad = {"hidden_size": 24, "num_attention_heads": 5}
    cfg = _text_project(tmp_path / "bad", conf, rows, student={"architecture": bad})
    for res in (runner.invoke(app, ["validate", str(cfg)]), _dry_run(cfg)):
        line = _one_line(res)
        assert line.startswith(f"error: {cfg}: field 'student.architecture'"), line
        assert "hidden_size <= 32 divisible by num_attention_heads" in line
    misplaced = {"num_hidden_layers": 2, "layers": [1, 3]}  # `layers` is student.layers
    cfg = _text_project(tmp_path / "keys", conf, rows, student={"architecture": misplaced})
    for res in (runner.invoke(app, ["validate", str(cfg)]), _dry_run(cfg)):
        line = _one_line(res)
        assert line.startswith(f"error: {cfg}: field 'student.architecture'"), line
        assert "unknown key(s) 'layers'" in line and "goes in student.layers" in line, line
    good = {"hidden_size": 16, "num_attention_heads": 1}
    cfg = _text_project(tmp_path / "good", conf, rows, student={"architecture": good})
    assert runner.invoke(app, ["validate", str(cfg)]).exit_code == 0


def test_the_dry_run_shows_the_student_settings_of_the_teachers_family(tmp_path):
    """A transformer teacher keeps layers (width is a CNN's); a CNN keeps a share of channels;
    an evolution search reads neither."""
    import json

    rows = [("good film", "pos"), ("bad plot", "neg")] * 5
    for name, student, want in (
        ("default", {}, {"layers": [1, 3], "teacher_layers": 4}),
        ("indices", {"layers": [0, 2]}, {"layers": [0, 2], "teacher_layers": 4}),
        (
            "architecture",
            {"architecture": {"num_hidden_layers": 1}},
            {"architecture": {"num_hidden_layers": 1}, "layers": [3], "teacher_layers": 4},
        ),
    ):
        cfg = _text_project(tmp_path / name, {"num_hidden_layers": 4}, rows, student=student)
        res = _dry_run(cfg)
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["student"] == want
    res = _dry_run(_config(tmp_path))
    assert res.exit_code == 0 and json.loads(res.output)["student"] == {"width": 0.5}
    for strategy in ("evolution", "exhaustive"):
        res = _dry_run(_config(tmp_path, search={"strategy": strategy}))
        assert res.exit_code == 0 and json.loads(res.output)["student"] == {"search": strategy}


def test_a_vit_without_its_image_processor_config_is_warned_of(tmp_path):
    """Without preprocessor_config.json a ViT's inputs are normalised with mean and std 0.5:
    validate, the dry run and a run say so once, naming the values and the file to add."""
    import json

    cfg = _image_project(tmp_path, ["cat", "dog"], processor=False)
    words = ("has no preprocessor_config.json", "mean 0.5 and std 0.5", "save_pretrained")
    res = runner.invoke(app, ["validate", str(cfg)])
    assert res.exit_code == 0 and "valid" in res.output
    assert res.output.count("warning: ") == 1 and all(w in res.output for w in words)
    res = _dry_run(cfg)
    assert res.exit_code == 0, res.output
    (note,) = json.loads(res.output)["warnings"]
    assert all(w in note for w in words)
    res = runner.invoke(app, ["search", str(cfg), "--out", str(tmp_path / "run"), "-q"])
    assert res.exit_code == 0, res.output
    assert res.output.count("preprocessor_config.json") == 1, res.output
    (tmp_path / "teacher" / "preprocessor_config.json").write_text(PROCESSOR_8)
    res = runner.invoke(app, ["validate", str(cfg)])
    assert res.exit_code == 0 and "warning" not in res.output
    assert "warnings" not in json.loads(_dry_run(cfg).output)


def test_a_classification_task_with_a_bare_encoder_teacher_is_refused_by_validate(tmp_path):
    """all-MiniLM-L6-v2 (BertModel) as a classifier's teacher: validate said "valid" and compress
    failed later, loading it with a random head, on a class count."""
    conf = {
        "architectures": ["BertModel"],
        "num_hidden_layers": 2,
        "hidden_size": 32,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    }
    rows = [("good film", "pos"), ("bad plot", "neg")] * 5
    cfg = _text_project(tmp_path, conf, rows)
    for res in (runner.invoke(app, ["validate", str(cfg)]), _dry_run(cfg)):
        line = _one_line(res)
        assert line.startswith(f"error: {cfg}: field 'teacher.path'"), line
        assert "BertModel" in line and "no classification head" in line
        assert "task: sentence-embedding" in line


def test_an_image_task_with_a_bare_vit_teacher_is_refused_with_an_image_fix(tmp_path):
    """The fix for an image task's headless teacher named text's way out (task:
    sentence-embedding), which an image model cannot take."""
    import json

    cfg = _image_project(tmp_path, ["cat", "dog"])
    conf_file = tmp_path / "teacher" / "config.json"
    conf_file.write_text(
        json.dumps({**json.loads(conf_file.read_text()), "architectures": ["ViTModel"]})
    )
    line = _one_line(runner.invoke(app, ["validate", str(cfg)]))
    assert "ViTModel" in line and "no classification head" in line
    assert "image classifier's directory" in line and "sentence-embedding" not in line


def test_a_first_run_refused_on_its_data_leaves_no_directory(tmp_path):
    """Data refused when the run starts (an eval label the training data lacks): neither the run
    directory nor the runs/ folder made for it stays behind."""
    import yaml
    from tiny import write_csv

    conf = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2}
    rows = [("good film", "pos"), ("bad plot", "neg")] * 5
    cfg = _text_project(tmp_path, conf, rows)
    write_csv(tmp_path / "eval.csv", [("so so", "mixed"), ("fine", "pos")])
    doc = yaml.safe_load(cfg.read_text())
    doc["data"]["eval"] = "eval.csv"
    cfg.write_text(yaml.safe_dump(doc))
    run = tmp_path / "runs" / "first"
    line = _one_line(runner.invoke(app, ["compress", str(cfg), "--out", str(run), "-q"]))
    assert "eval labels not seen in training" in line, line
    assert not (tmp_path / "runs").exists()


def test_a_library_teacher_needs_its_library_installed(tmp_path, monkeypatch):
    """teacher.name: resnet18 without torchvision: validate said "valid" and compress failed."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "torchvision" else real(n, *a)
    )
    doc = cnn_config(weights=None)
    doc["teacher"] = {"name": "resnet18", "kwargs": {"num_classes": 10}}
    cfg = write_yaml(tmp_path / "model.yaml", doc)
    line = _one_line(runner.invoke(app, ["validate", str(cfg)]))
    assert line.startswith(f"error: {cfg}: field 'teacher.name': torchvision is not installed")


def test_settings_the_config_does_not_read_are_noted(tmp_path):
    """sklearn:digits is 8x8 grayscale whatever data.image_size/channels say; an evolution search
    picks the student whatever student.layers says: both were dropped without a word."""

    from kdc.config import load_config
    from kdc.preflight import config_warnings

    doc = cnn_config(weights=None)
    doc["data"].update(image_size=16, channels=3)
    doc["search"] = {"strategy": "evolution"}
    notes = config_warnings(load_config(write_yaml(tmp_path / "model.yaml", doc)))
    assert any("data.channels, data.image_size not used" in n for n in notes), notes
    assert any("student.width not used: search.strategy evolution" in n for n in notes), notes
    plain = config_warnings(load_config(write_yaml(tmp_path / "plain.yaml", cnn_config())))
    assert plain == []


def test_a_precision_the_target_profile_does_not_offer_is_refused(tmp_path):
    """A custom profile without int8: refused before search (it failed at build, after
    distillation), naming quantize.precision."""
    import yaml

    from kdc.profiles import profiles_dir

    profile = yaml.safe_load((profiles_dir() / "jetson-orin-nano-8gb.yaml").read_text())
    profile["name"] = "orin-no-int8"
    profile["runtime"]["precisions"] = ["fp32", "fp16"]
    target = tmp_path / "orin.yaml"
    target.write_text(yaml.safe_dump(profile))
    cfg = _config(tmp_path, quantize={"precision": "int8"})
    line = _one_line(
        runner.invoke(app, ["compress", str(cfg), "--target", str(target), "--dry-run"])
    )
    assert line == (
        f"error: {cfg}: field 'quantize.precision': target orin-no-int8 offers fp32, fp16, not "
        "int8 (fix: use fp32 or fp16, or add int8 to the profile's runtime.precisions if the "
        "device runs it)"
    )


def test_a_model_directory_its_config_json_or_a_hub_id_are_named_for_what_they_are(tmp_path):
    import yaml

    from kdc.config import load_config
    from kdc.errors import UserError

    model = tmp_path / "teacher"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["BertModel"], "model_type": "bert"}')
    for given, said in (
        (model, "is a model directory, not a kdc config"),
        (model / "config.json", "is a Hugging Face model config (config.json), not a kdc config"),
    ):
        with pytest.raises(UserError, match=re.escape(said)) as e:
            load_config(given)
        assert f"kdc init {model} --data DATA" in e.value.fix
    cfg = _config(tmp_path)
    doc = yaml.safe_load(cfg.read_text())
    doc["teacher"] = {"path": "prajjwal1/bert-tiny"}
    write_yaml(cfg, doc)
    line = _one_line(runner.invoke(app, ["validate", str(cfg)]))
    assert "for the Hub model 'prajjwal1/bert-tiny', save it with save_pretrained" in line
    (tmp_path / "prajjwal1").mkdir()  # a local folder: a typo in a path, not a Hub id
    line = _one_line(runner.invoke(app, ["validate", str(cfg)]))
    assert "Hub" not in line and "prajjwal1/bert-tiny exists" in line


def test_an_image_teacher_for_a_text_task_is_refused_and_an_unused_image_size_noted(tmp_path):
    from kdc.config import parse_config
    from kdc.errors import UserError
    from kdc.preflight import check_config, config_warnings
    from tests.helpers.tiny import bert_config

    model = tmp_path / "vit"
    model.mkdir()
    (model / "config.json").write_text(
        '{"architectures": ["ViTForImageClassification"], "model_type": "vit", "image_size": 16}'
    )
    doc = bert_config()
    doc["teacher"] = {"path": str(model)}
    for key in ("source", "eval"):
        if doc["data"].get(key):
            (tmp_path / doc["data"][key]).write_text("text,label\na,b\n")
    cfg = parse_config(doc, source="m.yaml", base_dir=str(tmp_path))
    with pytest.raises(UserError, match="an image classifier, but the task is text-classif"):
        check_config(cfg)
    doc.update(task="image-classification", data={"source": str(tmp_path), "image_size": 32})
    cfg = parse_config(doc, source="m.yaml", base_dir=str(tmp_path))
    assert any("data.image_size 32 not used" in n for n in config_warnings(cfg))


def test_a_text_teacher_for_an_image_task_names_an_image_model(tmp_path):
    """The fix said "point teacher.path at a image model"."""
    from kdc.config import parse_config
    from kdc.errors import UserError
    from kdc.preflight import check_config
    from tests.helpers.tiny import bert_config, hf_stub

    conf = {"architectures": ["BertForSequenceClassification"], "model_type": "bert"}
    doc = bert_config()
    doc.update(task="image-classification", data={"source": "sklearn:digits"})
    doc["teacher"] = {"path": str(hf_stub(tmp_path / "bert", conf))}
    cfg = parse_config(doc, source="m.yaml", base_dir=str(tmp_path))
    with pytest.raises(UserError, match="a text classifier, but the task is image-classif") as e:
        check_config(cfg)
    assert e.value.fix.endswith("or point teacher.path at an image model")


def test_a_config_json_edited_after_saving_is_a_user_error(tmp_path):
    """A classifier saved with 2 labels whose config.json now says 3: bad input (exit 2), not
    an internal error from loading the state dict."""
    import json

    from transformers import AutoModelForSequenceClassification

    from kdc.errors import UserError
    from kdc.models.hf import load_model
    from tests.helpers.tiny import tiny_bert

    model, _ = tiny_bert(tmp_path)
    model.save_pretrained(str(tmp_path / "teacher"))
    conf = json.loads((tmp_path / "teacher" / "config.json").read_text())
    conf["id2label"] = {"0": "a", "1": "b", "2": "c"}
    conf["label2id"] = {"a": 0, "b": 1, "c": 2}
    (tmp_path / "teacher" / "config.json").write_text(json.dumps(conf))
    with pytest.raises(UserError, match="config.json does not match the weights") as e:
        load_model(tmp_path / "teacher", AutoModelForSequenceClassification, {}, False)
    assert e.value.field == "teacher.path" and "save_pretrained" in e.value.fix


def test_an_onnxruntime_only_run_on_a_tensorrt_target_is_warned(tmp_path):
    cfg = _config(tmp_path, build={"engines": ["onnxruntime"]})
    res = runner.invoke(app, ["compress", str(cfg), "--target", "jetson", "--dry-run"])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "build.engines leaves out tensorrt: jetson-orin-nano-8gb's latency model is" in said
    res = runner.invoke(app, ["compress", str(cfg), "--target", "host", "--dry-run"])
    assert "leaves out tensorrt" not in res.output
    cfg = _config(tmp_path, build={"max_batch": 8})  # TensorRT's alone: said where none is built
    res = runner.invoke(app, ["compress", str(cfg), "--target", "host", "--dry-run"])
    assert "build.max_batch not used" in " ".join(res.output.split())
    res = runner.invoke(app, ["compress", str(cfg), "--target", "t4", "--dry-run"])
    assert res.exit_code == 0 and "max_batch not used" not in res.output
    assert '"max_batch": 8' in res.output  # the plan shows the build settings the config sets


def test_weights_of_another_architecture_are_refused_by_validate_dry_run_and_compress(tmp_path):
    """Without loading them: the entrypoint's model is built on the meta device and the file's
    shapes read from its safetensors header. `kdc compress` refuses them as validate does,
    before its first stage (it had failed later, loading the teacher, with another message)."""
    cfg = _config(tmp_path)
    assert runner.invoke(app, ["validate", str(cfg)]).exit_code == 0
    _weights(tmp_path / "teacher.safetensors", channels=(8, 32))
    out = tmp_path / "run"
    for args in (
        ["validate", str(cfg)],
        ["compress", str(cfg), "--dry-run"],
        ["compress", str(cfg), "--out", str(out), "--quiet"],
    ):
        line = _one_line(runner.invoke(app, args))
        assert line.startswith(f"error: {cfg}: field 'teacher.weights'"), line
        assert "size mismatch for 'features.0.weight'" in line and "teacher.kwargs" in line, line
    assert not out.exists()  # refused before any stage: no run directory left behind


def test_a_search_space_for_a_fixed_student_is_warned(tmp_path):
    from kdc.config import load_config
    from kdc.preflight import config_warnings

    cfg = load_config(_config(tmp_path, search={"space": {"stage_width": {"min": 0.5}}}))
    assert any(
        n.startswith(f"{cfg.source_file}: search.space not used") for n in config_warnings(cfg)
    )
