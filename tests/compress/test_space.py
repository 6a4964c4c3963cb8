"""Search spaces derived from the teacher: divisibility and head constraints, teacher-initialised
candidates (identical to the teacher when the candidate is the teacher), and students whose
built shapes match what the latency estimator is told."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from tiny import tiny_bert
from torch import nn

from kdc.compress.space import HEAD_DIMS, CnnSpace, TransformerSpace, space_for
from kdc.compress.student import derive_student
from kdc.errors import UserError
from kdc.models import load_student
from kdc.models.cnn import SmallCNN, small_cnn
from kdc.models.hf import HFTextAdapter
from kdc.models.vision import VisionAdapter


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> HFTextAdapter:
    model, tok = tiny_bert(tmp_path_factory.mktemp("tok"))
    return HFTextAdapter(model.eval(), tok, 16)


@pytest.fixture(scope="module")
def wide_bert(bert) -> HFTextAdapter:
    """A 3-layer BERT, hidden 128 in 4 heads of 32, FFN 512 (random weights)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(1)
    conf = BertConfig(
        vocab_size=31,
        hidden_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=512,
        max_position_embeddings=64,
        num_labels=2,
    )
    return HFTextAdapter(BertForSequenceClassification(conf).eval(), bert.tokenizer, 16)


def _text(adapter: HFTextAdapter) -> dict[str, np.ndarray]:
    return adapter.encode(["good movie", "the plot was awful really", "i hate it", "fine"])


def _cnn(channels=(16, 48, 96), depth=1) -> VisionAdapter:
    torch.manual_seed(0)
    model = SmallCNN(channels=channels, depth=depth).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return VisionAdapter(
        model,
        {
            "kind": "entrypoint",
            "entrypoint": "kdc.models.cnn:small_cnn",
            "kwargs": {"channels": list(channels), "depth": depth},
        },
    )


IMAGES = {"pixel_values": np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)}


class Residual(nn.Module):
    """conv-bn-relu stem, then two residual blocks at 8x8 and a strided one with a projection."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.a, self.b = nn.Conv2d(32, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1)
        self.down = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.proj = nn.Conv2d(32, 64, 1, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, 10)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.stem(pixel_values)
        x = x + torch.relu(self.a(x))
        x = x + torch.relu(self.b(x))
        x = torch.relu(self.down(x)) + self.proj(x)
        return self.classifier(self.pool(x).flatten(1))


class AuxHead(nn.Module):
    """A conv that runs only in training (like GoogLeNet's and Inception's auxiliary heads)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.aux = nn.Conv2d(16, 8, 1)
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.classifier = nn.Linear(32, 10)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(pixel_values))
        if self.training:
            self.aux(x)
        return self.classifier(torch.relu(self.down(x)).mean((2, 3)))


@pytest.mark.parametrize("divisor", [8, 16, 32])
def test_transformer_space_respects_divisor_and_heads(wide_bert, divisor):
    space = TransformerSpace(wide_bert, divisor)
    assert space.dims["num_hidden_layers"] == [1, 2, 3]
    assert [128, 4] in space.dims["width"]  # the teacher is always in the space
    for hidden, heads in space.dims["width"]:
        assert hidden % divisor == 0 and hidden % heads == 0 and hidden <= 128
        assert hidden // heads in HEAD_DIMS
    for inter in space.dims["intermediate_size"]:
        assert inter % divisor == 0 and inter <= 512
    assert {h for h, _ in space.dims["width"]} == set(range(32, 129, 32))


def test_transformer_space_of_tiny_teacher_keeps_its_head_dim(bert):
    space = space_for(bert, _text(bert), 8)
    assert space.dims["width"] == [[16, 1], [32, 1], [32, 2]]
    assert space.dims["intermediate_size"] == list(range(8, 65, 8))


