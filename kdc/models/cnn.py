"""A small, configurable CNN image classifier: the digits example's teacher and a test model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Conv-BN-ReLU stages (a max-pool after each stage but the last), global average pool and a
    linear classifier. `forward(pixel_values)` returns logits."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: Sequence[int] = (32, 64, 128),
        depth: int = 1,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, c in enumerate(channels):
            for _ in range(depth):
                layers += [
                    nn.Conv2d(c_in, c, 3, padding=1, bias=False),
                    nn.BatchNorm2d(c),
                    nn.ReLU(inplace=True),
                ]
                c_in = c
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(pixel_values)).flatten(1)
        return self.classifier(x)


def small_cnn(
    num_classes: int = 10,
    in_channels: int = 1,
    channels: Sequence[int] = (32, 64, 128),
    depth: int = 1,
) -> SmallCNN:
    """Entrypoint form (`kdc.models.cnn:small_cnn`) for model.yaml."""
    return SmallCNN(
        in_channels=in_channels, num_classes=num_classes, channels=channels, depth=depth
    )
