"""Distillation losses: zero when the student equals the teacher, decreasing under training,
projections across width mismatch, layer mapping, padding excluded."""

from __future__ import annotations

import pytest
import torch

from kdc.compress.losses import (
    DEFAULT_LOSSES,
    LOSS_TAPS,
    LOSSES,
    LossInputs,
    Projections,
    layer_pairs,
    uniform_mapping,
)
from kdc.errors import UserError

B, L, K = 6, 5, 3


def _text_features(width: int, heads: int, layers: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    f = {
        "embeddings": torch.randn(B, L, width, generator=g),
        "pooled": torch.randn(B, width, generator=g),
    }
    for i in range(layers):
        f[f"hidden{i}"] = torch.randn(B, L, width, generator=g)
        for k in ("query", "key", "value"):
            f[f"{k}{i}"] = torch.randn(B, heads, L, width // heads, generator=g)
    return f


def _image_features(channels: tuple[int, int], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden0": torch.randn(B, channels[0], 8, 8, generator=g).relu(),
        "hidden1": torch.randn(B, channels[1], 4, 4, generator=g).relu(),
        "pooled": torch.randn(B, channels[1], generator=g),
    }


def _inputs(student: dict, teacher: dict, mask: torch.Tensor | None = None) -> LossInputs:
    logits = torch.randn(B, K, generator=torch.Generator().manual_seed(3))
    return LossInputs(
        logits.clone(), logits.clone(), torch.arange(B) % K, student, teacher, mask, Projections()
    )


CASES = {  # loss → (params, student/teacher features when equal)
    "logits": ({"alpha": 1.0}, lambda: _text_features(8, 2, 2, 0)),
    "hidden": ({}, lambda: _text_features(8, 2, 2, 0)),
    "attention": ({}, lambda: _text_features(8, 2, 2, 0)),
    "relation": ({}, lambda: _text_features(8, 2, 2, 0)),
    "embedding": ({}, lambda: _text_features(8, 2, 2, 0)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_is_zero_when_student_equals_teacher(name):
    params, feats = CASES[name]
    f = feats()
    mask = torch.ones(B, L, dtype=torch.long)
    mask[:, -1] = 0
    assert float(
        LOSSES[name](_inputs(f, {k: v.clone() for k, v in f.items()}, mask), **params)
    ) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["hidden", "attention"])
def test_cnn_feature_losses_are_zero_on_equal_maps(name):
    f = _image_features((4, 8), 0)
    assert float(LOSSES[name](_inputs(f, dict(f)))) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    "name,family",
    [
        ("hidden", "text"),
        ("attention", "text"),
        ("relation", "text"),
        ("embedding", "text"),
        ("hidden", "image"),
        ("attention", "image"),
        ("relation", "image"),
        ("logits", "text"),
    ],
)
def test_loss_decreases_when_training_a_narrower_student(name, family):
    """The student's features are parameters (narrower than the teacher's: projections needed);
    a few Adam steps on the loss alone must reduce it."""
    if family == "text":
        teacher, init = _text_features(8, 2, 4, 1), _text_features(4, 1, 2, 2)
    else:
        teacher, init = _image_features((8, 16), 1), _image_features((4, 8), 2)
    student = {k: torch.nn.Parameter(v) for k, v in init.items()}
    logits = torch.nn.Parameter(torch.randn(B, K))
    proj = Projections()
    mask = torch.ones(B, L, dtype=torch.long)

    def loss() -> torch.Tensor:
        x = LossInputs(
            logits,
            torch.randn(B, K, generator=torch.Generator().manual_seed(5)),
            torch.arange(B) % K,
            dict(student),
            teacher,
            mask if family == "text" else None,
            proj,
        )
        return LOSSES[name](x)

    first = loss()  # creates the projections, then they train with the student
    opt = torch.optim.Adam([*student.values(), logits, *proj.parameters()], lr=0.05)
    for _ in range(30):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    assert torch.isfinite(first) and loss().item() < 0.8 * first.item()


def test_projections_map_widths_and_drop_stale_maps():
    proj = Projections()
    assert proj("a", torch.randn(2, 5, 8), 8).shape == (2, 5, 8)  # equal width: identity
    assert len(proj.maps) == 0
    proj.probe(lambda: (proj("a", torch.randn(2, 5, 4), 8), proj("m", torch.randn(2, 3, 4, 4), 6)))
    assert isinstance(proj.maps["m_3_6"], torch.nn.Conv2d)
    assert proj("a", torch.randn(2, 5, 4), 8).shape == (2, 5, 8)
    assert set(proj.maps) == {"a_4_8", "m_3_6"}
    proj.probe(lambda: proj("a", torch.randn(2, 5, 2), 8))  # the student's width was pruned
    assert set(proj.maps) == {"a_2_8"}


def test_attention_with_fewer_student_heads_uses_relation_heads():
    teacher, student = _text_features(8, 4, 2, 1), _text_features(4, 2, 2, 2)
    value = LOSSES["attention"](_inputs(student, teacher))
    assert torch.isfinite(value) and float(value) > 0


def test_padding_does_not_change_hidden_or_attention_losses():
    teacher, student = _text_features(8, 2, 2, 1), _text_features(8, 2, 2, 2)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[:, -2:] = 0
    changed = {k: v.clone() for k, v in student.items()}
    for k, v in changed.items():
        if k.startswith(("hidden", "embeddings")):
            v[:, -2:] += 5.0
        elif k.startswith(("query", "key", "value")):
            v[:, :, -2:] += 5.0
    for name in ("hidden", "attention"):
        a = LOSSES[name](_inputs(student, teacher, mask))
        b = LOSSES[name](_inputs(changed, teacher, mask))
        assert float(a) == pytest.approx(float(b), rel=1e-5)


@pytest.mark.parametrize("name", ["relation", "embedding"])
def test_token_pooled_features_are_averaged_over_attended_positions(name):
    """A `pooled` tap can catch B×L×F (a head's input in models without a pooler): its padded
    positions must not change the relation or embedding loss."""
    g = torch.Generator().manual_seed(4)
    teacher, student = ({"pooled": torch.randn(B, L, 8, generator=g)} for _ in range(2))
    mask = torch.ones(B, L, dtype=torch.long)
    mask[::2, -2:] = 0
    changed = {"pooled": student["pooled"].clone()}
    changed["pooled"][mask == 0] += 5.0
    a = LOSSES[name](_inputs(student, teacher, mask))
    b = LOSSES[name](_inputs(changed, teacher, mask))
    assert float(a) == pytest.approx(float(b), rel=1e-5)
    assert float(LOSSES[name](_inputs(teacher, teacher, mask))) == pytest.approx(0, abs=1e-6)


def test_layer_mapping_uniform_and_explicit():
    assert uniform_mapping(2, 4) == [1, 3]
    assert uniform_mapping(3, 6) == [1, 3, 5]
    x = _inputs(_text_features(8, 2, 2, 0), _text_features(8, 2, 4, 1))
    assert layer_pairs(x, "hidden", None) == [(0, 1), (1, 3)]
    assert layer_pairs(x, "hidden", [0, 2]) == [(0, 0), (1, 2)]
    with pytest.raises(UserError, match="mapping"):
        layer_pairs(x, "hidden", [0, 9])


def test_registry_names_taps_and_default_recipes():
    assert {"logits", "ce", "hidden", "attention", "relation", "embedding"} <= set(LOSSES)
    assert LOSS_TAPS["logits"] == () and "pooled" in LOSS_TAPS["relation"]
    for recipe in DEFAULT_LOSSES.values():
        assert recipe[0]["name"] == "logits" and all(r["name"] in LOSSES for r in recipe)


@pytest.mark.parametrize("rows", [1, 3])
def test_relation_is_finite_without_distinct_rows(rows):
    """A last batch of one row (or rows all alike) has no positive pairwise distance to
    normalise by: the relation loss must stay finite, not NaN (which would poison the student's
    weights through the optimizer step)."""
    s = torch.ones(rows, 8, requires_grad=True)
    t = torch.randn(rows, 8, generator=torch.Generator().manual_seed(0))
    x = LossInputs(s, t.clone(), None, {"pooled": s}, {"pooled": t})
    loss = LOSSES["relation"](x)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_feature_losses_without_their_taps_are_user_errors():
    """A model without what a configured loss reads (a DistilBERT's attention has no query/key/
    value layers) is a config error naming distill.losses, not an internal error."""
    tokens = {"hidden0": torch.randn(B, L, 8), "hidden1": torch.randn(B, L, 8)}
    with pytest.raises(UserError, match="distill.losses.*attention loss"):
        LOSSES["attention"](_inputs(tokens, dict(tokens)))
    with pytest.raises(UserError, match="distill.losses.*hidden loss"):
        LOSSES["hidden"](_inputs({"pooled": torch.randn(B, 8)}, {"pooled": torch.randn(B, 8)}))


def test_relation_heads_that_do_not_divide_the_attention_width_are_a_user_error():
    student, teacher = _text_features(8, 2, 2, 0), _text_features(8, 2, 2, 1)
    with pytest.raises(UserError, match="relation_heads 3 does not divide.*then 2"):
        LOSSES["attention"](_inputs(student, teacher), relation_heads=3)


def test_ce_on_a_task_without_labels_is_refused_before_any_work(tmp_path):
    """A sentence encoder's rows have no labels: `ce` there failed at the first training step,
    after the search. Compress refuses it first, one line naming the file, field and fix (exit
    2), and leaves no run directory behind."""
    from tiny import cnn_config, write_yaml
    from typer.testing import CliRunner

    from kdc.cli import app

    over = {"task": "sentence-embedding", "distill": {"losses": ["logits", "ce"]}}
    cfg = write_yaml(tmp_path / "model.yaml", cnn_config(None, **over))
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["compress", str(cfg), "--out", str(run), "-q"])
    assert res.exit_code == 2 and not run.exists(), res.output
    assert res.output.strip() == (
        f"error: {cfg}: field 'distill.losses[1]': the ce loss trains on labels, and a "
        "sentence-embedding task's rows have none (fix: remove it; the embedding and relation "
        "losses train a sentence encoder)"
    )
