"""A Hugging Face teacher whose checkpoint lacks weights its model uses is refused in one line
naming teacher.path: from_pretrained initialised them at random with a logged warning, so a
masked-LM checkpoint (hub bert-base-uncased) given for text classification had a random head
and kdc distilled noise. Checkpoints saved whole, and sentence encoders saved without the
pooler their embedding never reads, load as before."""

from __future__ import annotations

import pytest
import transformers
from safetensors.torch import load_file, save_file
from tiny import bert_config, sentences, tiny_bert, tiny_vit, write_csv, write_yaml
from transformers import (
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
)
from typer.testing import CliRunner

from kdc.cli import app
from kdc.errors import UserError
from kdc.models.hf import load_model

SIZES = {
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "vocab_size": 60,
    "max_position_embeddings": 32,
}
FAMILIES = {  # config class and its sizes, the model classes of its checkpoints
    "bert": ("BertConfig", {"hidden_size": 16, **SIZES}),
    "roberta": ("RobertaConfig", {"hidden_size": 16, **SIZES}),
    "electra": ("ElectraConfig", {"hidden_size": 16, "embedding_size": 8, **SIZES}),
    "deberta-v2": ("DebertaV2Config", {"hidden_size": 16, **SIZES}),
    "mpnet": ("MPNetConfig", {"hidden_size": 16, **SIZES}),
    "distilbert": (
        "DistilBertConfig",
        {"dim": 16, "n_layers": 2, "n_heads": 2, "hidden_dim": 32, "vocab_size": 60},
    ),
}
PREFIX = {"bert": "Bert", "roberta": "Roberta", "electra": "Electra", "deberta-v2": "DebertaV2"}
PREFIX.update({"mpnet": "MPNet", "distilbert": "DistilBert"})
KW = {"local_files_only": True}


def _saved(tmp_path, family: str, head: str, **model_kw):
    """The directory of a tiny untrained `family` model of class `<Prefix><head>`."""
    config_class, sizes = FAMILIES[family]
    model_class = getattr(transformers, PREFIX[family] + head)
    model = model_class(getattr(transformers, config_class)(**sizes), **model_kw)
    model.save_pretrained(str(tmp_path / f"{family}{head}"))
    return tmp_path / f"{family}{head}"


def _refused(path, auto_class) -> UserError:
    with pytest.raises(UserError) as e:
        load_model(path, auto_class, KW, False)
    assert "\n" not in str(e.value) and str(path) in str(e.value), e.value
    assert e.value.field == "teacher.path" and "at random" in e.value.message
    return e.value


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_masked_lm_checkpoint_is_no_classifier_teacher(tmp_path, family):
    path = _saved(tmp_path, family, "ForMaskedLM")
    e = _refused(path, AutoModelForSequenceClassification)
    assert e.message.startswith(f"the {PREFIX[family]}ForMaskedLM checkpoint lacks ")
    assert "classifier." in e.message and "sentence-embedding" in e.fix
    # as a sentence encoder (AutoModel) it is the encoder to compress: it loads
    load_model(path, AutoModel, KW, False)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_classifier_saved_whole_loads_as_classifier_and_as_encoder(tmp_path, family):
    path = _saved(tmp_path, family, "ForSequenceClassification")
    load_model(path, AutoModelForSequenceClassification, KW, False)
    load_model(path, AutoModel, KW, False)  # a RoBERTa/MPNet classifier has no pooler


@pytest.mark.parametrize("family", ["bert", "roberta", "mpnet"])
def test_a_sentence_encoder_saved_without_its_pooler_loads(tmp_path, family):
    """sentence-transformers saves encoders without BERT's pooler; the embedding pools the last
    hidden state, so the pooler initialised at random is never read."""
    path = _saved(tmp_path, family, "Model", add_pooling_layer=False)
    model = load_model(path, AutoModel, KW, False)
    assert model.pooler is not None  # built at random, and left unread by PooledEncoder


def _drop(path, part: str) -> None:
    state = load_file(str(path / "model.safetensors"))
    kept = {k: v for k, v in state.items() if part not in k}
    save_file(kept, str(path / "model.safetensors"), metadata={"format": "pt"})


def test_a_classifier_without_its_head_weights_is_refused(tmp_path):
    model, _ = tiny_bert(tmp_path)
    model.save_pretrained(str(tmp_path / "teacher"))
    _drop(tmp_path / "teacher", "classifier.")
    e = _refused(tmp_path / "teacher", AutoModelForSequenceClassification)
    assert "lacks 2 weights BertForSequenceClassification uses (classifier.bias, " in e.message


