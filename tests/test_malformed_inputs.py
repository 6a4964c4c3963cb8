"""Malformed configs and inputs, case by case, end as one line naming the file or field, exit 2
(1 for a budget no student can meet), no traceback, and nothing written outside the run
directory (the harness: tests/helpers/malformed.py; generated configs: test_malformed_configs.py).

Run in-process through typer's CliRunner: they fail at validation or data/teacher loading, before
any training. `CASES` is also what bench/reliability.py runs to summarise outcomes."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from malformed import (
    FAST,
    assert_clean_failure,
    compress,
    private_tmp,
    run_case,
    yaml_file,
)
from safetensors.torch import save_file
from tiny import bert_config, cnn_config, sentences, tiny_bert, write_csv

__all__ = ["CASES", "private_tmp"]  # the fixture, imported for pytest to find


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """Read-only inputs shared by the cases: an untrained tiny BERT and a text dataset."""
    root = tmp_path_factory.mktemp("assets")
    model, tok = tiny_bert(root)
    model.save_pretrained(str(root / "bert"))
    tok.save_pretrained(str(root / "bert"))
    write_csv(root / "text.csv", sentences(60, 1))
    return root


# ---------------------------------------------------------------- explicit cases
Build = Callable[[Path, Path], list[str]]  # (case dir, assets) -> CLI args
SAMPLE_REPORT = Path(__file__).parent / "fixtures" / "report_sample.json"
T4_PROFILE = (Path(__file__).parents[1] / "profiles" / "nvidia-t4.yaml").read_text()


def _merge(base: dict, over: dict) -> dict:
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return base


def cnn(root: Path, **over) -> Path:
    """An image-classification config (random CNN teacher, digits) with `over` merged in."""
    return yaml_file(root / "model.yaml", _merge(cnn_config(weights=None, **FAST), over))


def text(root: Path, assets: Path, **over) -> Path:
    """A text-classification config (tiny BERT teacher, a csv) with `over` merged in."""
    base = bert_config(
        teacher={"path": str(assets / "bert")},
        data={"source": str(assets / "text.csv"), "eval": None, "max_length": 16},
        **FAST,
    )
    return yaml_file(root / "model.yaml", _merge(base, over))


def with_file(name: str, content: str | bytes | Callable[[Path], Any], then: Build) -> Build:
    """Write root/name (bytes, text, or by a function of the path), then build the args."""

    def build(root: Path, assets: Path) -> list[str]:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(p)
        else:
            p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return then(root, assets)

    return build


def data_file(name: str, content: str | bytes) -> Build:
    """A text config whose data.source is a file holding `content`."""
    return with_file(name, content, lambda r, a: compress(text(r, a, data={"source": name})))


def weights_file(name: str, write: Callable[[Path], Any]) -> Build:
    """A CNN config whose teacher.weights is a file made by `write`."""
    return with_file(name, write, lambda r, a: compress(cnn(r, teacher={"weights": name})))


def config_text(content: str | bytes) -> Build:
    return with_file("model.yaml", content, lambda r, a: compress(r / "model.yaml"))


def on_file(name: str, content: str | bytes, *args: str) -> Build:
    """A command on root/name holding `content`; `{p}` in args is that path, `{d}` its folder."""
    return with_file(
        name, content, lambda r, a: [x.format(p=r / name, d=(r / name).parent) for x in args]
    )


def hf_teacher(**files: str | bytes | Callable[[Path], Any]) -> Build:
    """A text config whose teacher is a copy of the tiny BERT with `files` replaced (None:
    deleted)."""

    def build(root: Path, assets: Path) -> list[str]:
        shutil.copytree(assets / "bert", root / "teacher")
        for name, content in files.items():
            (root / "teacher" / name).unlink(missing_ok=True)
            if content is not None:
                with_file(f"teacher/{name}", content, lambda r, a: [])(root, assets)
        return compress(text(root, assets, teacher={"path": "teacher"}))

    return build


def hf_config(**edits: Any) -> Build:
    """A text config whose teacher is the tiny BERT with `edits` made to its config.json."""

    def build(root: Path, assets: Path) -> list[str]:
        conf = json.loads((assets / "bert" / "config.json").read_text())
        return hf_teacher(**{"config.json": json.dumps({**conf, **edits})})(root, assets)

    return build


def rgb_images(path: Path) -> None:
    """RGB PNGs in two classes beside `path` (<folder>/a/0.png): three channels where the digits
    teacher takes one."""
    from PIL import Image

    for cls in ("a", "b"):
        (path.parent.parent / cls).mkdir(exist_ok=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (60 * i, 0, 200)).save(path.parent.parent / cls / f"{i}.png")


NO_TOKENIZER = dict.fromkeys(
    ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
)


class Evil:
    """Unpickling this creates a file: proof that a loader ran pickle code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def pickled(path: Path) -> None:
    marker = (
        path.parent.parent / "PWNED" if path.parent.name == "teacher" else (path.parent / "PWNED")
    )
    torch.save({"conv.weight": torch.zeros(1), "evil": Evil(marker)}, path)


