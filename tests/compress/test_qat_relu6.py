"""A ReLU6 (exported as Clip(0, 6)) under a CNN's QAT: the quantizer reading it is kept within
its max, so that ONNX Runtime drops the Clip and runs the conv before it as an int8 conv."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from test_distill import _cfg, cnn, toy_data
from tiny import optimized_ops, run_onnx

from kdc.compress.distill import distill
from kdc.compress.qat import export_qat, quantize_for_training
from kdc.models.vision import VisionAdapter

SOURCE = {"kind": "entrypoint", "entrypoint": "test:net", "kwargs": {}}


class _ReLU6Net(torch.nn.Module):
    """MobileNetV2's conv, depthwise conv (each BatchNorm and ReLU6) and linear pointwise conv;
    its BatchNorms shift and scale up, so that many ReLU6 outputs saturate at 6."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.layers = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU6(),
            nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU6(),
            nn.Conv2d(16, 8, 1, bias=False),
            nn.BatchNorm2d(8),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 4),
        )
        with torch.no_grad():
            for m in self.layers:
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.fill_(4.0)
                    m.bias.fill_(3.0)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.layers(pixel_values)


def test_cnn_qat_keeps_relu6_ranges_within_6_so_onnx_runtime_fuses_every_conv(tmp_path):
    """A ReLU6 exports as Clip(0, 6); ONNX Runtime drops it before its QuantizeLinear, and then
    runs the conv before it as an int8 QLinearConv, only where that quantizer's range (scale *
    255, zero point 0) lies within 6. Trained free, a saturating ReLU6's range reached 6.012
    after one epoch, and that conv ran as a float FusedConv."""
    teacher = cnn((8, 16), 0)
    data = toy_data(teacher)
    torch.manual_seed(0)
    student = VisionAdapter(_ReLU6Net().eval(), SOURCE)
    # reduce_range: this CPU's u8s8 kernels saturate on 8-bit weights (no VNNI)
    q = quantize_for_training(
        student, data.train, symmetric_activations=False, tensorrt=False, reduce_range=True
    )
    distill(q, data, _cfg(epochs=1, lr=0.01, losses=[{"name": "logits"}]), 0, teacher=teacher)
    path = export_qat(q, data.train, tmp_path / "student_qat.onnx")
    graph = onnx.load(str(path)).graph
    init = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    after_clip = [
        (float(init[n.input[1]]) * 255, int(init[n.input[2]]))
        for n in graph.node
        if n.op_type == "QuantizeLinear" and made_by.get(n.input[0]) == "Clip"
    ]
    assert len(after_clip) == 2 and all(top <= 6 and zp == 0 for top, zp in after_clip)
    assert max(top for top, _ in after_clip) > 5.9, after_clip  # saturated: the cap holds it
    optimized = optimized_ops(path, tmp_path / "optimized.onnx")
    assert optimized.count("QLinearConv") == 3, optimized
    assert not {"Conv", "FusedConv", "Clip"} & set(optimized)
    np.testing.assert_allclose(run_onnx(path, data.val), q.forward_numpy(data.val), atol=5e-2)


class _Clips(torch.nn.Module):
    """Convs into F.relu6, Hardtanh(0, 4) and Hardtanh(-1, 1)."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.convs = nn.ModuleList(nn.Conv2d(c, 4, 3, padding=1) for c in (1, 4, 4))
        self.clip4, self.tanh = nn.Hardtanh(0.0, 4.0), nn.Hardtanh()
        self.head = nn.Linear(4, 4)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.relu6(self.convs[0](pixel_values) * 5)
        x = self.tanh(self.convs[2](self.clip4(self.convs[1](x) * 5)))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("symmetric", [False, True])
def test_cnn_qat_caps_the_quantizers_after_clips_from_0_at_their_max(symmetric):
    """F.relu6 and Hardtanh(0, 4) outputs' quantizers (unsigned, asymmetric or symmetric) are
    capped just below 6 and 4, where calibration saturated them; Hardtanh(-1, 1)'s, signed, is
    not."""
    data = toy_data(cnn((8, 16), 0))
    torch.manual_seed(0)
    q = quantize_for_training(
        VisionAdapter(_Clips().eval(), SOURCE),
        data.train,
        symmetric_activations=symmetric,
        tensorrt=symmetric,
    )
    caps = sorted(
        (m.range_cap, float(getattr(m, m.capped_param).detach()))
        for m in q.module.modules()
        if hasattr(m, "range_cap")
    )
    assert [round(cap, 4) for cap, _ in caps] == [4.0, 6.0]
    assert all(cap < round(cap) and got == pytest.approx(cap, abs=1e-6) for cap, got in caps)
