"""A CNN teacher's weights load strictly: a file whose tensors are not the entrypoint model's is
a one-line error naming the first missing and unexpected ones and how many more; BatchNorm's
step counter, which PyTorch fills in, may be absent (validate refused such a file, which the
run loaded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tiny import cnn_config, write_yaml
from typer.testing import CliRunner

from kdc.cli import app
from kdc.config import load_config
from kdc.errors import UserError
from kdc.models import load_teacher
from kdc.models.cnn import small_cnn
from kdc.models.weights import load_into


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return small_cnn(num_classes=10, channels=[16, 32]).state_dict()


def test_weights_under_other_names_name_what_is_missing_and_unexpected():
    renamed = {f"model.{k}": v for k, v in _state().items()}
    with pytest.raises(UserError) as e:
        load_into(small_cnn(num_classes=10, channels=[16, 32]), renamed, "w.safetensors")
    text = str(e.value)
    assert "\n" not in text and text.startswith("w.safetensors: field 'teacher.weights'")
    assert "missing features.0.weight, features.1.weight, features.1.bias … and 9 more" in text
    assert "; unexpected model.features.0.weight, " in text and "… and 11 more" in text


def test_a_size_mismatch_names_the_tensor():
    state = {**_state(), "classifier.weight": torch.zeros(3, 32)}
    with pytest.raises(UserError, match="size mismatch for classifier.weight"):
        load_into(small_cnn(num_classes=10, channels=[16, 32]), state, "w.safetensors")


def test_weights_without_batchnorm_step_counters_validate_and_load(tmp_path):
    state = _state()
    kept = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(kept) < len(state)
    save_file(kept, str(tmp_path / "teacher.safetensors"))
    cfg = write_yaml(tmp_path / "model.yaml", cnn_config())
    res = CliRunner().invoke(app, ["validate", str(cfg)])
    assert res.exit_code == 0, res.output
    teacher = load_teacher(load_config(cfg))
    model = small_cnn(num_classes=10, channels=[16, 32])
    model.load_state_dict(state)
    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    expected = model.eval()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(teacher.forward_numpy({"pixel_values": x}), expected, rtol=1e-6)
