"""A Hugging Face teacher whose head is not a single-label classifier (regression, multi-label)
is refused by `kdc init`, `validate` and `compress` in one line naming config.json: kdc would
distil, score and gate it as a softmax classifier."""

from __future__ import annotations

import pytest
from tiny import bert_config, sentences, tiny_bert, write_csv, write_yaml
from typer.testing import CliRunner

from kdc.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("labels", "problem", "said"),
    [
        (1, None, "a regression model (config.json one output (num_labels 1))"),
        (1, "regression", "a regression model (config.json problem_type regression)"),
        (2, "multi_label_classification", "a multi-label classifier"),
    ],
)
def test_heads_other_than_single_label_are_refused(tmp_path, labels, problem, said):
    model, tok = tiny_bert(tmp_path, num_labels=labels)
    if labels == 1:
        model.config.id2label, model.config.label2id = {0: "score"}, {"score": 0}
    model.config.problem_type = problem
    model.save_pretrained(str(tmp_path / "teacher"))
    tok.save_pretrained(str(tmp_path / "teacher"))
    write_csv(tmp_path / "train.csv", sentences(40, 0))
    write_csv(tmp_path / "test.csv", sentences(20, 1))
    cfg = write_yaml(tmp_path / "model.yaml", bert_config(data={"source": "train.csv"}))
    for args, field in (
        (["validate", str(cfg)], "teacher.path"),
        (["compress", str(cfg), "--dry-run"], "teacher.path"),
        (["init", str(tmp_path / "teacher"), "--data", str(tmp_path / "train.csv")], "MODEL_DIR"),
    ):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        out = " ".join(res.output.split())
        assert f"field '{field}': the teacher is {said}" in out
        assert "config.json" in out and "Traceback" not in out


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c.pop("architectures"),  # a config saved without them
        lambda c: c.update(auto_map={"AutoModelForSequenceClassification": "m.Cls"}),  # custom
    ],
)
def test_a_multi_label_head_is_refused_without_known_class_names(tmp_path, edit):
    """The head check reads problem_type and the label count, not the class names: a config
    without `architectures`, or custom code (`auto_map`), is checked too."""
    import json

    model, tok = tiny_bert(tmp_path)
    model.config.problem_type = "multi_label_classification"
    model.save_pretrained(str(tmp_path / "teacher"))
    tok.save_pretrained(str(tmp_path / "teacher"))
    conf_file = tmp_path / "teacher" / "config.json"
    conf = json.loads(conf_file.read_text())
    edit(conf)
    conf_file.write_text(json.dumps(conf))
    write_csv(tmp_path / "train.csv", sentences(40, 0))
    write_csv(tmp_path / "test.csv", sentences(20, 1))
    cfg = bert_config(data={"source": "train.csv"})
    cfg["teacher"]["trust_remote_code"] = True
    res = runner.invoke(app, ["validate", str(write_yaml(tmp_path / "model.yaml", cfg))])
    assert res.exit_code == 2, res.output
    assert "the teacher is a multi-label classifier" in " ".join(res.output.split())
