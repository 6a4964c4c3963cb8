"""A CNN with depthwise convolutions (MobileNet, EfficientNet, ConvNeXt) pruned to a narrower
student reloads as it was pruned: torch-pruning keeps a depthwise conv one group per channel,
and the reload must too. It kept the teacher's `groups`, and every such student crashed when
export loaded it (exit 3: "Given groups=16, expected weight to be at least 16 at dimension 0")."""

from __future__ import annotations

import textwrap

import numpy as np
import torch
from torch import nn

from kdc.models import load_student
from kdc.models.shapes import apply_shapes, tensor_shapes
from kdc.models.vision import VisionAdapter

NET = """
from torch import nn

def build(num_classes=3):
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU(),  # depthwise
        nn.Conv2d(16, 32, 1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.ReLU(),  # grouped, not depthwise
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )
"""


def test_a_pruned_depthwise_student_reloads_and_runs(tmp_path, monkeypatch):
    (tmp_path / "dwnet.py").write_text(textwrap.dedent(NET))
    monkeypatch.syspath_prepend(str(tmp_path))
    source = {"kind": "entrypoint", "entrypoint": "dwnet:build", "name": "", "kwargs": {}}
    teacher = VisionAdapter.build(source, None)
    x = {"pixel_values": np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)}
    student = teacher.shrink(0.5, 1, x)
    depthwise = [m for m in student.module.modules() if isinstance(m, nn.Conv2d) and m.groups > 4]
    assert [m.groups for m in depthwise] == [8]  # pruned with its channels
    student.save(tmp_path / "student")
    loaded = load_student(tmp_path / "student")
    want = student.module.eval()(torch.from_numpy(x["pixel_values"]))
    got = loaded.module.eval()(torch.from_numpy(x["pixel_values"]))
    torch.testing.assert_close(got, want)


def test_apply_shapes_keeps_a_depthwise_conv_depthwise_and_other_groups_as_they_are():
    conv = nn.Conv2d(16, 16, 3, groups=16)
    grouped = nn.Conv2d(16, 32, 3, groups=4)
    model = nn.Sequential(conv, grouped)
    shapes = tensor_shapes(model) | {"0.weight": [8, 1, 3, 3], "0.bias": [8]}
    apply_shapes(model, shapes | {"1.weight": [32, 2, 3, 3]})
    assert (conv.groups, conv.in_channels, conv.out_channels) == (8, 8, 8)
    assert (grouped.groups, grouped.in_channels, grouped.out_channels) == (4, 8, 32)
