"""A structurally pruned transformer student's config.json states its pruned sizes where a
Hugging Face config can: hidden_size, intermediate_size, and heads pruned with the head size
kept as num_attention_heads less each layer's `pruned_heads`, which transformers prunes again on
loading (BERT, RoBERTa, ELECTRA, ViT, DeiT). It kept the unpruned sizes, so `from_pretrained`
of the directory failed on a size mismatch; a search from it as the teacher crashed ("selected
index k out of range"), and was then refused for any student but whole layers. Sizes no config
states (a family without `_prune_heads`, a pooler kept whole reading pruned hidden channels)
make such a teacher refused for slicing, in one line; its whole layers still make students."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from tiny import bert_config, tiny_bert, tiny_text_adapter, tiny_vit, write_yaml

from kdc.compress.prune import GradualPruning, prune_once
from kdc.compress.space import space_for
from kdc.compress.student import derive_student
from kdc.config import PruneConfig
from kdc.errors import UserError
from kdc.models.hf import HFTextAdapter
from kdc.models.hf_image import HFImageAdapter

KEYS = ("hidden_size", "num_attention_heads", "intermediate_size")
TEXTS = ["a good film", "an awful plot", "the movie was fine", "ok"]


def _bert(tmp_path):
    teacher = tiny_text_adapter(tmp_path, layers=2)  # hidden 32, 2 heads of 16, FFN 64
    return teacher, teacher.encode(TEXTS)


def _text(name, **sizes):
    """A tiny `name` (transformers' class prefix) classifier builder: hidden 32, 2 heads of 16,
    FFN 64, 2 layers."""

    def build(tmp_path):
        import transformers

        _, tok = tiny_bert(tmp_path)
        conf, cls = (
            getattr(transformers, f"{name}{k}") for k in ("Config", "ForSequenceClassification")
        )
        sizes.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
        torch.manual_seed(0)
        model = cls(conf(vocab_size=len(tok), intermediate_size=64, pad_token_id=0, **sizes))
        teacher = HFTextAdapter(model.eval(), tok, max_length=16)
        return teacher, teacher.encode(TEXTS)

    return build


def _image(kind):
    def build(tmp_path):
        torch.manual_seed(0)  # hidden 32, 2 heads of 16, FFN 64
        model = tiny_vit(["a", "b"], channels=1, hidden=32, layers=2, heads=2, kind=kind)
        teacher = HFImageAdapter(model.eval())
        return teacher, teacher.encode(np.random.default_rng(0).random((4, 1, 8, 8), np.float32))

    return build


_vit = _image("vit")
# families kdc prunes whose transformers model prunes heads (`_prune_heads`)
HEAD_PRUNED = {
    "bert": _bert,
    "roberta": _text("Roberta"),
    "electra": _text("Electra"),
    "vit": _vit,
    "deit": _image("deit-teacher"),
}


def _pruned(tmp_path, build, **prune):
    teacher, x = build(tmp_path)
    cfg = PruneConfig(enabled=True, ratio=0.5, **prune)
    pruned = prune_once(teacher, x, cfg, ratio=0.5, round_to=8)
    pruned.save(tmp_path / "pruned")
    return teacher, pruned, x


def _config(d):
    return json.loads((d / "config.json").read_text())


def _reloaded(d):
    if _config(d)["model_type"] in ("vit", "deit"):
        return HFImageAdapter.from_dir(d)
    return HFTextAdapter.from_dir(d, max_length=16)


def _hf_logits(d, x):
    from transformers import AutoModelForImageClassification
    from transformers import AutoModelForSequenceClassification as Text

    image = _config(d)["model_type"] in ("vit", "deit")
    hf = (AutoModelForImageClassification if image else Text).from_pretrained(str(d)).eval()
    with torch.no_grad():
        return hf(**{k: torch.from_numpy(v) for k, v in x.items()}).logits.numpy()


def _largest_student(teacher, x):
    space = space_for(teacher, x, 8)
    return derive_student(teacher, space.decode(space.largest()).spec, x)


@pytest.mark.parametrize(
    ("build", "prune", "sizes"),
    [
        (_bert, {"head_ratio": 0.0}, (32, 2, 32)),  # FFN only
        (_vit, {"hidden_ratio": 0.5}, (16, 1, 32)),  # hidden, heads and FFN
    ],
)
def test_the_saved_config_states_the_pruned_sizes(tmp_path, build, prune, sizes):
    _, pruned, x = _pruned(tmp_path, build, **prune)
    d = tmp_path / "pruned"
    assert tuple(_config(d)[k] for k in KEYS) == sizes and not _config(d).get("pruned_heads")
    np.testing.assert_allclose(_hf_logits(d, x), pruned.forward_numpy(x), atol=1e-6)

    # as a teacher: the search space's largest student is the pruned model itself
    student = _largest_student(_reloaded(d), x)
    np.testing.assert_allclose(student.forward_numpy(x), pruned.forward_numpy(x), atol=1e-5)


@pytest.mark.parametrize("family", HEAD_PRUNED)
def test_pruned_heads_are_stated_and_from_pretrained_rebuilds_them(tmp_path, family):
    """Heads pruned in a hidden size kept (kdc's default): config.json's pruned_heads names the
    teacher heads each layer lost, so transformers' own pruning of them is kdc's."""
    teacher, pruned, x = _pruned(tmp_path, HEAD_PRUNED[family])
    d = tmp_path / "pruned"
    conf = _config(d)
    assert tuple(conf[k] for k in KEYS) == (32, 2, 32)
    assert {k: len(v) for k, v in conf["pruned_heads"].items()} == {"0": 1, "1": 1}
    np.testing.assert_allclose(_hf_logits(d, x), pruned.forward_numpy(x), atol=1e-6)
    by_hf = copy.deepcopy(teacher.model)
    by_hf.prune_heads({int(k): v for k, v in conf["pruned_heads"].items()})
    state = pruned.model.state_dict()
    for k, v in by_hf.state_dict().items():
        if ".attention." in k and "LayerNorm" not in k:
            torch.testing.assert_close(state[k], v, rtol=0, atol=0)

    # as a teacher: the largest student of its search space is itself, pruned heads and all
    again = _reloaded(d)
    student = _largest_student(again, x)
    np.testing.assert_allclose(student.forward_numpy(x), pruned.forward_numpy(x), atol=1e-5)
    assert student.config.pruned_heads == again.config.pruned_heads


def _four_heads(tmp_path):
    """A tiny BERT of 2 layers of 4 heads of 8 and the gradual pruning of 3 of them, one a step."""
    from transformers import BertConfig, BertForSequenceClassification

    _, tok = tiny_bert(tmp_path)
    torch.manual_seed(0)
    conf = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4
    )
    teacher = HFTextAdapter(BertForSequenceClassification(conf).eval(), tok, max_length=16)
    x = teacher.encode(TEXTS)
    student = copy.deepcopy(teacher)
    cfg = PruneConfig(enabled=True, ratio=0.75, steps=3)
    return teacher, student, GradualPruning(student, x, cfg, ratio=0.75, round_to=8)


def test_heads_pruned_in_steps_are_numbered_as_transformers_numbers_them(tmp_path):
    """torch-pruning numbers a step's heads among those left; transformers' pruned_heads among
    the config's (heads pruned before left out of the count): 3 of 4 heads, one a step."""
    teacher, student, pruning = _four_heads(tmp_path)
    pruning.start(3)
    while not pruning.finished:
        pruning.step()
    pruned_heads = student.config.pruned_heads
    assert {k: len(v) for k, v in pruned_heads.items()} == {0: 3, 1: 3}
    by_hf = copy.deepcopy(teacher.model)
    by_hf.prune_heads(copy.deepcopy(pruned_heads))
    state = student.model.state_dict()
    for k, v in by_hf.state_dict().items():
        if ".attention.self." in k:
            torch.testing.assert_close(state[k], v, rtol=0, atol=0)


def test_a_resumed_pruning_names_the_heads_an_uninterrupted_one_does(tmp_path):
    """A distillation checkpoint holds the student's pruned_heads beside its weights, whose
    shapes tell how many heads each layer lost, not which."""
    from kdc.compress.distill import _pruned_heads, _restore

    teacher, student, pruning = _four_heads(tmp_path)
    pruning.start(3)
    pruning.step()
    pruning.step()
    state = {"model": student.module.state_dict(), "pruned_heads": _pruned_heads(student)}
    resumed = copy.deepcopy(teacher)
    _restore(resumed, state)
    assert resumed.config.pruned_heads == student.config.pruned_heads
    pruning.step()
    again = GradualPruning(resumed, pruning.example, pruning.cfg, ratio=0.75, round_to=8)
    again.start(3, done=2)
    again.step()
    assert resumed.config.pruned_heads == student.config.pruned_heads


def _heads_kept(teacher, pruned):
    """Per layer, the teacher heads a pruned ViT kept (whose query rows it has, on the hidden
    channels it kept: its [CLS] token's)."""
    from kdc.models.hf import layer_list

    t_cls, p_cls = (m.model.vit.embeddings.cls_token[0, 0] for m in (teacher, pruned))
    cols = [int((t_cls == v).nonzero()[0, 0]) for v in p_cls]
    kept = []
    for t_block, p_block in zip(layer_list(teacher.model), layer_list(pruned.model), strict=True):
        t_q, p_q = (b.attention.attention.query.weight for b in (t_block, p_block))
        t_heads, p_heads = t_q[:, cols].view(-1, 8, len(cols)), p_q.view(-1, 8, len(cols))
        kept.append([h for p in p_heads for h, t in enumerate(t_heads) if torch.equal(p, t)])
    return kept


@pytest.mark.parametrize(("head_ratio", "steps"), [(0.5, 1), (0.75, 3)])
def test_heads_pruned_with_the_hidden_size_are_the_ones_removed(tmp_path, head_ratio, steps):
    """The hidden size pruned too (4 heads of 8 in 32 to 24: a config of 3 heads), each layer
    listed its last heads by count; it lists the heads it removed (the lowest-numbered ones,
    as many as the config's heads hold), numbered as the teacher numbers them, across steps (a
    checkpoint keeps that numbering), and transformers rebuilds it exactly."""
    from kdc.compress.distill import _pruned_heads, _restore

    torch.manual_seed(0)
    teacher = HFImageAdapter(tiny_vit(["a", "b"], channels=1, hidden=32, layers=2, heads=4).eval())
    x = teacher.encode(np.random.default_rng(0).random((4, 1, 8, 8), np.float32))
    cfg = PruneConfig(enabled=True, ratio=head_ratio, hidden_ratio=0.25, steps=steps)
    student = copy.deepcopy(teacher)
    pruning = GradualPruning(student, x, cfg, ratio=head_ratio, round_to=8)
    pruning.start(steps)
    while pruning.done < steps - 1:
        pruning.step()
    resumed = copy.deepcopy(teacher)  # from the checkpoint of the step before the last
    _restore(
        resumed, {"model": student.module.state_dict(), "pruned_heads": _pruned_heads(student)}
    )
    assert resumed.config.pruned_heads == student.config.pruned_heads
    assert _pruned_heads(resumed) == _pruned_heads(student)  # numbered as the teacher's heads
    pruning.step()

    conf, kept = student.config, _heads_kept(teacher, student)
    assert (conf.hidden_size, conf.num_attention_heads) == (24, 3)
    assert [len(k) for k in kept] == [round(4 * (1 - head_ratio))] * 2
    removed = [[h for h in range(4) if h not in k][: 3 - len(k)] for k in kept]
    assert conf.pruned_heads == dict(enumerate(removed))
    student.save(tmp_path / "pruned")
    np.testing.assert_allclose(
        _hf_logits(tmp_path / "pruned", x), student.forward_numpy(x), atol=1e-6
    )


def test_students_of_a_head_pruned_teacher(tmp_path):
    """Whole layers keep their pruned heads (renumbered to the student's layers); a student of
    other sizes takes all of its heads from the ones a layer kept, as many as fit; wider, one
    line naming the field."""
    from kdc.models.pruned_config import attention_widths, stated_attention_widths

    _, pruned, x = _pruned(tmp_path, _bert)
    teacher = _reloaded(tmp_path / "pruned")
    # what validate reads of config.json (`preflight_student`) is what the search slices
    assert stated_attention_widths(_config(tmp_path / "pruned")) == attention_widths(teacher.model)
    layer1 = derive_student(teacher, {"family": "transformer", "layers": [1]}, x)
    layer1.save(tmp_path / "layer1")
    assert _config(tmp_path / "layer1")["pruned_heads"] == {"0": teacher.config.pruned_heads[1]}
    np.testing.assert_allclose(
        _hf_logits(tmp_path / "layer1", x), layer1.forward_numpy(x), atol=1e-6
    )
    spec = {"family": "transformer", "layers": [0, 1], "intermediate_size": 16}
    assert derive_student(teacher, spec, x).architecture()["num_attention_heads"] == 1
    narrow = {**spec, "hidden_size": 16, "num_attention_heads": 1}
    assert derive_student(teacher, narrow, x).architecture()["hidden_size"] == 16
    assert not derive_student(teacher, narrow, x).config.pruned_heads
    with pytest.raises(UserError) as e:
        derive_student(teacher, {**spec, "num_attention_heads": 1}, x)  # one head of 32
    assert "\n" not in str(e.value) and "student.architecture" in str(e.value)
    assert "at most 16" in str(e.value)
    # student.architecture is the config's field: the error names that file, not the teacher's
    assert str(e.value.located("m.yaml")).startswith("m.yaml: field 'student.architecture'")


def test_a_head_pruned_student_of_an_earlier_kdc_is_stated_on_loading(tmp_path):
    """Its config.json kept the unpruned sizes (shapes.json held the pruned ones): kdc's loader
    states them, so students are sliced from it."""
    _, pruned, x = _pruned(tmp_path, _bert)
    d = tmp_path / "pruned"
    (d / "config.json").write_text(
        json.dumps({**_config(d), "intermediate_size": 64, "pruned_heads": {}})
    )
    teacher = _reloaded(d)
    np.testing.assert_array_equal(teacher.forward_numpy(x), pruned.forward_numpy(x))
    assert teacher.config.intermediate_size == 32
    assert {k: len(v) for k, v in teacher.config.pruned_heads.items()} == {0: 1, 1: 1}
    student = _largest_student(teacher, x)
    np.testing.assert_allclose(student.forward_numpy(x), pruned.forward_numpy(x), atol=1e-5)


@pytest.mark.parametrize(
    ("build", "prune", "why"),
    [
        (_text("BigBird", attention_type="original_full"), {}, "no _prune_heads"),
        (_bert, {"hidden_ratio": 0.5}, "pooler"),  # BERT's pooler kept whole: 32 wide
    ],
)
def test_sizes_no_config_states_refuse_slicing_in_one_line(tmp_path, build, prune, why):
    _, pruned, x = _pruned(tmp_path, build, **prune)
    teacher = _reloaded(tmp_path / "pruned")
    np.testing.assert_array_equal(teacher.forward_numpy(x), pruned.forward_numpy(x))
    spec = {"family": "transformer", "layers": [0, 1], "intermediate_size": 16}
    with pytest.raises(UserError) as e:
        derive_student(teacher, spec, x)
    assert "\n" not in str(e.value) and "teacher" in str(e.value) and why in str(e.value)
    assert str(tmp_path / "pruned") in str(e.value)  # the file: which teacher it is
    whole_layers = derive_student(teacher, {"family": "transformer", "layers": [1]}, x)
    assert whole_layers.architecture()["num_attention_heads"] == 1


def test_a_classification_head_of_two_layers_is_left_whole(tmp_path):
    """ELECTRA's and RoBERTa's heads are dense → tanh → out_proj: pruning cut the dense layer's
    units (only out_proj was left out), which no config states, so a pruned student's config
    kept its unpruned FFN size and no student was sliced from it."""
    from test_embedding_projection import _electra  # hidden 48, FFN 64

    _, tok = tiny_bert(tmp_path)
    torch.manual_seed(0)
    teacher = HFTextAdapter(_electra(len(tok)).eval(), tok, max_length=16)
    x = teacher.encode(TEXTS)
    cfg = PruneConfig(enabled=True, ratio=0.5, head_ratio=0.0)
    pruned = prune_once(teacher, x, cfg, ratio=0.5, round_to=8)
    assert tuple(pruned.model.classifier.dense.weight.shape) == (48, 48)
    pruned.save(tmp_path / "pruned")
    assert _config(tmp_path / "pruned")["intermediate_size"] == 32
    again = HFTextAdapter.from_dir(tmp_path / "pruned", max_length=16)
    spec = {"family": "transformer", "layers": [0, 1], "intermediate_size": 16}
    student = derive_student(again, spec, x)
    assert student.architecture()["intermediate_size"] == 16


def test_a_search_takes_a_head_pruned_student_as_its_teacher(bert_project, tmp_path):
    """kdc search from a head-pruned student's directory: every candidate is built from it."""
    from kdc import api
    from kdc.stages.search import build_student

    trained = HFTextAdapter.from_dir(bert_project.parent / "teacher", max_length=16)
    x = trained.encode(TEXTS)
    cfg = PruneConfig(enabled=True, ratio=0.5)
    prune_once(trained, x, cfg, ratio=0.5, round_to=8).save(tmp_path / "pruned")
    search = {"strategy": "exhaustive", "batch_size": 32, "proxies": ["params"]}
    conf = bert_config(name="hp", teacher={"path": str(tmp_path / "pruned")}, search=search)
    project = write_yaml(bert_project.parent / "hp.yaml", conf)
    api.search(project, "host", tmp_path / "run", quiet=True)
    run = api.open_run(project, "host", tmp_path / "run", quiet=True)
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "search" / "candidates.jsonl").open()]
    assert {r["architecture"]["hidden_size"] for r in rows} == {16, 32}
    for r in rows:
        assert build_student(run, r["spec"]).architecture() == r["architecture"]


