"""A conv whose output a BatchNorm and another op both read (`bn(y) + y`: the BatchNorm cannot
be folded) quantizes under QAT and PTQ, and its INT8 graph runs in ONNX Runtime close to the float
model. NNCF's fast bias correction raised IndexError on it under QAT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_distill import cnn, toy_data
from tiny import run_onnx

import kdc.compress.qat as qat
from kdc.compress.nncf_ptq import quantize_int8_nncf
from kdc.deploy.onnxruntime import make_session
from kdc.export.onnx_export import export_onnx
from kdc.models.vision import VisionAdapter

SOURCE = {"kind": "entrypoint", "entrypoint": "test:net", "kwargs": {}}
QUANTIZE = qat.quantize


class _ResidualBN(torch.nn.Module):
    """A conv, then a conv (with a bias or not) whose output is added to its BatchNorm's (with
    an affine scale and shift or not)."""

    def __init__(self, bias: bool = True, affine: bool = True) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(8, affine=affine)
        self.head = nn.Linear(8, 4)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        y = self.conv(torch.relu(self.stem(pixel_values)))
        return self.head((self.bn(y) + y).mean((2, 3)))


def _student(bias: bool = True, affine: bool = True) -> VisionAdapter:
    torch.manual_seed(0)
    return VisionAdapter(_ResidualBN(bias, affine).eval(), SOURCE)


def _bias_corrected(monkeypatch, student: VisionAdapter, data) -> bool:
    """Whether NNCF was asked for bias correction quantizing `student` for QAT."""
    seen = []

    def spy(model, items, **kwargs):
        seen.append(not kwargs["advanced_parameters"].disable_bias_correction)
        return QUANTIZE(model, items, **kwargs)

    monkeypatch.setattr(qat, "quantize", spy)
    qat.quantize_for_training(student, data.train, symmetric_activations=False, tensorrt=False)
    return seen == [True]


@pytest.mark.parametrize("symmetric", [False, True], ids=["cpu", "tensorrt"])
def test_cnn_qat_of_a_conv_read_by_a_batchnorm_and_an_add_runs_close_to_the_float_model(
    tmp_path, symmetric
):
    data = toy_data(cnn((8, 16), 0))
    student = _student()
    q = qat.quantize_for_training(
        student,
        data.train,
        symmetric_activations=symmetric,
        tensorrt=symmetric,
        reduce_range=not symmetric,  # this CPU's u8s8 kernels saturate on 8-bit weights
    )
    path = qat.export_qat(q, data.train, tmp_path / "qat.onnx", tensorrt=symmetric)
    # a TensorRT graph runs with Q/DQ in float here (S8S8 kernels without VNNI may saturate)
    sess = make_session(path, threads=1, optimization="disable" if symmetric else "all")
    got = sess.run(None, data.val)[0]
    want = student.forward_numpy(data.val)
    np.testing.assert_allclose(got, q.forward_numpy(data.val), atol=1e-2)
    np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max())


@pytest.mark.parametrize(
    ("bias", "affine", "corrected"),
    [(True, True, False), (True, False, False), (False, True, True)],
    ids=["conv-bias", "conv-bias-plain-batchnorm", "no-conv-bias"],
)
def test_only_a_model_whose_bias_correction_fails_quantizes_without_it(
    monkeypatch, bias, affine, corrected
):
    """NNCF's fast bias correction fails where such a conv has a bias of its own (IndexError in
    two places, with the BatchNorm's shift or without), and is kept where it has none. The small
    CNN (every BatchNorm folded, as the digits example's) keeps it too."""
    data = toy_data(cnn((8, 16), 0))
    assert _bias_corrected(monkeypatch, _student(bias, affine), data) == corrected
    assert _bias_corrected(monkeypatch, cnn((8, 16), 0), data)


def test_nncf_ptq_of_a_conv_read_by_a_batchnorm_and_an_add_runs_close_to_the_float_model(
    tmp_path,
):
    data = toy_data(cnn((8, 16), 0))
    student = _student()
    src = export_onnx(student, data.train, tmp_path / "float.onnx")
    x = data.train["pixel_values"]
    calibration = [{"pixel_values": x[i : i + 16]} for i in range(0, len(x), 16)]
    path = quantize_int8_nncf(
        src, tmp_path / "int8.onnx", calibration, symmetric_activations=False, reduce_range=True
    )
    want = student.forward_numpy(data.val)
    np.testing.assert_allclose(run_onnx(path, data.val), want, atol=0.05 * np.abs(want).max())
