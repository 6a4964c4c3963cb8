"""A structurally pruned transformer student's config.json states its pruned sizes (hidden_size,
num_attention_heads, intermediate_size) where a Hugging Face config can: it kept the unpruned
ones, so `from_pretrained` of the directory failed on a size mismatch, and a search from it as
the teacher crashed ("selected index k out of range": FFN sizes beyond its pruned ones). Sizes
no config states (BERT's heads are hidden_size / num_attention_heads wide, so pruned heads in an
unpruned hidden size; its pooler, kept whole, reading pruned hidden channels) make such a
teacher refused for slicing, in one line; its whole layers still make students."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny import tiny_text_adapter, tiny_vit

from kdc.compress.prune import prune_once
from kdc.compress.space import space_for
from kdc.compress.student import derive_student
from kdc.config import PruneConfig
from kdc.errors import UserError
from kdc.models.hf import HFTextAdapter
from kdc.models.hf_image import HFImageAdapter

KEYS = ("hidden_size", "num_attention_heads", "intermediate_size")


def _bert(tmp_path):
    teacher = tiny_text_adapter(tmp_path, layers=2)  # hidden 32, 2 heads of 16, FFN 64
    return teacher, teacher.encode(["a good film", "an awful plot", "the movie was fine", "ok"])


def _vit(tmp_path):
    torch.manual_seed(0)  # hidden 32, 2 heads of 16, FFN 64
    model = tiny_vit(["a", "b"], channels=1, hidden=32, layers=2, heads=2)
    teacher = HFImageAdapter(model.eval())
    return teacher, teacher.encode(np.random.default_rng(0).random((4, 1, 8, 8), np.float32))


def _pruned(tmp_path, build, **prune):
    teacher, x = build(tmp_path)
    cfg = PruneConfig(enabled=True, ratio=0.5, **prune)
    pruned = prune_once(teacher, x, cfg, ratio=0.5, round_to=8)
    pruned.save(tmp_path / "pruned")
    return pruned, x


@pytest.mark.parametrize(
    ("build", "prune", "sizes"),
    [
        (_bert, {"head_ratio": 0.0}, (32, 2, 32)),  # FFN only
        (_vit, {"hidden_ratio": 0.5}, (16, 1, 32)),  # hidden, heads and FFN
    ],
)
def test_the_saved_config_states_the_pruned_sizes(tmp_path, build, prune, sizes):
    from transformers import AutoConfig, AutoModelForImageClassification
    from transformers import AutoModelForSequenceClassification as Text

    pruned, x = _pruned(tmp_path, build, **prune)
    d = tmp_path / "pruned"
    assert tuple(json.loads((d / "config.json").read_text())[k] for k in KEYS) == sizes
    image = AutoConfig.from_pretrained(str(d)).model_type == "vit"
    hf = (AutoModelForImageClassification if image else Text).from_pretrained(str(d)).eval()
    with torch.no_grad():
        logits = hf(**{k: torch.from_numpy(v) for k, v in x.items()}).logits.numpy()
    np.testing.assert_allclose(logits, pruned.forward_numpy(x), atol=1e-6)

    # as a teacher: the search space's largest student is the pruned model itself
    teacher = HFImageAdapter.from_dir(d) if image else HFTextAdapter.from_dir(d, max_length=16)
    space = space_for(teacher, x, 8)
    student = derive_student(teacher, space.decode(space.largest()).spec, x)
    np.testing.assert_allclose(student.forward_numpy(x), pruned.forward_numpy(x), atol=1e-5)


@pytest.mark.parametrize("prune", [{}, {"hidden_ratio": 0.5}])  # heads of 16 in 32; pooler
def test_sizes_no_config_states_refuse_slicing_in_one_line(tmp_path, prune):
    pruned, x = _pruned(tmp_path, _bert, **prune)
    teacher = HFTextAdapter.from_dir(tmp_path / "pruned", max_length=16)
    np.testing.assert_array_equal(teacher.forward_numpy(x), pruned.forward_numpy(x))
    spec = {"family": "transformer", "layers": [0, 1], "intermediate_size": 16}
    with pytest.raises(UserError) as e:
        derive_student(teacher, spec, x)
    assert "\n" not in str(e.value) and "teacher" in str(e.value)
    assert str(tmp_path / "pruned") in str(e.value)  # the file: which teacher it is
    whole_layers = derive_student(teacher, {"family": "transformer", "layers": [1]}, x)
    assert whole_layers.architecture()["num_attention_heads"] == 1


def test_a_classification_head_of_two_layers_is_left_whole(tmp_path):
    """ELECTRA's and RoBERTa's heads are dense → tanh → out_proj: pruning cut the dense layer's
    units (only out_proj was left out), which no config states, so a pruned student's config
    kept its unpruned FFN size and no student was sliced from it."""
    from test_embedding_projection import _electra  # hidden 48, FFN 64
    from tiny import tiny_bert

    _, tok = tiny_bert(tmp_path)
    torch.manual_seed(0)
    teacher = HFTextAdapter(_electra(len(tok)).eval(), tok, max_length=16)
    x = teacher.encode(["a good film", "an awful plot", "the movie was fine", "ok"])
    cfg = PruneConfig(enabled=True, ratio=0.5, head_ratio=0.0)
    pruned = prune_once(teacher, x, cfg, ratio=0.5, round_to=8)
    assert tuple(pruned.model.classifier.dense.weight.shape) == (48, 48)
    pruned.save(tmp_path / "pruned")
    assert json.loads((tmp_path / "pruned" / "config.json").read_text())["intermediate_size"] == 32
    again = HFTextAdapter.from_dir(tmp_path / "pruned", max_length=16)
    spec = {"family": "transformer", "layers": [0, 1], "intermediate_size": 16}
    student = derive_student(again, spec, x)
    assert student.architecture()["intermediate_size"] == 16
