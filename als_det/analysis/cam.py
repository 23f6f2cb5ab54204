"""Where the model looks: class activation maps for torchvision ResNets, and their energy in boxes.

CAM (Zhou et al. 2016): for a global-average-pool + fc network the class score is the spatial mean
of ``sum_k w_ck f_k(x, y)`` over the layer4 features f, so that sum is the map. Grad-CAM (Selvaraju
et al. 2017) weights the features by the spatially averaged gradient of the class score instead;
for GAP + fc that gradient is ``w_ck / (h w)``, so it agrees with CAM up to a positive scale, but it
is computed through autograd and so stays valid for any head.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from als_det.io import atomic_write_bytes

CAM_METHODS = ("cam", "gradcam")


def features_and_logits(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """layer4 features [B, C, h, w] and logits [B, K] of a torchvision ResNet in one pass."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    feats = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    logits = model.fc(torch.flatten(model.avgpool(feats), 1))
    return feats, logits


def cam_from_features(model: nn.Module, feats: Tensor, classes: Tensor) -> Tensor:
    """CAM [B, h, w]: the fc weights of each sample's class over its layer4 features."""
    weights = model.fc.weight[classes]                      # [B, C]
    return torch.einsum("bchw,bc->bhw", feats, weights.to(feats.dtype))


def grad_cam(model: nn.Module, x: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
    """Grad-CAM maps [B, h, w] (before the ReLU) and logits, by autograd through the model."""
    with torch.enable_grad():
        feats, logits = features_and_logits(model, x)
        score = logits.gather(1, classes[:, None]).sum()
        (grads,) = torch.autograd.grad(score, feats)
    weights = grads.mean(dim=(2, 3))                        # [B, C]
    cams = torch.einsum("bchw,bc->bhw", feats.detach(), weights)
    return cams, logits.detach()


def upsample(cams: Tensor, size: int) -> Tensor:
    """Bilinear upsampling of [B, h, w] maps to the network input [B, size, size]."""
    return F.interpolate(cams[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def energy_inside(cams: Tensor, masks: Tensor) -> Tensor:
    """Fraction of each map's positive energy inside its mask, [B]; NaN where a map has none."""
    pos = cams.clamp_min(0).flatten(1).double()
    total = pos.sum(dim=1)
    inside = (pos * masks.flatten(1).to(pos.dtype)).sum(dim=1)
    return torch.where(total > 0, inside / total.clamp_min(1e-300), torch.full_like(total, float("nan")))


def compute_cams(model: nn.Module, x: Tensor, classes: Tensor, method: str = "cam") -> tuple[Tensor, Tensor]:
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


def save_cam_grid(images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], cams: dict[str, Sequence[np.ndarray]],
                  titles: dict[str, Sequence[str]], row_labels: Sequence[str], path: str | Path) -> Path:
    """One PNG: a row per image (the input with its boxes, then each model's CAM overlaid).

    `images` are uint8 network-input crops [S, S, 3], `boxes` in input pixels, `cams[model][i]` a
    [S, S] map, `titles[model][i]` a caption (e.g. the prediction and confidence).
    """
    names = list(cams)
    rows, cols = len(images), 1 + len(names)
    fig = Figure(figsize=(2.2 * max(cols, 2), 2.3 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(images[r])
            if c > 0:
                cam = np.clip(cams[names[c - 1]][r], 0, None)
                peak = cam.max()
                ax.imshow(cam / peak if peak > 0 else cam, cmap="jet", alpha=0.5, vmin=0, vmax=1)
                ax.set_title(f"{names[c - 1]}\n{titles[names[c - 1]][r]}", fontsize=8)
            else:
                ax.set_title(row_labels[r], fontsize=8)
            for x0, y0, x1, y1 in np.asarray(boxes[r]).reshape(-1, 4):
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                               edgecolor="white", linewidth=1.5))
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("CAM of the labelled class\n(white: labelled boxes)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return atomic_write_bytes(path, buf.getvalue())
