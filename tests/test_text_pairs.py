"""Text pairs (NLI, paraphrase, cross-encoders): `data.text_column: [a, b]` is read as pairs,
tokenized as (text, text_pair), and a model with token types takes `token_type_ids` through
distillation, export, the engines and the input contract."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import yaml
from tiny import bert_config, make_pair_project, tiny_bert, write_yaml
from typer.testing import CliRunner

from kdc.cli import app
from kdc.config import parse_config
from kdc.data.readers import read_delimited, read_jsonl
from kdc.errors import ConfigError, UserError
from kdc.models.hf import HFTextAdapter

runner = CliRunner()
PAIR = ["premise", "hypothesis"]


@pytest.fixture(scope="module")
def pair_project(tmp_path_factory):
    return make_pair_project(tmp_path_factory.mktemp("pairs"))


def _cfg(**data):
    return parse_config(bert_config(data=data))


def test_config_takes_one_or_two_text_columns():
    assert _cfg(text_column=PAIR).data.text_columns == PAIR
    assert _cfg(text_column=PAIR).data.text_pairs
    one = _cfg(text_column=["review"]).data
    assert (one.text_column, one.text_pairs) == ("review", False)
    for bad in (["a", "b", "c"], ["a", "a"], []):
        with pytest.raises(ConfigError) as e:
            _cfg(text_column=bad)
        assert e.value.field == "data.text_column"
        assert "two different ones for text pairs" in e.value.message


def _validate(project, name: str, **over) -> str:
    cfg = yaml.safe_load(project.read_text())
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) else v
    res = runner.invoke(app, ["validate", str(write_yaml(project.parent / name, cfg))])
    assert res.exit_code == 2, res.output
    return res.output


def test_pair_checks_name_text_column(pair_project):
    out = _validate(pair_project, "emb.yaml", task="sentence-embedding")
    assert "field 'data.text_column'" in out
    assert "a sentence-embedding teacher embeds one text" in out
    assert "cross-encoder classifier (2 or more classes)" in " ".join(out.split())
    out = _validate(pair_project, "lab.yaml", data={"text_column": ["premise", "label"]})
    assert "field 'data.text_column'" in out and "the text column is the label column" in out


def test_readers_return_pairs(tmp_path):
    csv_file = tmp_path / "d.csv"
    csv_file.write_text("premise,hypothesis,label\na b,c d,yes\ne f,g h,no\n")
    texts, labels = read_delimited(csv_file, PAIR, "label", ",")
    assert texts == [("a b", "c d"), ("e f", "g h")] and labels == ["yes", "no"]
    jl = tmp_path / "d.jsonl"
    jl.write_text('{"premise": "a", "hypothesis": "b", "label": 1}\n')
    assert read_jsonl(jl, PAIR, "label")[0] == [("a", "b")]
    with pytest.raises(UserError, match="column 'hypo' not found") as e:
        read_delimited(csv_file, ["premise", "hypo"], "label", ",")
    assert e.value.field == "data.text_column"
    blank = tmp_path / "blank.csv"
    blank.write_text("premise,hypothesis,label\na b,,yes\n")
    with pytest.raises(UserError, match="the text at line 2 is blank"):
        read_delimited(blank, PAIR, "label", ",")


def test_encode_pairs_with_and_without_token_types(tmp_path):
    model, tok = tiny_bert(tmp_path)
    pairs = [("good film", "bad plot"), ("great", "awful day")]
    adapter = HFTextAdapter(model.eval(), tok, max_length=12, text_pair=True)
    assert adapter.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    enc = adapter.encode(pairs)
    assert set(enc) == set(adapter.input_names)
    want = tok([p[0] for p in pairs], [p[1] for p in pairs], padding="max_length", max_length=12)
    assert np.array_equal(enc["token_type_ids"], np.array(want["token_type_ids"]))
    assert enc["token_type_ids"].max() == 1  # the second text's tokens
    assert adapter.forward_numpy(enc).shape == (2, 2)
    # students keep reading pairs
    assert adapter.select_layers([0, 1]).input_names == adapter.input_names
    # one text: no token types (they are all zero), as before
    assert HFTextAdapter(model, tok, max_length=12).input_names == ["input_ids", "attention_mask"]
    # a model without a type embedding to speak of (RoBERTa's has one row): separators alone
    model.config.type_vocab_size = 1
    single = HFTextAdapter(model, tok, max_length=12, text_pair=True)
    assert single.input_names == ["input_ids", "attention_mask"]
    assert set(single.encode(pairs)) == {"input_ids", "attention_mask"}


def test_saved_student_reads_pairs_again(tmp_path):
    from kdc.models import load_student

    model, tok = tiny_bert(tmp_path)
    HFTextAdapter(model.eval(), tok, max_length=12, text_pair=True).save(tmp_path / "s")
    assert json.loads((tmp_path / "s" / "kdc_model.json").read_text())["text_pair"] is True
    again = load_student(tmp_path / "s", max_length=12)
    assert again.input_names[-1] == "token_type_ids"


def test_text_contract_gives_the_pair_call():
    from kdc.deploy.input_contract import text_input_contract

    shapes = {k: ([1, 24], "int64") for k in ("input_ids", "attention_mask", "token_type_ids")}
    c = text_input_contract(shapes, 24, ["no", "yes"], pair_columns=PAIR)
    assert c["tokenizer"]["call"].startswith("tokenizer(texts, text_pairs, padding=")
    assert (
        "'premise'" in c["tokenizer"]["text_pair"] and "'hypothesis'" in c["tokenizer"]["text_pair"]
    )
    assert "token_type_ids" in c["inputs"]
    assert "text_pair" not in text_input_contract(shapes, 24, ["no", "yes"])["tokenizer"]


def test_init_writes_a_known_column_pair(pair_project, tmp_path):
    root = pair_project.parent
    out = tmp_path / "m.yaml"
    res = runner.invoke(
        app, ["init", str(root / "teacher"), "--data", str(root / "train.csv"), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "text 'premise' and 'hypothesis'" in res.output
    data = yaml.safe_load(out.read_text())["data"]
    assert (data["text_column"], data["label_column"]) == (PAIR, "label")
    assert "a text pair" in out.read_text()


def test_compress_a_pair_classifier(pair_project, tmp_path):
    """End to end on the host: the engines take token_type_ids and keep the teacher's accuracy
    on a task that needs the two texts told apart."""
    cfg = yaml.safe_load(pair_project.read_text())
    path = write_yaml(pair_project.parent / "host.yaml", cfg)
    run = tmp_path / "run"
    res = runner.invoke(app, ["compress", str(path), "--target", "host", "-o", str(run), "-q"])
    assert res.exit_code == 0, res.output
    report = json.loads((run / "report.json").read_text())
    teacher = report["teacher"]["accuracy"]["accuracy"]
    assert teacher >= 0.9  # learnable: the hypothesis's keywords decide
    assert len(report["engines"]) == 2  # FP32 and INT8
    for e in report["engines"]:
        graph = onnx.load(str(run / e["path"]), load_external_data=False)
        assert [i.name for i in graph.graph.input][-1] == "token_type_ids"
        assert e["accuracy"]["accuracy"] >= teacher - 0.1
    meta = json.loads((run / "distill" / "student" / "kdc_model.json").read_text())
    assert meta["text_pair"] is True


def test_init_keeps_a_known_pair_column_that_holds_the_labels(pair_project, tmp_path):
    """`question`/`answer` where the answers are the classes: one text column and its labels,
    not a pair with no label column left (init failed on such a table)."""
    import csv

    data = tmp_path / "qa.csv"
    with open(pair_project.parent / "train.csv") as f, open(data, "w", newline="") as out:
        w = csv.writer(out)
        w.writerow(["question", "answer"])
        w.writerows([r["premise"] + " " + r["hypothesis"], r["label"]] for r in csv.DictReader(f))
    out = tmp_path / "m.yaml"
    args = ["init", str(pair_project.parent / "teacher"), "--data", str(data), "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    written = yaml.safe_load(out.read_text())["data"]
    assert (written["text_column"], written["label_column"]) == ("question", "answer")
