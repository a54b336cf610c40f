"""VGG with batch norm, in the CIFAR form used by the SNP predecessors: conv features, a global
average pool and one Linear classifier (no 4096-wide FC layers)."""

from __future__ import annotations

import torch
from torch import nn

from snp_service.models.registry import VGGConfig, register_builder


class VGG(nn.Module):
    def __init__(self, cfg: VGGConfig, num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in cfg.layers:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=False)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))

    def point_modules(self) -> dict[str, nn.Module]:
        return {f"features.{i}": m for i, m in enumerate(self.features) if isinstance(m, (nn.ReLU, nn.MaxPool2d))}


@register_builder("vgg")
def build_vgg(cfg: VGGConfig, num_classes: int, img_size: int, vocab_size: int | None, options: dict) -> VGG:
    return VGG(cfg, num_classes)  # the CIFAR form: global average pooling, so any image_size >= 32