def numpy_pickle(path: Path) -> None:
    with open(path, "wb") as f:
        np.save(f, np.array([object()], dtype=object), allow_pickle=True)


def truncated_safetensors(path: Path) -> None:
    save_file({"x": torch.zeros(100)}, str(path))
    path.write_bytes(path.read_bytes()[:60])


def remote_code_config(assets: Path) -> str:
    conf = json.loads((assets / "bert" / "config.json").read_text())
    conf.update(
        model_type="kdc-evil",
        architectures=["EvilModel"],
        auto_map={
            "AutoConfig": "evil.EvilConfig",
            "AutoModelForSequenceClassification": "evil.EvilModel",
        },
    )
    return json.dumps(conf)


def remote_code(root: Path, assets: Path) -> list[str]:
    return hf_teacher(
        **{
            "config.json": remote_code_config(assets),
            "evil.py": f"open({str(root / 'PWNED')!r}, 'w')\n",
        }
    )(root, assets)


def onnx_model(path: Path, inputs: dict[str, list[int | str]]) -> None:
    """A float model that adds (or passes through) `inputs` of the given dims."""
    import onnx
    from onnx import TensorProto, helper

    names = list(inputs)
    node = (
        helper.make_node("Add", names, ["y"])
        if len(names) == 2
        else helper.make_node("Relu", names, ["y"])
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, d) for n, d in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


PIXELS = lambda p: onnx_model(p, {"pixel_values": ["batch", 1, 8, 8]})  # noqa: E731
PAIR = lambda p: onnx_model(p, {"a": ["batch", "seq"], "b": ["batch", "seq"]})  # noqa: E731


def sample_report(edit: Callable[[dict], Any]) -> str:
    """The sample report.json with `edit` applied."""
    report = json.loads(SAMPLE_REPORT.read_text())
    edit(report)
    return json.dumps(report)


def check_baseline(content: str) -> Build:
    """`kdc check` of the sample report against a baseline holding `content`."""
    return on_file("b.json", content, "check", str(SAMPLE_REPORT), "--baseline", "{p}")


@dataclass
class Case:
    name: str
    build: Build
    expect: tuple[str, ...]  # substrings of the one output line
    code: int = 2
    marker: bool = False  # a PWNED file must not appear


