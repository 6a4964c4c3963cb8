"""`kdc validate`, `--dry-run` and a run refuse a Hugging Face teacher directory they could not
load, before any stage, without loading it; weights saved in a form kdc does not read."""

from __future__ import annotations

import pytest
from test_preflight import _one_line, runner
from tiny import bert_config, hf_stub, sentences, write_csv, write_yaml

from kdc.cli import app


@pytest.mark.parametrize(
    ("missing", "words"),
    [
        ("config.json", "no config.json"),
        ("model.safetensors", "no PyTorch weights"),
        ("vocab.txt", "no tokenizer files"),
    ],
)
def test_validate_refuses_a_teacher_directory_the_run_cannot_load(tmp_path, missing, words):
    """A save_pretrained directory that lost its config.json, weights or tokenizer: `kdc
    validate` and `--dry-run` said "valid" and the run failed in its search stage; now both
    refuse it (exit 2, one line naming the directory and teacher.path) and a run leaves no
    directory behind."""
    teacher = hf_stub(tmp_path / "teacher", {"model_type": "bert", "num_hidden_layers": 4})
    (teacher / missing).unlink()
    write_csv(tmp_path / "train.csv", sentences(8, 1))
    write_csv(tmp_path / "test.csv", sentences(8, 2))
    cfg = write_yaml(tmp_path / "model.yaml", bert_config())
    for args in (["validate", str(cfg)], ["compress", str(cfg), "--dry-run"]):
        line = _one_line(runner.invoke(app, args))
        assert line.startswith(f"error: {teacher}: field 'teacher.path': ") and words in line
    out = tmp_path / "run"
    _one_line(runner.invoke(app, ["compress", str(cfg), "--out", str(out)]))
    assert not out.exists()


def test_a_model_saved_whole_is_named_as_such(tmp_path):
    """torch.save(model), not its state dict: "cannot read weights (UnpicklingError)" left the
    user to guess; the line now says what the file holds and how to save the weights alone."""
    import torch

    from kdc.errors import UserError
    from kdc.models.weights import load_state_dict

    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole.pt")
    with pytest.raises(UserError, match=r"pickled Python objects \(a model saved whole") as e:
        load_state_dict(tmp_path / "whole.pt")
    assert e.value.field == "teacher.weights" and "model.state_dict()" in e.value.fix
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(UserError, match=r"cannot read weights \("):
        load_state_dict(tmp_path / "junk.pt")


def test_init_refuses_a_teacher_directory_without_weights(tmp_path):
    """`kdc init` wrote a config for a directory holding no weights, which validate then
    refused; it now refuses it as validate does (exit 2, one line naming MODEL_DIR)."""
    conf = {"architectures": ["BertForSequenceClassification"], "num_labels": 2}
    teacher = hf_stub(tmp_path / "teacher", {"model_type": "bert", **conf})
    (teacher / "model.safetensors").unlink()
    data = write_csv(tmp_path / "train.csv", sentences(8, 1))
    out = tmp_path / "model.yaml"
    line = _one_line(
        runner.invoke(app, ["init", str(teacher), "--data", str(data), "--out", str(out)])
    )
    assert line.startswith(f"error: {teacher}: field 'MODEL_DIR': no PyTorch weights"), line
    assert not out.exists()