@pytest.mark.parametrize("divisor", [8, 16])
def test_cnn_space_channels_are_multiples_of_divisor(divisor):
    space = CnnSpace(_cnn(), IMAGES, divisor)
    assert set(space.dims) == {"stage0_width", "stage1_width", "stage2_width"}
    assert space.dims["stage2_width"][-1] == 1.0
    rng = random.Random(0)
    for _ in range(20):
        cand = space.decode(space.sample(rng))
        assert all(c % divisor == 0 for c in cand.architecture["conv_channels"])
    chans = {
        tuple(space.decode({**space.largest(), "stage2_width": w}).architecture["conv_channels"])[
            -1
        ]
        for w in space.dims["stage2_width"]
    }
    # the width grid is k/8 of the teacher's 96 channels, rounded half-up to the divisor
    assert chans == {int(12 * k / divisor + 0.5) * divisor for k in range(1, 9)}


def test_teacher_candidate_equals_teacher(wide_bert):
    x = _text(wide_bert)
    space = space_for(wide_bert, x, 16)
    student = derive_student(wide_bert, space.decode(space.largest()).spec, x, 16)
    assert np.array_equal(student.forward_numpy(x), wide_bert.forward_numpy(x))
    for cnn in (_cnn(), _cnn((16, 32), depth=2)):
        space = space_for(cnn, IMAGES, 8)
        cand = space.decode(space.largest())
        assert cand.spec["channels"] == {} and cand.spec["drop"] == []
        student = derive_student(cnn, cand.spec, IMAGES, 8)
        assert np.array_equal(student.forward_numpy(IMAGES), cnn.forward_numpy(IMAGES))


def test_transformer_candidates_build_with_teacher_slices(wide_bert):
    x = _text(wide_bert)
    space = space_for(wide_bert, x, 16)
    rng = random.Random(1)
    for _ in range(6):
        cand = space.decode(space.sample(rng))
        student = derive_student(wide_bert, cand.spec, x, 16)
        arch = student.architecture()
        assert {k: arch[k] for k in cand.architecture} == cand.architecture
        assert np.isfinite(student.forward_numpy(x)).all()
        # the classifier keeps teacher columns (the chosen hidden channels), unchanged
        tw = wide_bert.model.classifier.weight.detach()
        for col in student.model.classifier.weight.detach().T:
            assert (col == tw.T).all(dim=1).any()