def test_an_encoder_missing_a_layer_is_refused_for_sentence_embedding(tmp_path):
    """Only the pooler may be missing from a sentence encoder: not its layers."""
    path = _saved(tmp_path, "bert", "Model", add_pooling_layer=False)
    _drop(path, "encoder.layer.1.")
    e = _refused(path, AutoModel)
    assert "lacks 16 weights BertModel uses (encoder.layer.1." in e.message
    assert "… and 13 more" in e.message and "save_pretrained" in e.fix


@pytest.mark.parametrize(
    ("arch", "refused"),
    [
        ("ViTForImageClassification", False),
        ("ViTForMaskedImageModeling", True),
        ("DeiTForImageClassification", False),
        ("DeiTForImageClassificationWithTeacher", False),
        ("DeiTForMaskedImageModeling", True),
    ],
)
def test_an_image_checkpoint_without_a_classifier_is_refused(tmp_path, arch, refused):
    kind = "deit" if arch.startswith("DeiT") else "vit"
    config = tiny_vit(["a", "b", "c"], channels=3, hidden=16, layers=2, heads=2, kind=kind).config
    getattr(transformers, arch)(config).save_pretrained(str(tmp_path / "teacher"))
    if not refused:
        load_model(tmp_path / "teacher", AutoModelForImageClassification, KW, False)
        return
    e = _refused(tmp_path / "teacher", AutoModelForImageClassification)
    assert "lacks 2 weights" in e.message and "image classifier's directory" in e.fix


def _project(tmp_path, model_class=None):
    """A text-classification project whose teacher is tiny_bert's classifier, or a model of
    `model_class` with its config."""
    model, tok = tiny_bert(tmp_path)
    model = model_class(model.config) if model_class else model
    model.save_pretrained(str(tmp_path / "teacher"))
    tok.save_pretrained(str(tmp_path / "teacher"))
    write_csv(tmp_path / "train.csv", sentences(40, 0))
    write_csv(tmp_path / "test.csv", sentences(20, 1))
    return write_yaml(tmp_path / "model.yaml", bert_config())


def _one_line(res) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 2 and len(lines) == 1 and "Traceback" not in res.output, res.output
    return " ".join(lines[0].split())


def test_validate_and_dry_run_refuse_a_masked_lm_teacher_from_its_config_json(tmp_path):
    cfg = _project(tmp_path, transformers.BertForMaskedLM)
    for args in (["validate", str(cfg)], ["compress", str(cfg), "--dry-run"]):
        line = _one_line(CliRunner().invoke(app, args))
        assert line.startswith(f"error: {cfg}: field 'teacher.path': the teacher is BertForMask")
        assert "no classification head" in line and "task: sentence-embedding" in line


def test_compress_refuses_a_classifier_without_head_weights_before_the_search(tmp_path):
    """config.json says a classifier, so validate passes: loading the teacher, the first thing
    the search does, finds the weights lacking."""
    cfg = _project(tmp_path)
    _drop(tmp_path / "teacher", "classifier.")
    assert CliRunner().invoke(app, ["validate", str(cfg)]).exit_code == 0
    res = CliRunner().invoke(app, ["compress", str(cfg), "--out", str(tmp_path / "run")])
    line = _one_line(res)
    assert line.startswith(f"error: {tmp_path / 'teacher'}: field 'teacher.path': the Bert"), line
    assert "lacks 2 weights" in line
    assert not (tmp_path / "run" / "search" / "candidates.jsonl").exists()  # no student scored


def test_the_refusal_is_the_only_line_printed(tmp_path, monkeypatch):
    """transformers logs at errors only while kdc loads a teacher: its "newly initialized ...
    TRAIN this model" warning was printed before kdc's one-line error; its level is restored."""
    levels = []
    load = AutoModelForSequenceClassification.from_pretrained.__func__

    def recorded(cls, *args, **kw):
        levels.append(transformers.logging.get_verbosity())
        return load(cls, *args, **kw)

    auto = AutoModelForSequenceClassification
    monkeypatch.setattr(auto, "from_pretrained", classmethod(recorded))
    before = transformers.logging.get_verbosity()
    _refused(_saved(tmp_path, "bert", "ForMaskedLM"), auto)
    assert levels == [transformers.logging.ERROR]
    assert transformers.logging.get_verbosity() == before
