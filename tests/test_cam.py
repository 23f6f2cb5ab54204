"""Class activation maps on a real torchvision ResNet-18, and their energy inside boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from als_det.analysis.cam import (
    cam_from_features,
    compute_cams,
    energy_inside,
    features_and_logits,
)
from als_det.analysis.context import centre_mask
from als_det.models import build_resnet
from als_det.report.figures import cam_grid


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_resnet("resnet18", 5).eval()


def test_features_and_logits_match_the_torchvision_forward(model) -> None:
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        _, logits = features_and_logits(model, x)
        assert torch.allclose(logits, model(x), atol=1e-5)


def test_cam_spatial_mean_is_the_class_score_minus_bias(model) -> None:
    x = torch.randn(3, 3, 64, 64)
    classes = torch.tensor([0, 2, 4])
    with torch.no_grad():
        feats, logits = features_and_logits(model, x)
        cams = cam_from_features(model, feats, classes)
    expected = logits.gather(1, classes[:, None]).squeeze(1) - model.fc.bias[classes]
    assert torch.allclose(cams.mean(dim=(1, 2)), expected, atol=1e-5)


def test_gradcam_is_cam_up_to_a_positive_scale_for_gap_fc(model) -> None:
    x = torch.randn(2, 3, 64, 64)
    classes = torch.tensor([1, 3])
    cam, logits_a = compute_cams(model, x, classes, "cam")
    grad, logits_b = compute_cams(model, x, classes, "gradcam")
    hw = 2 * 2  # layer4 of a 64 px input
    assert torch.allclose(grad * hw, cam, atol=1e-4)
    assert torch.allclose(logits_a, logits_b, atol=1e-5)
    assert cam.shape == (2, 64, 64)


def test_energy_inside_a_full_image_box_is_one_and_an_empty_box_set_zero(model) -> None:
    cams, _ = compute_cams(model, torch.randn(2, 3, 64, 64), torch.tensor([0, 1]))
    full = torch.from_numpy(centre_mask(np.array([[0, 0, 64, 64]]), 64)).expand(2, 64, 64)
    empty = torch.from_numpy(centre_mask(np.zeros((0, 4)), 64)).expand(2, 64, 64)
    assert torch.allclose(energy_inside(cams, full), torch.ones(2, dtype=torch.float64))
    assert torch.equal(energy_inside(cams, empty), torch.zeros(2, dtype=torch.float64))


def test_energy_counts_only_positive_mass_and_is_nan_without_any() -> None:
    cams = torch.zeros(2, 4, 4)
    cams[0, :2] = 3.0  # top half positive
    cams[0, 2:] = -5.0  # bottom half negative: ignored
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, 0] = True  # first row
    e = energy_inside(cams, mask)
    assert e[0].item() == pytest.approx(0.5)
    assert torch.isnan(e[1])


def test_cam_grid_png(tmp_path, model) -> None:
    images = [np.zeros((32, 32, 3), np.uint8) for _ in range(2)]
    boxes = [np.array([[4, 4, 20, 28]]), np.zeros((0, 4))]
    cams = {"hard": [np.random.rand(32, 32) for _ in range(2)], "als": [np.zeros((32, 32))] * 2}
    titles = {"hard": ["a", "b"], "als": ["c", "d"]}
    path = cam_grid(images, boxes, cams, titles, ["r0", "r1"], tmp_path / "grid.png", "cam")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
