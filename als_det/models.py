"""torchvision ResNet factories (the backbones every arm trains)."""
from __future__ import annotations

import torch.nn as nn
import torchvision

RESNET_DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101, "resnet152": 152}


def build_resnet(arch: str, num_classes: int) -> nn.Module:
    """A randomly initialised torchvision ResNet with a `num_classes`-way fc head."""
    if arch not in RESNET_DEPTHS:
        raise ValueError(f"unknown ResNet {arch!r}; choose one of {sorted(RESNET_DEPTHS)}")
    return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
