"""Training-free proxies: registry, sign conventions, DisWOT's terms, determinism under a seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from tiny import sentences, tiny_bert

from kdc.compress.proxies import (
    PROXIES,
    classifier_gradient,
    classifiers,
    diswot,
    diswot_classgrad,
    features_and_logits,
    features_logits_cams,
)
from kdc.compress.student import derive_student, random_init
from kdc.models.cnn import SmallCNN
from kdc.models.hf import HFTextAdapter
from kdc.models.vision import VisionAdapter

RNG = np.random.default_rng(0)
IMAGES = {"pixel_values": RNG.random((32, 1, 8, 8), dtype=np.float32)}
IMAGE_LABELS = RNG.integers(0, 10, 32)


@pytest.fixture(scope="module")
def cnn() -> VisionAdapter:
    torch.manual_seed(0)
    return VisionAdapter(SmallCNN(channels=(16, 32)).eval(), {"kind": "entrypoint"})


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    model, tok = tiny_bert(tmp_path_factory.mktemp("tok"))
    adapter = HFTextAdapter(model.eval(), tok, 16)
    rows = sentences(32, 3)
    x = adapter.encode([r[0] for r in rows])
    return adapter, x, np.array([int(r[1] == "positive") for r in rows])


def test_registry_names():
    assert set(PROXIES) == {
        "diswot",
        "diswot_classgrad",
        "params",
        "flops",
        "synflow",
        "grad_norm",
        "naswot",
    }


def test_proxies_are_deterministic(cnn, bert):
    half = derive_student(
        cnn, {"family": "cnn", "channels": {"features.0": 8, "features.4": 16}}, IMAGES, 8
    )
    text, x, y = bert
    small = derive_student(
        text,
        {
            "family": "transformer",
            "layers": [1, 3],
            "hidden_size": 16,
            "num_attention_heads": 1,
            "intermediate_size": 32,
        },
        x,
        8,
    )
    for teacher, student, inputs, labels in (
        (cnn, half, IMAGES, IMAGE_LABELS),
        (text, small, x, y),
    ):
        for name, fn in PROXIES.items():
            a, b = fn(teacher, student, inputs, labels), fn(teacher, student, inputs, labels)
            assert a == b and np.isfinite(a), name


def test_random_init_is_seeded(cnn):
    spec = {"family": "cnn", "channels": {"features.0": 8}}
    a = random_init(derive_student(cnn, spec, IMAGES, 8), 3)
    b = random_init(derive_student(cnn, spec, IMAGES, 8), 3)
    c = random_init(derive_student(cnn, spec, IMAGES, 8), 4)
    for name in ("diswot", "synflow", "naswot", "grad_norm"):
        fa, fb = (
            PROXIES[name](cnn, a, IMAGES, IMAGE_LABELS),
            PROXIES[name](cnn, b, IMAGES, IMAGE_LABELS),
        )
        assert fa == fb
    assert diswot(cnn, a, IMAGES, IMAGE_LABELS) != diswot(cnn, c, IMAGES, IMAGE_LABELS)


def test_diswot_is_zero_for_the_teacher_and_negative_otherwise(cnn, bert):
    same = derive_student(cnn, {"family": "cnn", "width": 1.0}, IMAGES, 8)
    narrow = derive_student(cnn, {"family": "cnn", "channels": {"features.4": 8}}, IMAGES, 8)
    text, x, y = bert
    for fn in (diswot, diswot_classgrad):
        assert fn(cnn, same, IMAGES, IMAGE_LABELS) == pytest.approx(0.0, abs=1e-12)
        assert fn(cnn, narrow, IMAGES, IMAGE_LABELS) < 0
        assert fn(text, text, x, y) == pytest.approx(0.0, abs=1e-12)


def gram(x):
    g = x @ x.T
    return g / g.norm(dim=1, keepdim=True)


def test_diswot_terms_match_the_formulas(cnn):
    student = random_init(derive_student(cnn, {"family": "cnn", "width": 1.0}, IMAGES, 8), 1)
    ft, lt = features_and_logits(cnn, IMAGES)
    fs, ls = features_and_logits(student, IMAGES)
    y = torch.from_numpy(IMAGE_LABELS).long()
    relation = float(((gram(ft) - gram(fs)) ** 2).sum()) / len(ft) ** 2
    gt, gs = classifier_gradient(ft, lt, y), classifier_gradient(fs, ls, y)
    semantic = float(((gram(gt) - gram(gs)) ** 2).sum()) / 10**2
    got = diswot_classgrad(cnn, student, IMAGES, IMAGE_LABELS)
    assert got == pytest.approx(-(relation + semantic))
    mt = grad_cam(cnn, IMAGES, IMAGE_LABELS)
    ms = grad_cam(student, IMAGES, IMAGE_LABELS)
    both_zero = (mt.norm(dim=1) == 0) & (ms.norm(dim=1) == 0)
    cos = torch.where(both_zero, 1.0, F.cosine_similarity(mt, ms, dim=1))
    want = -(relation + float((1 - cos).mean()))
    assert diswot(cnn, student, IMAGES, IMAGE_LABELS) == pytest.approx(want)


def grad_cam(adapter, inputs, labels):
    """Textbook Grad-CAM at the last conv, one full autograd pass (B×HW)."""
    conv = [m for m in adapter.module.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    acts = []
    handle = conv.register_forward_hook(lambda m, a, o: acts.append(o))
    logits = adapter.module.eval()(torch.from_numpy(inputs["pixel_values"]))
    handle.remove()
    y = torch.from_numpy(labels).long()
    (g,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), acts[0])
    cam = F.relu((g.mean((2, 3), keepdim=True) * acts[0]).sum(1))
    return cam.detach().flatten(1).double()


def test_grad_cam_maps_match_autograd_and_skip_padding(cnn, bert):
    _, _, maps = features_logits_cams(cnn, IMAGES, IMAGE_LABELS)
    torch.testing.assert_close(maps.flatten(1), grad_cam(cnn, IMAGES, IMAGE_LABELS))
    text, x, y = bert
    _, logits, tokens = features_logits_cams(text, x, y, chunk=5)
    assert tokens.shape == x["input_ids"].shape
    assert (tokens[torch.from_numpy(x["attention_mask"]) == 0] == 0).all() and tokens.sum() > 0
    _, ref = features_and_logits(text, x)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    # scoring takes the weights out of autograd only while it runs
    assert all(p.requires_grad for m in (cnn, text) for p in m.module.parameters())


def test_classifier_gradient_equals_autograd(cnn):
    model = cnn.module
    (head,) = classifiers(cnn)
    loss = F.cross_entropy(
        model(torch.from_numpy(IMAGES["pixel_values"])), torch.from_numpy(IMAGE_LABELS).long()
    )
    (auto,) = torch.autograd.grad(loss, [head.weight])
    f, logits = features_and_logits(cnn, IMAGES)
    ours = classifier_gradient(f, logits, torch.from_numpy(IMAGE_LABELS).long())
    assert torch.allclose(ours.float(), auto, atol=1e-6)


def test_size_baselines_grow_with_the_student(cnn):
    small = derive_student(cnn, {"family": "cnn", "channels": {"features.4": 8}}, IMAGES, 8)
    for name in ("params", "flops"):
        assert PROXIES[name](cnn, small, IMAGES, IMAGE_LABELS) < PROXIES[name](
            cnn, cnn, IMAGES, IMAGE_LABELS
        )
    # conv0: 8x8x16 outputs x 9 fan-in, conv1: 4x4x32 x 144, linear 10 x 32; 2 FLOPs per MAC
    assert PROXIES["flops"](cnn, cnn, IMAGES, IMAGE_LABELS) == 2 * (1024 * 9 + 512 * 144 + 320)


def test_length_chunked_features_equal_one_padded_batch(bert):
    """Scoring text in length-sorted chunks without padding changes no feature or logit."""
    adapter, x, _ = bert
    lengths = x["attention_mask"].sum(1)
    assert len(set(lengths)) > 2 and lengths.max() < x["input_ids"].shape[1]  # padding to cut
    hook_feats = []
    handle = classifiers(adapter)[0].register_forward_hook(lambda m, a, o: hook_feats.append(a[0]))
    with torch.inference_mode():
        logits = adapter.module.eval()(**{k: torch.from_numpy(v) for k, v in x.items()})
    handle.remove()
    feats, got = features_and_logits(adapter, x, chunk=5)
    torch.testing.assert_close(got, logits.double(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats, hook_feats[0].double(), atol=1e-5, rtol=1e-5)


def test_auto_proxy_is_diswot():
    from kdc.compress.proxies import resolve_proxy

    assert resolve_proxy("auto") == "diswot"
    assert resolve_proxy("synflow") == "synflow"


def test_diswot_on_a_cnn_with_an_inplace_activation_after_its_last_conv():
    """Grad-CAM hands the model a copy of its leaf, so in-place ops after the site still run."""

    class Net(torch.nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, width, 3, padding=1)
            self.act = torch.nn.ReLU(inplace=True)
            self.head = torch.nn.Linear(width, 10)

        def forward(self, pixel_values):
            return self.head(self.act(self.conv(pixel_values)).mean((2, 3)))

    torch.manual_seed(0)
    teacher = VisionAdapter(Net(8).eval(), {"kind": "entrypoint"})
    student = VisionAdapter(Net(4).eval(), {"kind": "entrypoint"})
    assert diswot(teacher, teacher, IMAGES, IMAGE_LABELS) == pytest.approx(0.0, abs=1e-12)
    assert np.isfinite(diswot(teacher, student, IMAGES, IMAGE_LABELS))


def test_naswot_counts_no_padding(bert):
    """The same rows padded wider (their outputs unchanged) get the same NASWOT score: padded
    positions are no activation units of a row."""
    adapter, x, y = bert
    wide = {k: np.pad(v, ((0, 0), (0, 16))) for k, v in x.items()}
    assert PROXIES["naswot"](adapter, adapter, wide, y) == pytest.approx(
        PROXIES["naswot"](adapter, adapter, x, y), rel=1e-9
    )
