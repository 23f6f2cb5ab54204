"""torchvision ResNet factories (the backbones every arm trains) and their layouts."""

from __future__ import annotations

import torch.nn as nn
import torchvision

# depth -> (bottleneck blocks?, blocks in layer1..layer4), as torchvision builds them
RESNET_LAYOUTS: dict[int, tuple[bool, tuple[int, int, int, int]]] = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
}
RESNET_DEPTHS = {f"resnet{depth}": depth for depth in RESNET_LAYOUTS}


def build_resnet(arch: str, num_classes: int) -> nn.Module:
    """A randomly initialised torchvision ResNet with a `num_classes`-way fc head."""
    if arch not in RESNET_DEPTHS:
        raise ValueError(f"unknown ResNet {arch!r}; choose one of {sorted(RESNET_DEPTHS)}")
    return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
