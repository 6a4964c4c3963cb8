"""A CNN whose root module is a bare nn.Sequential (a teacher's entrypoint returning one, and the
student derived from it): NNCF adds its hook storage as a child of the model it quantizes, which
Sequential.forward then called as a layer (NotImplementedError: HookStorage has no forward).
QAT quantizes under a plain root; NNCF PTQ quantizes the exported ONNX graph."""

from __future__ import annotations

import importlib
import textwrap

import numpy as np
import onnx
import pytest
import torch
from test_distill import _cfg, toy_data
from tiny import cnn_config, optimized_ops, write_yaml

from kdc import api
from kdc.compress.distill import distill
from kdc.compress.qat import export_qat, quantize_for_training
from kdc.deploy.onnxruntime import make_session
from kdc.models.vision import VisionAdapter

NET = """
from torch import nn

def build(num_classes=10, in_channels=1):
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )
"""


class _Plain(torch.nn.Module):
    """The same layers under a plain root, as kdc's own CNNs hold them."""

    def __init__(self, layers: torch.nn.Sequential) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.layers(pixel_values)


def _graph(model: onnx.ModelProto) -> tuple[list[str], list[tuple[int, ...]]]:
    """A graph's structure: its op types in order and its initializers' shapes."""
    return [n.op_type for n in model.graph.node], sorted(
        tuple(t.dims) for t in model.graph.initializer
    )


def test_qat_of_a_sequential_root_trains_and_exports_as_a_plain_root_does(tmp_path, monkeypatch):
    """Quantized, trained and exported, the Sequential student's graph is the one the same layers
    under a plain root export: BatchNorms folded, each conv's weight int8 and dequantized; ONNX
    Runtime (Q/DQ in float) computes what the fake-quantized model does."""
    (tmp_path / "seqnet.py").write_text(textwrap.dedent(NET))
    monkeypatch.syspath_prepend(str(tmp_path))
    source = {"kind": "entrypoint", "entrypoint": "seqnet:build", "kwargs": {"num_classes": 4}}
    torch.manual_seed(0)
    seq = VisionAdapter.build(source, None)
    assert type(seq.module) is torch.nn.Sequential
    data = toy_data(seq)
    bare = importlib.import_module("seqnet").build(num_classes=4)  # without kdc's call hooks
    bare.load_state_dict(seq.module.state_dict())
    graphs = {}
    for name, module in (("sequential", seq.module), ("plain", _Plain(bare).eval())):
        q = quantize_for_training(
            VisionAdapter(module, source), data.train, symmetric_activations=False, tensorrt=False
        )
        distill(q, data, _cfg(epochs=1, losses=[{"name": "logits"}]), 0, teacher=seq)
        path = export_qat(q, data.train, tmp_path / f"{name}.onnx")
        model = onnx.load(str(path))
        graphs[name] = _graph(model)
        made_by = {o: n.op_type for n in model.graph.node for o in n.output}
        convs = [n for n in model.graph.node if n.op_type == "Conv"]
        assert len(convs) == 2
        assert all(made_by.get(n.input[1]) == "DequantizeLinear" for n in convs)  # int8 weights
        exact = make_session(path, threads=1, optimization="disable")
        np.testing.assert_allclose(
            exact.run(None, data.val)[0], q.forward_numpy(data.val), atol=1e-4
        )
    assert graphs["sequential"] == graphs["plain"]
    assert "BatchNormalization" not in graphs["sequential"][0]


@pytest.mark.parametrize("quantize", [{"method": "qat", "qat_epochs": 1}, {"ptq": "nncf"}])
def test_a_sequential_teacher_by_entrypoint_compresses_to_int8(tmp_path, quantize):
    """The whole run, a student derived from the Sequential teacher: its INT8 engine is the QAT
    graph or NNCF's PTQ graph, every conv an int8 conv in ONNX Runtime."""
    (tmp_path / "seqnet.py").write_text(textwrap.dedent(NET))
    cfg = cnn_config(
        weights=None,
        teacher={"entrypoint": "seqnet:build", "kwargs": {"num_classes": 10}},
        data={"source": "sklearn:digits", "limit_train": 200, "limit_eval": 64},
        distill={"epochs": 1, "batch_size": 64, "lr": 0.003},
        quantize=quantize,
    )
    path = write_yaml(tmp_path / "model.yaml", cfg)
    report = api.compress(path, "host", tmp_path / "run", quiet=True)
    int8 = next(e for e in report["engines"] if e["precision"] == "int8")
    method = int8["quantization"]["method"]
    assert method == ("qat" if "method" in quantize else "nncf-ptq-qdq")
    ops = optimized_ops(tmp_path / "run" / int8["path"], tmp_path / "optimized.onnx")
    assert ops.count("QLinearConv") == 2 and "Conv" not in ops, " ".join(ops)
