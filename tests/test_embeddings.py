"""Sentence-embedding models: pooling read from a sentence-transformers directory, ONNX output
equal to PyTorch pooling, save/reload, and `kdc compress` end to end on a tiny encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tiny import FILLER, NEG, POS, bert_config, tiny_bert, write_yaml
from typer.testing import CliRunner

from kdc.errors import UserError
from kdc.export.onnx_export import export_onnx
from kdc.models import load_student
from kdc.models.sentence import SentenceAdapter, read_pooling


def _encoder_dir(
    root: Path, layers: int = 4, pooling: str = "mean", normalize: bool = True
) -> Path:
    """A tiny BertModel saved as a sentence-transformers directory."""
    root.mkdir(parents=True, exist_ok=True)
    model, tok = tiny_bert(root, layers=layers, encoder=True)
    model.save_pretrained(str(root))
    tok.save_pretrained(str(root))
    kinds = [("", "Transformer"), ("1_Pooling", "Pooling")]
    if normalize:
        kinds.append(("2_Normalize", "Normalize"))
    modules = [
        {"idx": i, "name": str(i), "path": p, "type": f"sentence_transformers.models.{t}"}
        for i, (p, t) in enumerate(kinds)
    ]
    (root / "modules.json").write_text(json.dumps(modules))
    (root / "1_Pooling").mkdir(exist_ok=True)
    (root / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": 32,
                "pooling_mode_cls_token": pooling == "cls",
                "pooling_mode_mean_tokens": pooling == "mean",
                "pooling_mode_max_tokens": pooling == "max",
                "pooling_mode_mean_sqrt_len_tokens": False,
            }
        )
    )
    return root


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(POS + NEG + FILLER, size=rng.integers(3, 10))) for _ in range(n)]


def test_pooling_from_sentence_transformers_dir(tmp_path):
    path = _encoder_dir(tmp_path / "enc")
    assert read_pooling(path) == ("mean", True)
    assert read_pooling(path, "cls") == ("cls", True)
    ad = SentenceAdapter.from_dir(path, max_length=16)
    x = ad.encode(_texts(6, 0))
    emb = ad.forward_numpy(x)
    h = ad.model(**{k: torch.from_numpy(v) for k, v in x.items()}).last_hidden_state.detach()
    m = torch.from_numpy(x["attention_mask"]).unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(emb, ref, atol=1e-5)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_unsupported_pooling_is_a_user_error(tmp_path):
    path = _encoder_dir(tmp_path / "enc")
    (path / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_mean_sqrt_len_tokens": True})
    )
    with pytest.raises(UserError, match="unsupported pooling"):
        read_pooling(path)


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_onnx_output_equals_pytorch(tmp_path, pooling):
    path = _encoder_dir(tmp_path / "enc", pooling=pooling, normalize=pooling != "max")
    ad = SentenceAdapter.from_dir(path, max_length=16)
    x = ad.encode(_texts(8, 1))
    onnx_path = export_onnx(ad, x, tmp_path / "m.onnx", output_name="embedding")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["embedding"]
    got = sess.run(None, x)[0]  # batch 8 through a graph exported at batch 2: dynamic axes
    assert got.shape == (8, 32)
    assert np.abs(got - ad.forward_numpy(x)).max() < 1e-4


def test_student_saves_and_reloads(tmp_path):
    teacher = SentenceAdapter.from_dir(_encoder_dir(tmp_path / "enc"), max_length=16)
    student = teacher.select_layers([1, 3])
    student.save(tmp_path / "student")
    meta = json.loads((tmp_path / "student" / "kdc_model.json").read_text())
    assert meta["adapter"] == "sentence" and meta["pooling"] == "mean" and meta["normalize"]
    assert meta["architecture"]["num_hidden_layers"] == 2
    back = load_student(tmp_path / "student")
    assert isinstance(back, SentenceAdapter) and back.normalize
    x = teacher.encode(_texts(4, 2))
    np.testing.assert_allclose(back.forward_numpy(x), student.forward_numpy(x), atol=1e-5)
    # the student given as a teacher (compressed again) keeps its normalisation: it has no
    # modules.json, and read as a plain encoder it dropped the L2 norm
    assert read_pooling(tmp_path / "student") == ("mean", True)
    assert SentenceAdapter.from_dir(tmp_path / "student", max_length=16).normalize


def test_sliced_student_and_width_agnostic_selection(tmp_path):
    from kdc.compress.distill import DistillData, evaluate

    teacher = SentenceAdapter.from_dir(_encoder_dir(tmp_path / "enc"), max_length=16)
    spec = {"layers": [1, 3], "hidden_size": 16, "num_attention_heads": 2}
    student = teacher.sliced(spec)
    assert student.architecture()["hidden_size"] == 16 and student.pooling == "mean"
    x = teacher.encode(_texts(12, 5))
    t = teacher.forward_numpy(x)
    assert student.forward_numpy(x).shape == (12, 16)
    data = DistillData(
        x, np.zeros(0, np.int64), x, np.zeros(0, np.int64), t, t, "sentence-embedding"
    )
    assert evaluate(teacher, data) == pytest.approx(1.0)
    assert -1.0 <= evaluate(student, data) <= 1.0  # Spearman: widths differ


def test_an_encoder_has_no_classifier_head_to_read_features_from(tmp_path):
    """The BERT pooler (its last Linear) is no head: the relation loss reads the output (the
    task's default), and asking for the pooled feature is a config error."""
    from kdc.compress.distill import DistillData, distill
    from kdc.config import DistillConfig

    teacher = SentenceAdapter.from_dir(_encoder_dir(tmp_path / "enc"), max_length=16)
    assert teacher.classifiers() == []
    student = teacher.select_layers([1, 3])
    x = teacher.encode(_texts(16, 5))
    t = teacher.forward_numpy(x)
    data = DistillData(
        x, np.zeros(0, np.int64), x, np.zeros(0, np.int64), t, t, "sentence-embedding"
    )
    cfg = {
        "epochs": 1,
        "batch_size": 8,
        "losses": [{"name": "relation", "params": {"on": "pooled"}}],
    }
    with pytest.raises(UserError, match=r"distill\.losses.*on: output"):
        distill(student, data, DistillConfig(**cfg), 0, teacher=teacher)
    cfg["losses"] = [{"name": "relation"}]
    assert np.isfinite(
        distill(student, data, DistillConfig(**cfg), 0, teacher=teacher).history[0]["loss"]
    )


def _project(tmp_path: Path, train: int, test: int, **over) -> Path:
    """A sentence-embedding project on `_encoder_dir` (train and test texts; `bert_config`'s
    settings, `over` merged in, no constraints): its model.yaml."""
    _encoder_dir(tmp_path / "teacher")
    (tmp_path / "train.txt").write_text("\n".join(_texts(train, 3)) + "\n")
    (tmp_path / "test.txt").write_text("\n".join(_texts(test, 4)) + "\n")
    data = {"source": "train.txt", "eval": "test.txt"}
    cfg = bert_config(name="tinyemb", task="sentence-embedding", data=data, **over)
    cfg.pop("constraints")
    return write_yaml(tmp_path / "model.yaml", cfg)


@pytest.mark.slow
def test_compress_sentence_embedding_end_to_end(tmp_path):
    from kdc.cli import app

    config = _project(tmp_path, 300, 80, distill={"epochs": 2, "augment": "mix"})
    res = CliRunner().invoke(
        app, ["compress", str(config), "--target", "host", "--out", str(tmp_path / "run"), "-q"]
    )
    assert res.exit_code in (0, 1), res.output  # 1: a constraint failed, still reported
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["teacher"]["accuracy"]["mean_cosine"] == pytest.approx(1.0, abs=1e-5)
    built = [e for e in report["engines"] if e["status"] == "built"]
    assert {e["precision"] for e in built} == {"fp32", "int8"}
    for e in built:
        acc = e["accuracy"]
        assert acc["metric"] == "mean_cosine"
        assert {"mean_cosine", "neighbour_recall_at_10_asym", "neighbour_recall_at_10_sym"} <= set(
            acc
        )
        assert acc["mean_cosine"] > 0.5
    losses = report["student"]["distill"]["losses"]
    assert losses == ["embedding", "relation"]


def test_evolution_search_without_labels_is_a_config_error(tmp_path):
    from kdc.cli import app

    _encoder_dir(tmp_path / "teacher")
    (tmp_path / "train.txt").write_text("\n".join(_texts(60, 3)) + "\n")
    config = write_yaml(
        tmp_path / "model.yaml",
        {
            "name": "tinyemb",
            "task": "sentence-embedding",
            "teacher": {"path": "teacher"},
            "data": {"source": "train.txt", "max_length": 16},
            "search": {"strategy": "evolution"},
        },
    )
    res = CliRunner().invoke(
        app, ["search", str(config), "--target", "host", "--out", str(tmp_path / "run"), "-q"]
    )
    assert res.exit_code == 2
    assert "search.strategy" in res.output and "strategy fixed" in res.output
    assert "Traceback" not in res.output


def test_init_sets_up_a_sentence_embedding_teacher(tmp_path):
    """A sentence-transformers directory (a bare BertModel) with a text file, or a table whose
    longest-text column is the text: a sentence-embedding config that plans."""
    from kdc.cli import app
    from kdc.config import load_config

    teacher = _encoder_dir(tmp_path / "teacher")
    (tmp_path / "t.txt").write_text("\n".join(_texts(50, 1)) + "\n")
    rows = "".join(f"{i},{t}\n" for i, t in enumerate(_texts(50, 2)))
    (tmp_path / "t.csv").write_text("id,sentence\n" + rows)
    for data, column in (("t.txt", None), ("t.csv", "sentence")):
        out = tmp_path / f"{data}.yaml"
        res = CliRunner().invoke(
            app, ["init", str(teacher), "--data", str(tmp_path / data), "--out", str(out)]
        )
        assert res.exit_code == 0, res.output
        cfg = load_config(out)
        assert cfg.task == "sentence-embedding" and cfg.student.layers == 2
        assert cfg.data.text_column == (column or "text") and "mean cosine" in out.read_text()
        plan = CliRunner().invoke(app, ["compress", str(out), "--dry-run"])
        assert plan.exit_code == 0, plan.output


def test_a_dense_module_after_pooling_is_a_user_error(tmp_path):
    """A Dense projection after the pooling (LaBSE's, distiluse's) was skipped without a word:
    the teacher's embedding was not the one its sentence-transformers model computes."""
    path = _encoder_dir(tmp_path / "enc")
    modules = json.loads((path / "modules.json").read_text())
    dense = {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    (path / "modules.json").write_text(json.dumps([*modules[:2], dense, modules[2]]))
    with pytest.raises(UserError, match=r"modules\.json.*module Dense is not supported"):
        read_pooling(path)


def test_an_operator_onnx_cannot_export_in_an_encoder_is_refused_before_distilling(
    tmp_path, monkeypatch
):
    """A Hugging Face teacher the TorchScript exporter exports (a sentence encoder; one with its
    own modelling code) whose forward has torch.fft: refused at the search's start with the
    export stage's one line (was: at the export stage, after the distillation)."""
    from transformers.models.bert import modeling_bert

    from kdc.cli import app

    forward = modeling_bert.BertIntermediate.forward
    monkeypatch.setattr(
        modeling_bert.BertIntermediate,
        "forward",
        lambda self, h: forward(self, h) + torch.fft.rfft(h).abs().mean() * 0,
    )
    config = _project(tmp_path, 60, 20, distill={"epochs": 1})
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["compress", str(config), "--out", str(run), "-q"])
    said = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert len(said) == 1 and f"{config}: field 'teacher'" in said[0], said
    assert "'aten::fft_rfft'" in said[0]
    assert not (run / "distill").exists()