def test_head_slices_keep_whole_teacher_heads(wide_bert):
    spec = {"layers": [2], "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128}
    student = wide_bert.sliced(spec)
    tq = wide_bert.model.bert.encoder.layer[2].attention.self.query.bias.detach().view(4, 32)
    sq = student.model.bert.encoder.layer[0].attention.self.query.bias.detach().view(2, 32)
    for head in sq:
        assert (tq == head).all(dim=1).any()
    assert student.model.config.num_hidden_layers == 1


@pytest.mark.parametrize(
    "make",
    [
        lambda: _cnn(),
        lambda: _cnn((16, 32), depth=2),
        lambda: VisionAdapter(Residual().eval(), {"kind": "entrypoint"}),
        lambda: VisionAdapter(AuxHead().eval(), {"kind": "entrypoint"}),  # aux conv not traced
    ],
)
def test_cnn_students_match_predicted_architecture(make):
    teacher = make()
    space = space_for(teacher, IMAGES, 8)
    rng = random.Random(2)
    for _ in range(6):
        cand = space.decode(space.sample(rng))
        student = derive_student(teacher, cand.spec, IMAGES, 8)
        assert student.architecture()["conv_channels"] == cand.architecture["conv_channels"]
        assert student.layer_trace(IMAGES) == cand.cost["layers"]
        assert np.isfinite(student.forward_numpy(IMAGES)).all()


def test_residual_stage_channels_stay_coupled():
    teacher = VisionAdapter(Residual().eval(), {"kind": "entrypoint"})
    space = space_for(teacher, IMAGES, 8)
    assert set(space.dims) == {"stage0_width", "stage1_width"}
    cand = space.decode({"stage0_width": 0.5, "stage1_width": 0.25})
    assert cand.architecture["conv_channels"] == [16, 16, 16, 16, 16]


def test_depth_genes_drop_blocks_and_round_trip(tmp_path):
    teacher = _cnn((16, 32), depth=2)
    space = space_for(teacher, IMAGES, 8)
    assert space.dims["stage0_depth"] == [0, 1] and space.dims["stage1_depth"] == [0, 1]
    cand = space.decode({**space.largest(), "stage0_depth": 0, "stage1_width": 0.5})
    assert cand.spec["drop"] == ["features.3", "features.4", "features.5"]
    student = derive_student(teacher, cand.spec, IMAGES, 8)
    assert student.architecture()["conv_channels"] == [16, 16, 16]
    student.save(tmp_path / "s")
    loaded = load_student(tmp_path / "s")
    assert np.array_equal(loaded.forward_numpy(IMAGES), student.forward_numpy(IMAGES))


def test_sliced_transformer_round_trips(wide_bert, tmp_path):
    x = _text(wide_bert)
    student = wide_bert.sliced(
        {"layers": [0, 2], "hidden_size": 64, "num_attention_heads": 1, "intermediate_size": 96}
    )
    student.save(tmp_path / "s")
    loaded = load_student(tmp_path / "s", max_length=16)
    assert loaded.architecture()["hidden_size"] == 64
    assert np.allclose(loaded.forward_numpy(x), student.forward_numpy(x), atol=1e-6)


def test_fixed_architecture_is_validated(wide_bert):
    space = space_for(wide_bert, _text(wide_bert), 16)
    genes = space.from_architecture({"num_hidden_layers": 2, "hidden_size": 64})
    assert genes == {"num_hidden_layers": 2, "width": [64, 2], "intermediate_size": 512}
    with pytest.raises(UserError, match="student.architecture"):
        space.from_architecture({"hidden_size": 256})
    cnn_space = space_for(_cnn(), IMAGES, 8)
    assert cnn_space.decode(
        cnn_space.from_architecture({"stage_width": [0.5, 0.5, 0.25]})
    ).architecture["conv_channels"] == [8, 24, 24]
    with pytest.raises(UserError, match="3 stages"):
        cnn_space.from_architecture({"stage_width": [0.5]})


@pytest.mark.parametrize(
    ("family", "arch"),
    [
        ("cnn", {"stage_width": 0.5}),  # a number where a list belongs
        ("cnn", {"stage_width": ["abc", 0.5, 0.5]}),
        ("cnn", {"stage_depth": [1.5, 1, 1]}),
        ("transformer", {"num_hidden_layers": "abc"}),
        ("transformer", {"hidden_size": [64]}),
        ("transformer", {"num_hidden_layers": 1.5}),
        ("transformer", {"num_attention_heads": 0}),
    ],
)
def test_fixed_architecture_of_the_wrong_type_is_a_user_error(wide_bert, family, arch):
    space = (
        space_for(wide_bert, _text(wide_bert), 16)
        if family == "transformer"
        else space_for(_cnn(), IMAGES, 8)
    )
    with pytest.raises(UserError, match="student.architecture"):
        space.from_architecture(arch)


def _limits(space: dict):
    from kdc.config import SearchConfig

    return SearchConfig(space=space).space


def test_search_space_narrows_the_genes_and_keeps_the_teacher(wide_bert):
    space = space_for(wide_bert, _text(wide_bert), 16)
    teacher = space.decode(space.teacher_genes).key
    space.restrict(
        _limits(
            {
                "num_hidden_layers": {"min": 2},
                "hidden_size": [64, 96],
                "intermediate_size": {"max": 256},
            }
        )
    )
    assert space.dims["num_hidden_layers"] == [2, 3]
    assert {h for h, _ in space.dims["width"]} == {64, 96}
    assert max(space.dims["intermediate_size"]) <= 256
    assert space.decode(space.teacher_genes).key == teacher  # the teacher is still the reference
    rng = random.Random(0)
    for _ in range(10):
        arch = space.decode(space.sample(rng)).architecture
        assert arch["num_hidden_layers"] >= 2 and arch["hidden_size"] in (64, 96)


def test_cnn_search_space_narrows_every_stage():
    space = CnnSpace(_cnn(), IMAGES, 8)
    space.restrict(_limits({"stage_width": {"min": 0.5}}))
    assert all(min(space.dims[f"stage{s}_width"]) >= 0.5 for s in range(3))
    with pytest.raises(UserError, match="search.space.stage_depth.*use stage_width"):
        space.restrict(_limits({"stage_depth": [1]}))  # this CNN has no removable blocks


@pytest.mark.parametrize(
    ("limits", "match"),
    [
        ({"layers": [2]}, "search.space.layers.*use num_hidden_layers, hidden_size"),
        ({"num_hidden_layers": {"min": 4}}, r"\{min: 4\} admits none of the sizes 1, 2, 3"),
        ({"hidden_size": [100]}, r"\[100\] admits none"),
    ],
)
def test_search_space_that_admits_nothing_is_a_user_error(wide_bert, limits, match):
    space = space_for(wide_bert, _text(wide_bert), 16)
    with pytest.raises(UserError, match=match):
        space.restrict(_limits(limits))


def test_search_space_range_needs_an_end():
    from kdc.config import SearchConfig

    with pytest.raises(ValueError, match="give min, max or both"):
        SearchConfig(space={"num_hidden_layers": {}})
    with pytest.raises(ValueError, match="min 3 is above max 2"):
        SearchConfig(space={"num_hidden_layers": {"min": 3, "max": 2}})


def test_the_teacher_genes_keep_its_own_heads(bert):
    """A hidden size splits into heads of 32 and of 64: the teacher's genes are its own split,
    not the space's largest (the latency prediction of the teacher reads them)."""
    from transformers import BertConfig, BertForSequenceClassification

    conf = BertConfig(
        vocab_size=31,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        max_position_embeddings=64,
        num_labels=2,
    )
    teacher = HFTextAdapter(BertForSequenceClassification(conf).eval(), bert.tokenizer, 16)
    space = space_for(teacher, _text(teacher), 16)
    assert [128, 4] in space.dims["width"] and space.teacher_genes["width"] == [128, 2]
    arch = space.decode(space.teacher_genes).architecture
    assert arch == {k: v for k, v in teacher.architecture().items() if k != "params"}


def test_search_space_sizes_match_as_the_error_shows_them():
    space = CnnSpace(_cnn(), IMAGES, 8)
    shown = sorted(space.dims["stage2_width"])[2]  # 40/96 = 0.41666..., shown as 0.4167
    space.restrict(_limits({"stage_width": {"min": 0.25}}))
    with pytest.raises(UserError, match=r"of stage0_width"):
        space.restrict(_limits({"stage_width": [float(f"{shown:.4g}")]}))  # stage 0 has no 40/96
    space = CnnSpace(_cnn(), IMAGES, 8)
    space.dims = {k: v for k, v in space.dims.items() if k == "stage2_width"}
    space.restrict(_limits({"stage_width": [float(f"{shown:.4g}")]}))
    assert space.dims["stage2_width"] == [shown]


class _Block(nn.Module):
    """A residual block: conv, BatchNorm, the input added back."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn(self.conv(x)))


class _Residual(nn.Module):
    """Two stages of residual blocks: the first's in an nn.Sequential, the second's not."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.layer1 = nn.Conv2d(1, 8, 3, padding=1), nn.Sequential(_Block(8), _Block(8))
        self.down, self.block2 = nn.Conv2d(8, 16, 3, stride=2, padding=1), _Block(16)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.down(self.layer1(self.stem(pixel_values)))))