@pytest.mark.parametrize("pruned_heads", [{"5": [0]}, {"0": [7]}, {"0": [1, 1]}, {"x": [0]}, [1]])
def test_a_malformed_pruned_heads_is_one_line(tmp_path, pruned_heads):
    """A layer or head the config lacks made transformers' IndexError (a list: AttributeError)."""
    _pruned(tmp_path, _bert)
    d = tmp_path / "pruned"
    (d / "config.json").write_text(json.dumps({**_config(d), "pruned_heads": pruned_heads}))
    with pytest.raises(UserError) as e:
        _reloaded(d)
    assert "\n" not in str(e.value) and "field 'pruned_heads'" in str(e.value)
    assert str(d / "config.json") in str(e.value) and "(2 layers of 2 heads)" in str(e.value)


def test_a_student_wider_than_a_head_pruned_teachers_layers_is_refused_before_a_run(tmp_path):
    """A fixed student.architecture of other sizes takes all its heads from those each kept
    layer has: one wider than a kept layer's pruned attention was refused only when the search
    sliced it; validate and --dry-run said nothing (the same check, from config.json)."""
    from preflight_projects import dry_run, one_line, runner, text_project

    from kdc.cli import app

    conf = {  # 4 layers of 2 heads of 16; layer 1 keeps one head: 16 attention dims
        "architectures": ["BertForSequenceClassification"],
        "model_type": "bert",
        "num_hidden_layers": 4,
        "hidden_size": 32,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "pruned_heads": {"1": [0]},
    }
    rows = [("good film", "pos"), ("bad plot", "neg")] * 5
    wide = {"num_hidden_layers": 2, "num_attention_heads": 1}  # one head of 32: layers 1 and 3
    cfg = text_project(tmp_path / "wide", conf, rows, student={"architecture": wide})
    for res in (runner.invoke(app, ["validate", str(cfg)]), dry_run(cfg)):
        line = one_line(res)
        assert line.startswith(f"error: {cfg}: field 'student.architecture'"), line
        assert "teacher layer 1 keeps 16 (its heads were pruned)" in line
        assert "or a hidden_size of at most 16" in line
    fits = [
        {"architecture": {**wide, "hidden_size": 16}},  # one head of 16
        {"architecture": {"num_hidden_layers": 2}},  # the teacher's sizes: its pruned heads
        {"architecture": wide, "layers": [2, 3]},  # layers that kept their heads
    ]
    for k, student in enumerate(fits):
        cfg = text_project(tmp_path / str(k), conf, rows, student=student)
        res = runner.invoke(app, ["validate", str(cfg)])
        assert res.exit_code == 0, res.output
