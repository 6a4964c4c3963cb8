"""Shared fixtures: tiny teachers trained on learnable data, built from configs (no network)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "helpers"))

import tiny  # noqa: E402


@pytest.fixture(scope="session")
def cnn_project(tmp_path_factory) -> Path:
    """A digits project with a small trained CNN teacher: returns the model.yaml path."""
    return tiny.make_cnn_project(tmp_path_factory.mktemp("cnn"))


@pytest.fixture(scope="session")
def bert_project(tmp_path_factory) -> Path:
    """A text project with a trained 4-layer tiny BERT teacher: returns the model.yaml path."""
    return tiny.make_bert_project(tmp_path_factory.mktemp("bert"))


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests run on a 2-core machine beside other jobs: one intra-op thread is much faster."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def vit_project(tmp_path_factory) -> Path:
    """A digits project with a trained 4-layer tiny ViT (Hugging Face directory)."""
    return tiny.make_vit_project(tmp_path_factory.mktemp("vit"))


@pytest.fixture(scope="session")
def deit_project(tmp_path_factory) -> Path:
    """A digits project with a trained 4-layer tiny DeiT whose head averages a classifier on the
    [CLS] token and one on the distillation token (DeiTForImageClassificationWithTeacher)."""
    return tiny.make_vit_project(tmp_path_factory.mktemp("deit"), kind="deit-teacher")
