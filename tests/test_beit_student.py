"""A BEiT teacher's student saves and loads: BEiT's config is a backbone's, with one stage per
layer and `out_features` naming the last (`stage4` for 4 layers); a 2-layer student kept the
teacher's, so its config.json did not load ("out_features must be a subset of stage_names")
and every BEiT run failed after distillation, blaming `teacher.path`."""

from __future__ import annotations

import pytest
import torch

from kdc.models import load_student
from kdc.models.hf_image import HFImageAdapter


def _beit(layers: int):
    from transformers import BeitConfig, BeitForImageClassification

    config = BeitConfig(
        image_size=8,
        patch_size=2,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        use_mean_pooling=True,
    )
    torch.manual_seed(0)
    return BeitForImageClassification(config).eval()


@pytest.mark.parametrize("how", ["sliced", "select_layers"])
def test_a_beit_student_with_fewer_layers_saves_and_loads(tmp_path, how):
    teacher = HFImageAdapter(_beit(4))
    assert teacher.config.out_features == ["stage4"]
    if how == "sliced":
        student = teacher.sliced({"layers": [1, 3]})
    else:
        student = teacher.select_layers([1, 3])
    assert student.config.stage_names == ["stem", "stage1", "stage2"]
    assert student.config.out_features == ["stage2"] and student.config.out_indices == [2]
    assert teacher.config.out_features == ["stage4"]  # the teacher's own config unchanged
    student.save(tmp_path / "student")
    loaded = load_student(tmp_path / "student")
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(loaded.module(x), student.module(x))
