"""Where the model looks: class activation maps for torchvision ResNets, and their energy in boxes.

CAM (Zhou et al. 2016): for a global-average-pool + fc network the class score is the spatial mean
of ``sum_k w_ck f_k(x, y)`` over the layer4 features f, so that sum is the map. Grad-CAM (Selvaraju
et al. 2017) weights the features by the spatially averaged gradient of the class score instead;
for GAP + fc that gradient is ``w_ck / (h w)``, so it agrees with CAM up to a positive scale, but it
is computed through autograd and so stays valid for any head.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

CAM_METHODS = ("cam", "gradcam")


def features_and_logits(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """layer4 features [B, C, h, w] and logits [B, K] of a torchvision ResNet in one pass."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    feats = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    logits = model.fc(torch.flatten(model.avgpool(feats), 1))
    return feats, logits


def cam_from_features(model: nn.Module, feats: Tensor, classes: Tensor) -> Tensor:
    """CAM [B, h, w]: the fc weights of each sample's class over its layer4 features."""
    weights = model.fc.weight[classes]  # [B, C]
    return torch.einsum("bchw,bc->bhw", feats, weights.to(feats.dtype))


def grad_cam(model: nn.Module, x: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
    """Grad-CAM maps [B, h, w] (before the ReLU) and logits, by autograd through the model."""
    with torch.enable_grad():
        feats, logits = features_and_logits(model, x)
        score = logits.gather(1, classes[:, None]).sum()
        (grads,) = torch.autograd.grad(score, feats)
    weights = grads.mean(dim=(2, 3))  # [B, C]
    cams = torch.einsum("bchw,bc->bhw", feats.detach(), weights)
    return cams, logits.detach()


def upsample(cams: Tensor, size: int) -> Tensor:
    """Bilinear upsampling of [B, h, w] maps to the network input [B, size, size]."""
    return F.interpolate(
        cams[:, None].float(), size=(size, size), mode="bilinear", align_corners=False
    )[:, 0]


def energy_inside(cams: Tensor, masks: Tensor) -> Tensor:
    """Fraction of each map's positive energy inside its mask, [B]; NaN where a map has none."""
    pos = cams.clamp_min(0).flatten(1).double()
    total = pos.sum(dim=1)
    inside = (pos * masks.flatten(1).to(pos.dtype)).sum(dim=1)
    return torch.where(
        total > 0, inside / total.clamp_min(1e-300), torch.full_like(total, float("nan"))
    )


def compute_cams(
    model: nn.Module, x: Tensor, classes: Tensor, method: str = "cam"
) -> tuple[Tensor, Tensor]:
    """(upsampled maps [B, S, S], logits [B, K]) for `classes`, by CAM or Grad-CAM."""
    if method not in CAM_METHODS:
        raise ValueError(f"CAM method must be one of {CAM_METHODS}, got {method!r}")
    if method == "gradcam":
        cams, logits = grad_cam(model, x, classes)
    else:
        with torch.no_grad():
            feats, logits = features_and_logits(model, x)
            cams = cam_from_features(model, feats, classes)
    return upsample(cams.detach(), x.shape[-1]), logits