@pytest.mark.parametrize(
    ("build", "fix"),
    [
        (
            lambda: small_cnn(channels=[8, 16], depth=1),
            "leave out stage_depth: no stage of this teacher has a block kdc can remove",
        ),
        (
            lambda: small_cnn(channels=[8, 16], depth=3),
            r"stage_depth: how many of its removable blocks each stage keeps, at most \[2, 2\]\)",
        ),
        (_Residual, r"at most \[2, 0\] \(a 0 there: that stage has none\)"),
    ],
    ids=["no-blocks", "blocks", "residual"],
)
def test_stage_depth_beyond_the_teachers_says_what_fits(build, fix):
    """The fix of a student.architecture that does not fit a CNN said "stage_depth: blocks kept
    per stage, at most [0, 0]" for one with no removable blocks (only an nn.Sequential's
    children whose output shape is their input's are; every other block stays), as if a
    student kept none; the maxima are counted on the meta device as a preflight counts them."""
    from kdc.compress.space import cnn_genes, removable_blocks

    with torch.device("meta"):
        model = build()
    with pytest.raises(UserError, match=fix) as e:
        cnn_genes({"stage_depth": [5, 5]}, removable_blocks(model, (1, 1, 8, 8)))
    assert "at most [0, 0]" not in str(e.value)