THREE_CLASSES = "text,label\n" + "".join(f"w{i} film,c{i % 3}\n" for i in range(30))
ROWS = "".join(f"{t},{lab}\n" for t, lab in sentences(30, 3))
NO_PRECISIONS = T4_PROFILE.replace("precisions:\n  - fp32\n  - fp16\n  - int8", "precisions: []")
TRY_TARGET = lambda r, a: compress(cnn(r), "--target", str(r / "p.yaml"))  # noqa: E731
C = Case
# fmt: off
CASES = [
    # the config file and the target
    C("config missing", lambda r, a: compress(r / "nope.yaml"), ("nope.yaml", "not found")),
    C("config is a directory", lambda r, a: ["compress", str(r)], ("is a directory, not a kdc",)),
    C("config empty", config_text(""), ("model.yaml", "mapping")),
    C("config a list", config_text("- a\n- b\n"), ("mapping",)),
    C("config a scalar", config_text("42\n"), ("mapping",)),
    C("config bad YAML", config_text("name: [unclosed\n"), ("not valid YAML",)),
    C("config tab indent", config_text("name: x\n\ttask: y\n"), ("not valid YAML",)),
    C("config not UTF-8", config_text(b"name: caf\xe9\n"), ("not valid YAML",)),
    C("config python tag", config_text("!!python/object/apply:os.system ['touch PWNED']\n"),
      ("not valid YAML",), marker=True),
    C("config python tag in a value", config_text(
        "name: !!python/object/apply:builtins.open ['PWNED', 'w']\n"), ("not valid YAML",),
      marker=True),
    C("unknown target", lambda r, a: compress(cnn(r), "--target", "jetsn"),
      ("--target", "unknown target")),
    C("target profile missing", TRY_TARGET, ("--target", "not found")),
    C("target profile bad YAML", with_file("p.yaml", "a: [\n", TRY_TARGET), ("p.yaml",)),
    C("target profile wrong fields", with_file("p.yaml", "name: x\n", TRY_TARGET), ("p.yaml",)),
    C("target profile in UTF-16", with_file("p.yaml", "name: x\n".encode("utf-16"), TRY_TARGET),
      ("p.yaml", "UTF-8")),
    C("target profile in Latin-1", with_file("p.yaml", "name: caf\xe9\n".encode("latin-1"),
                                            TRY_TARGET), ("p.yaml", "UTF-8")),
    C("target profile without precisions", with_file("p.yaml", NO_PRECISIONS, TRY_TARGET),
      ("p.yaml", "runtime.precisions")),
    # data
    C("data missing", lambda r, a: compress(cnn(r, data={"source": "nope.csv"})),
      ("data.source", "not found")),
    C("eval file missing", lambda r, a: compress(text(r, a, data={"eval": "nope.csv"})),
      ("data.eval",)),
    C("data unknown suffix", data_file("d.xlsx", "a"), ("data.format",)),
    C("unknown built-in data", lambda r, a: compress(cnn(r, data={"source": "sklearn:iris"})),
      ("data.source", "sklearn:iris")),
    C("csv empty", data_file("d.csv", ""), ("data.source", "no rows")),
    C("csv header only", data_file("d.csv", "text,label\n"), ("data.source", "no rows")),
    C("csv text column missing", data_file("d.csv", "review,label\nok,a\nno,b\n"),
      ("data.text_column", "review")),
    C("csv label column missing", data_file("d.csv", "text,stars\nok,1\nno,2\n"),
      ("data.label_column", "stars")),
    C("csv one class", data_file("d.csv", "text,label\n" + "good film,pos\n" * 20),
      ("data.label_column", "1 class")),
    C("csv one row", data_file("d.csv", "text,label\ngood,pos\n"), ("data.",)),
    C("csv not UTF-8", data_file("d.csv", b"text,label\n" + b"caf\xe9 ok,pos\n" * 9),
      ("data.source", "UTF-8")),
    C("csv NUL bytes, one class", data_file("d.csv", b"text,label\n\x00\x00,a\n"), ("data.",)),
    C("csv labels differ from the teacher's", data_file("d.csv", THREE_CLASSES),
      ("data.label_column", "labels")),
    C("tsv with commas", data_file("d.tsv", "text,label\n" + ROWS), ("data.text_column",)),
    C("jsonl bad line", data_file("d.jsonl", '{"text": "a", "label": "x"}\n{oops\n'),
      ("data.source", "line 2 is not JSON")),
    C("jsonl not objects", data_file("d.jsonl", "[1, 2]\n"),
      ("data.source", "item 1 is not a JSON object")),
    C("json array cut short", data_file("d.json", '[{"text": "a", "label": "x"},\n'),
      ("data.source", "not valid JSON", "line 2")),
    C("json an object holding the rows", data_file("d.json", '{"a": [{"text": "x"}, {}]}'),
      ("d.json", "data.source", "expected a JSON array of objects (or JSON Lines)", "keys: a")),
    C("json an object over several lines", data_file("d.json", '{\n  "text": "x"\n}\n'),
      ("d.json", "data.source", "expected a JSON array of objects (or JSON Lines)")),
    C("jsonl line not an object", data_file("d.jsonl", '{"text": "a", "label": "x"}\n[1]\n'),
      ("data.source", "line 2 is not a JSON object")),
    C("jsonl not UTF-8", data_file("d.jsonl", b'{"text": "caf\xe9", "label": "a"}\n'),
      ("data.source", "UTF-8")),
    C("jsonl empty", data_file("d.jsonl", "\n\n"), ("data.source", "no rows")),
    C("txt not UTF-8", with_file("d.txt", b"\xff\xfe", lambda r, a: compress(text(
        r, a, task="sentence-embedding", data={"source": "d.txt"}))), ("data.source", "UTF-8")),
    C("txt for a classifier", data_file("d.txt", "one line\n"),
      ("d.txt", "data.source", "no labels", "label column")),
    C("csv blank text", data_file("d.csv", "text,label\ngood,pos\n  ,neg\nbad,neg\n"),
      ("d.csv", "data.text_column", "line 3", "blank")),
    C("eval labels unseen", with_file("ev.csv", "text,label\n" + "good,other\n" * 5,
                                      lambda r, a: compress(text(r, a, data={"eval": "ev.csv"}))),
      ("data.eval", "other")),
    C("digits with a missing eval file", lambda r, a: compress(cnn(r, data={
        "eval": "nope_eval.csv"})), ("model.yaml", "data.eval")),
    C("digits with an eval file", with_file("ev.csv", "text,label\na,1\nb,2\n", lambda r, a:
                                            compress(cnn(r, data={"eval": "ev.csv"}))),
      ("model.yaml", "data.eval", "sklearn:digits")),
    C("image task with a text csv", with_file("ok.csv", "text,label\n" + "foo bar,a\nbaz,b\n" * 5,
                                              lambda r, a: compress(cnn(r, data={
                                                  "source": "ok.csv"}))),
      ("ok.csv", "data.source", "image", "'text'")),
    C("image task with a csv of numbers", with_file("x.csv", "f0,f1,label\n0.1,0.2,a\n0.3,0.4,b\n",
                                                   lambda r, a: compress(cnn(r, data={
                                                       "source": "x.csv"}))),
      ("x.csv", "a csv file, which kdc reads as text", "not as numeric features or pixel columns")),
    C("text task with an image folder", with_file("imgs/a/x.png", b"not a png", lambda r, a:
                                                  compress(text(r, a, data={"source": "imgs"}))),
      ("data.source", "needs text")),
    C("csv unclosed quote", data_file("d.csv", 'text,label\ngood,pos\n"bad film,neg\nok,pos\n'),
      ("d.csv", "data.source", "line 3", "never closed")),
    C("csv unclosed quote in the label", data_file("d.csv", 'text,label\ngood,"pos\nbad,neg\n'),
      ("d.csv", "line 2", "never closed")),
    C("csv row with an extra field", data_file("d.csv", "text,label\ngood, really,pos\nbad,neg\n"),
      ("d.csv", "line 2", "3 field(s)")),
    C("eval csv unclosed quote", with_file("ev.csv", 'text,label\n"good,pos\n', lambda r, a:
                                           compress(text(r, a, data={"eval": "ev.csv"}))),
      ("ev.csv", "data.eval", "never closed")),
    C("image folder without images", with_file("imgs/a/notes.txt", "x", lambda r, a:
                                               compress(cnn(r, data={"source": "imgs"}))),
      ("imgs/a", "data.source", "no images")),
    C("image folder with a broken image", with_file("imgs/a/x.png", b"not a png", lambda r, a:
                                                    compress(cnn(r, data={"source": "imgs"}))),
      ("x.png", "data.source", "not an image")),
    C("csv format on a directory", with_file("adir/x.csv", "", lambda r, a: compress(text(
        r, a, data={"source": "adir", "format": "csv"}))),
      ("model.yaml", "data.format", "data.source", "adir", "is a directory")),
    C("txt format on a directory", with_file("adir/x.txt", "", lambda r, a: compress(text(
        r, a, data={"source": "adir", "format": "txt"}))), ("data.format", "is a directory")),
    C("datasets format on a plain directory", with_file("adir/x.csv", "", lambda r, a: compress(
        text(r, a, data={"source": "adir", "format": "datasets"}))),
      ("data.format", "adir", "save_to_disk")),
    C("imagefolder format on a csv file", with_file("ok.csv", THREE_CLASSES, lambda r, a: compress(
        cnn(r, data={"source": "ok.csv", "format": "imagefolder"}))),
      ("data.format", "ok.csv", "is a file", "<folder>/<class>/<image>")),
    C("imagefolder format on an eval csv file", with_file("ev.csv", THREE_CLASSES, with_file(
        "imgs/a/0.png", rgb_images, lambda r, a: compress(cnn(r, data={
            "source": "imgs", "eval": "ev.csv", "format": "imagefolder"})))),
      ("data.format", "data.eval", "ev.csv")),
    C("jsonl row without the label", data_file(
        "d.jsonl", '{"text": "good film", "label": "pos"}\n{"text": "bad film"}\n'),
      ("d.jsonl", "data.label_column", "line 2", "'label'")),
    C("jsonl row without the text", data_file(
        "d.jsonl", '{"text": "good film", "label": "pos"}\n\n{"label": "neg"}\n'),
      ("d.jsonl", "data.text_column", "line 3", "'text'")),
    C("jsonl null label", data_file("d.jsonl", '{"text": "a", "label": "pos"}\n'
                                               '{"text": "b", "label": null}\n'),
      ("d.jsonl", "data.label_column", "line 2", "null")),
    C("csv blank label", data_file("d.csv", "text,label\ngood,pos\nbad,  \nok,neg\n"),
      ("d.csv", "data.label_column", "line 3", "blank")),
    C("too little training data", lambda r, a: compress(text(r, a, data={"eval_fraction": 0.99})),
      ("model.yaml", "data.eval_fraction", "1 row(s) of 1 of the data's 2 classes")),
    C("no training data", lambda r, a: compress(text(r, a, data={"eval_fraction": 0.999})),
      ("model.yaml", "data.eval_fraction", "training split is empty", "all 60 row(s)")),
    # the student
    C("student keeps no layers", lambda r, a: compress(text(r, a, student={"layers": 0})),
      ("model.yaml", "student.layers", "0 of 4", "from 1 to 4")),
    C("student keeps an empty list of layers", lambda r, a: compress(text(r, a, student={
        "layers": []})), ("model.yaml", "student.layers", "0..3")),
    # the teacher
    C("weights missing", lambda r, a: compress(cnn(r, teacher={"weights": "nope.pt"})),
      ("teacher.weights", "not found")),
    C("weights garbage safetensors", weights_file("w.safetensors", lambda p: p.write_bytes(
        b"\x00garbage" * 10)), ("teacher.weights",)),
    C("weights garbage pt", weights_file("w.pt", lambda p: p.write_bytes(b"garbage" * 10)),
      ("teacher.weights",)),
    C("weights empty file", weights_file("w.pt", lambda p: p.write_bytes(b"")),
      ("teacher.weights",)),
    C("weights truncated safetensors", weights_file("w.safetensors", truncated_safetensors),
      ("teacher.weights",)),
    C("weights pickle object refused", weights_file("w.pt", pickled), ("teacher.weights",),
      marker=True),
    C("weights not a state dict", weights_file("w.pt", lambda p: torch.save([1, 2], p)),
      ("teacher.weights", "state dict")),
    C("weights of another model", weights_file("w.safetensors", lambda p: save_file(
        {"features.0.weight": torch.zeros(3, 3)}, str(p))), ("teacher.weights", "do not match")),
    C("weights a numpy pickle", weights_file("w.pt", numpy_pickle), ("teacher.weights",)),
    C("entrypoint module missing", lambda r, a: compress(cnn(r, teacher={
        "entrypoint": "nosuchmod:fn"})), ("teacher.entrypoint", "nosuchmod")),
    C("entrypoint function missing", lambda r, a: compress(cnn(r, teacher={
        "entrypoint": "kdc.models.cnn:nope"})), ("teacher.entrypoint",)),
    C("entrypoint not a module", lambda r, a: compress(cnn(r, teacher={
        "entrypoint": "os:getcwd", "kwargs": {}})), ("teacher.entrypoint", "not a Module")),
    C("entrypoint bad kwargs", lambda r, a: compress(cnn(r, teacher={
        "kwargs": {"num_classes": 10, "bogus": 1}})), ("teacher.kwargs", "bogus")),
    C("teacher outputs differ from classes", lambda r, a: compress(cnn(r, teacher={
        "kwargs": {"num_classes": 3, "channels": [8]}})), ("data.source", "3 outputs")),
    C("teacher two sources", lambda r, a: compress(cnn(r, teacher={"path": "x"})),
      ("teacher", "exactly one")),
    C("teacher no source", lambda r, a: compress(yaml_file(r / "model.yaml", {
        **cnn_config(weights=None), "teacher": {}})), ("teacher", "exactly one")),
    C("HF dir missing", lambda r, a: compress(text(r, a, teacher={"path": "nope"})),
      ("teacher.path", "not found")),
    C("HF dir given as its config.json", with_file("t/config.json", "{}", lambda r, a: compress(
        text(r, a, teacher={"path": "t/config.json"}))),
      ("teacher.path", "is a file", "give its directory")),
    C("HF dir without config.json", with_file("t/vocab.txt", "x\n", lambda r, a: compress(
        text(r, a, teacher={"path": "t"}))), ("teacher.path", "config.json")),
    C("HF config.json not JSON", hf_teacher(**{"config.json": "{oops"}), ("config.json",)),
    C("HF config.json not UTF-8", hf_teacher(**{"config.json": b"\xff\xfe{\x00}"}),
      ("config.json", "teacher.path", "UTF-8")),
    C("HF config.json a list", hf_teacher(**{"config.json": "[1, 2]"}),
      ("config.json", "teacher.path", "an array, not an object")),
    C("HF id2label a list", hf_config(id2label=["negative", "positive"]),
      ("config.json", "'id2label'", "an array")),
    C("HF id2label keyed by name", hf_config(id2label={"neg": "neg", "pos": "pos"}),
      ("config.json", "'id2label'", "'neg'")),
    C("HF no tokenizer files", hf_teacher(**NO_TOKENIZER),
      ("teacher", "teacher.path", "no tokenizer", "save_pretrained")),
    C("HF tokenizer.json corrupt", hf_teacher(**{"tokenizer.json": "{oops"}),
      ("tokenizer.json", "teacher.path", "save_pretrained")),
    C("HF vocab.txt unreadable", hf_teacher(**{"tokenizer.json": None, "vocab.txt": b"\xff\xfe"}),
      ("teacher.path", "cannot load the tokenizer")),
    C("teacher cannot take the data's channels", with_file("imgs/a/0.png", rgb_images, lambda r, a:
                                                          compress(cnn(r, data={
                                                              "source": "imgs", "image_size": 8,
                                                              "limit_train": None,
                                                              "limit_eval": None}))),
      ("model.yaml", "'data.channels'", "takes 1-channel images (its first conv's in_channels)",
       "data are 3-channel", "set data.channels: 1")),
    C("HF weights corrupt", hf_teacher(**{"model.safetensors": b"\x00" * 64}),
      ("teacher.path",)),
    C("HF pickled weights refused", hf_teacher(**{"model.safetensors": None,
                                                  "pytorch_model.bin": pickled}),
      ("teacher.path",), marker=True),
    C("HF custom code needs trust_remote_code", remote_code, ("teacher.trust_remote_code",),
      marker=True),
    C("HF labels differ from the data's", data_file("d.csv", THREE_CLASSES),
      ("data.label_column",)),
    # other commands' inputs
    C("bench garbage ONNX", on_file("m.onnx", b"\x08\x01garbage", "bench", "{p}"),
      ("not a valid ONNX",)),
    C("bench empty ONNX", on_file("m.onnx", b"", "bench", "{p}"), ("m.onnx",)),
    C("estimate garbage ONNX", on_file("m.onnx", b"\xff" * 50, "estimate", "{p}"),
      ("not a valid ONNX",)),
    C("lint garbage ONNX", on_file("m.onnx", b"garbage", "lint", "{p}"), ("not a valid ONNX",)),
    C("bench zero threads", on_file("m.onnx", PIXELS, "bench", "{p}", "--threads", "0"),
      ("--threads",)),
    C("bench bad shape", on_file("m.onnx", b"", "bench", "{p}", "--shape", "x:0x"), ("--shape",)),
    C("bench no iterations", on_file("m.onnx", PIXELS, "bench", "{p}", "--iterations", "0"),
      ("field '--iterations'",)),
    C("estimate unknown precision", on_file("m.onnx", PIXELS, "estimate", "{p}", "--precision",
                                            "fp8"), ("field '--precision'", "fp32, fp16 or int8")),
    C("bench shape off the model's dims", on_file("m.onnx", PIXELS, "bench", "{p}", "--shape",
                                                  "pixel_values:1x1x9x9"),
      ("m.onnx", "--shape", "[batch, 1, 8, 8]")),
    C("bench shape of the wrong rank", on_file("m.onnx", PIXELS, "bench", "{p}", "--shape",
                                               "pixel_values:1x8x8"), ("--shape", "1x1x8x8")),
    C("bench shape of no input", on_file("m.onnx", PIXELS, "bench", "{p}", "--shape",
                                         "nosuch:1x1x8x8"), ("--shape", "nosuch", "pixel_values")),
    C("bench shapes the graph rejects", on_file("m.onnx", PAIR, "bench", "{p}", "--shape", "a:1x8",
                                                "--shape", "b:1x4"), ("--shape", "a:1x8, b:1x4")),
    C("verify not a run dir", with_file("run/x", "", lambda r, a: ["verify", str(r / "run")]),
      ("manifest.json",)),
    C("verify corrupt manifest", on_file("run/manifest.json", "{not json", "verify",
                                         "{d}"), ("manifest.json",)),
    C("verify manifest not UTF-8", on_file("run/manifest.json", b"\xff\xfe{", "verify", "{d}"),
      ("manifest.json",)),
    C("inspect corrupt manifest", on_file("run/manifest.json", "[1", "inspect", "{d}"),
      ("manifest.json",)),
    C("check report not JSON", on_file("r.json", "{", "check", "{p}", "--baseline", "{p}"),
      ("r.json",)),
    C("check bad tolerance", on_file("r.json", SAMPLE_REPORT.read_bytes(), "check", "{p}",
                                     "--baseline", "{p}", "--latency-tolerance", "lots"),
      ("--latency-tolerance",)),
    C("check baseline engines not objects", check_baseline('{"engines": [1, 2]}'),
      ("b.json", "'engines[0]'", "object")),
    C("check accuracy a string", check_baseline(sample_report(
        lambda r: r["engines"][0].update(accuracy="high"))), ("b.json", "engines[0].accuracy")),
    C("check p99 a string", check_baseline(sample_report(
        lambda r: r["engines"][0]["latency"].update(p99_ms="slow"))),
      ("b.json", "engines[0].latency.p99_ms", "number")),
    C("check report p99 a string", on_file("r.json", sample_report(
        lambda r: r["engines"][1]["latency"].update(p99_ms="slow")), "check", "{p}", "--baseline",
                                           str(SAMPLE_REPORT)), ("r.json", "engines[1].latency")),
    C("check constraint without a limit", check_baseline(sample_report(
        lambda r: r["constraints"][0].pop("limit"))), ("b.json", "constraints[0].limit")),
    C("check unknown task", check_baseline(sample_report(lambda r: r.update(task="x"))),
      ("b.json", "'task'")),
    C("check update a baseline that is a directory", on_file(
        "ci/keep", "", "check", str(SAMPLE_REPORT), "--baseline", "{d}", "--update-baseline"),
      ("--baseline", "directory")),
    # a budget no student can meet: exit 1, naming the closest candidates
    C("evolution under an impossible budget", lambda r, a: compress(cnn(r, search={
        "strategy": "evolution", "population": 4, "cycles": 2}, constraints={
        "latency_budget_ms": 1e-9}, verify={"iterations": 100})),
      ("latency budget", "closest", "rejected.jsonl"), code=1),
    # a budget judged by a p99 of exactly 10 runs (no minimum duration): refused before the run
    C("verify.iterations too few for the budget's p99", lambda r, a: compress(cnn(r, constraints={
        "latency_budget_ms": 5.0})), ("model.yaml", "verify.iterations", "10 runs", "needs >= 100",
        "raise verify.iterations to 100")),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_explicit_case(case, tmp_path, assets, private_tmp):
    root = tmp_path / "case"
    root.mkdir()
    o = run_case(case.build(root, assets), root, watched=(assets,))
    assert_clean_failure(o, case.code, *case.expect)
    if case.marker:
        assert not (root / "PWNED").exists() and not Path("PWNED").exists()
