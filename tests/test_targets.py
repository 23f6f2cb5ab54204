"""Targets: constant e equals torch's label smoothing; ALS clipping; no-box policies; masking."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from als_det.config import get_cfg
from als_det.targets import LabelStrategy, loss_for_batch, smoothing, soft_targets


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.1, 0.3, 0.9, 1.0])
def test_constant_e_equals_torch_label_smoothing(eps: float) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(17, 7, generator=g) * 3
    labels = torch.randint(0, 7, (17,), generator=g)
    expected = F.cross_entropy(logits, labels, label_smoothing=eps)
    got = F.cross_entropy(logits, soft_targets(labels, eps, 7))  # probability targets
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    # the same through the per-sample path of the ls arm
    strat = LabelStrategy("ls", epsilon=eps)
    loss, e, skipped = loss_for_batch(
        strat, logits, labels, torch.rand(17), torch.ones(17, dtype=torch.bool)
    )
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    assert skipped == 0 and torch.all(e == eps)


def test_hard_equals_cross_entropy_and_per_sample_e() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 5, generator=g)
    labels = torch.randint(0, 5, (8,), generator=g)
    loss, e, _ = loss_for_batch(
        LabelStrategy("hard"), logits, labels, torch.rand(8), torch.ones(8, dtype=torch.bool)
    )
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))
    assert torch.all(e == 0)
    # per-sample e: each row equals torch's label smoothing with that row's e
    eps = torch.tensor([0.0, 0.1, 0.5, 1.0, 0.2, 0.7, 0.33, 0.9])
    per = F.cross_entropy(logits, soft_targets(labels, eps, 5), reduction="none")
    for i in range(8):
        ref = F.cross_entropy(logits[i : i + 1], labels[i : i + 1], label_smoothing=float(eps[i]))
        torch.testing.assert_close(per[i], ref)


def test_soft_targets_rows() -> None:
    t = soft_targets(torch.tensor([2, 0]), torch.tensor([0.3, 0.0]), 4)
    torch.testing.assert_close(t[0], torch.tensor([0.075, 0.075, 0.775, 0.075]))
    torch.testing.assert_close(t[1], torch.tensor([1.0, 0.0, 0.0, 0.0]))


def test_soft_target_loss_is_stable_for_huge_logits() -> None:
    logits = torch.tensor([[1e4, -1e4, 0.0], [-3e4, 3e4, 1.0]], requires_grad=True)
    loss, _, _ = loss_for_batch(
        LabelStrategy("ls", epsilon=0.1),
        logits,
        torch.tensor([0, 0]),
        torch.rand(2),
        torch.ones(2, dtype=torch.bool),
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    # sample 1 puts 3e4 on the wrong class: its loss is about (0.9 + 0.1/3) * 6e4
    assert loss.item() > 2e4


def test_als_e_is_one_minus_coverage_clipped() -> None:
    cov = torch.tensor([0.0, 0.25, 0.6, 1.0])
    has = torch.ones(4, dtype=torch.bool)
    torch.testing.assert_close(
        smoothing(LabelStrategy("als"), cov, has), torch.tensor([1.0, 0.75, 0.4, 0.0])
    )
    clipped = smoothing(LabelStrategy("als", e_min=0.1, e_max=0.5), cov, has)
    torch.testing.assert_close(clipped, torch.tensor([0.5, 0.5, 0.4, 0.1]))


def test_no_box_policies() -> None:
    cov = torch.tensor([0.5, 0.0, 0.0])
    has = torch.tensor([True, False, False])
    e = smoothing(LabelStrategy("als", no_box="ls", no_box_epsilon=0.2), cov, has)
    torch.testing.assert_close(e, torch.tensor([0.5, 0.2, 0.2]))
    e = smoothing(LabelStrategy("als", no_box="hard"), cov, has)
    torch.testing.assert_close(e, torch.tensor([0.5, 0.0, 0.0]))
    e = smoothing(LabelStrategy("als", no_box="skip"), cov, has)
    assert e[0] == 0.5 and torch.isnan(e[1:]).all()
    # the policy belongs to ALS: the hard and ls arms treat box-less images like the others
    assert torch.all(smoothing(LabelStrategy("hard", no_box="skip"), cov, has) == 0)
    assert torch.all(smoothing(LabelStrategy("ls", epsilon=0.1, no_box="skip"), cov, has) == 0.1)


def test_loss_for_batch_masks_skips_and_bad_labels() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 4, generator=g, requires_grad=True)
    labels = torch.tensor([1, -1, 2, 3, 0])
    cov = torch.tensor([0.3, 0.9, 0.0, 0.8, 1.0])
    has = torch.tensor([True, True, False, True, False])
    loss, e, skipped = loss_for_batch(LabelStrategy("als", no_box="skip"), logits, labels, cov, has)
    assert skipped == 2  # samples 2 and 4: no box; sample 1 is label -1 (not a skip)
    keep = torch.tensor([0, 3])
    ref = torch.stack(
        [
            F.cross_entropy(logits[i : i + 1], labels[i : i + 1], label_smoothing=1 - float(cov[i]))
            for i in keep
        ]
    ).mean()
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert torch.all(logits.grad[[1, 2, 4]] == 0)
    assert math.isclose(float(e[0]), 0.7, rel_tol=1e-6)


def test_loss_for_batch_with_nothing_usable_still_backprops() -> None:
    logits = torch.randn(2, 3, requires_grad=True)
    loss, _, skipped = loss_for_batch(
        LabelStrategy("als"),
        logits,
        torch.tensor([-1, -1]),
        torch.zeros(2),
        torch.zeros(2, dtype=torch.bool),
    )
    loss.backward()
    assert loss.item() == 0.0 and skipped == 0 and torch.all(logits.grad == 0)


def test_strategy_validation_and_config_round_trip() -> None:
    with pytest.raises(ValueError):
        LabelStrategy("focal")
    with pytest.raises(ValueError):
        LabelStrategy("als", no_box="drop")
    with pytest.raises(ValueError):
        LabelStrategy("als", e_min=0.6, e_max=0.5)
    cfg = get_cfg()
    cfg.LABELS.E_MAX = 0.9
    s = LabelStrategy.from_cfg(cfg.LABELS)
    assert s == LabelStrategy("als", 0.1, 0.0, 0.9, "ls", 0.1)
    assert LabelStrategy(**s.to_dict()) == s


def test_default_als_targets_are_unchanged_by_the_new_options() -> None:
    """Defaults (crop coverage, power 1) give bit for bit the targets of e = clip(1 - a, e_min,
    e_max)."""
    g = torch.Generator().manual_seed(3)
    cov, obj = torch.rand(64, generator=g), torch.rand(64, generator=g)
    has = torch.rand(64, generator=g) < 0.8
    for e_min, e_max in ((0.0, 1.0), (0.05, 0.5)):
        before = torch.where(has, (1.0 - cov).clamp(e_min, e_max), torch.full_like(cov, 0.1))
        got = smoothing(LabelStrategy("als", e_min=e_min, e_max=e_max), cov, has, obj)
        assert torch.equal(got, before)
    assert LabelStrategy.from_cfg(get_cfg().LABELS) == LabelStrategy("als")


def test_als_power_and_object_coverage() -> None:
    cov = torch.tensor([0.0, 0.25, 0.6, 1.0])
    obj = torch.tensor([1.0, 0.5, 0.1, 0.0])
    has = torch.ones(4, dtype=torch.bool)
    squared = smoothing(LabelStrategy("als", power=2.0), cov, has)
    torch.testing.assert_close(squared, torch.tensor([1.0, 0.5625, 0.16, 0.0]))
    clipped = smoothing(LabelStrategy("als", power=0.5, e_max=0.8), cov, has)
    torch.testing.assert_close(
        clipped, torch.tensor([0.8, 0.8, 0.4**0.5, 0.0])
    )  # 0.75 ** 0.5 > 0.8
    by_object = smoothing(LabelStrategy("als", coverage="object"), cov, has, obj)
    torch.testing.assert_close(by_object, torch.tensor([0.0, 0.5, 0.9, 1.0]))
    with pytest.raises(ValueError, match="object coverage"):
        smoothing(LabelStrategy("als", coverage="object"), cov, has)
    # the coverage choice belongs to ALS: hard and ls ignore it
    assert torch.all(smoothing(LabelStrategy("hard", coverage="object"), cov, has, obj) == 0)
    # through the loss: object coverage picks each row's label smoothing
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    loss, e, _ = loss_for_batch(
        LabelStrategy("als", coverage="object"), logits, labels, cov, has, obj
    )
    ref = torch.stack(
        [
            F.cross_entropy(logits[i : i + 1], labels[i : i + 1], label_smoothing=float(1 - obj[i]))
            for i in range(4)
        ]
    ).mean()
    torch.testing.assert_close(loss, ref)


def test_mix_strategies_carry_alpha_but_no_coverage_targets() -> None:
    with pytest.raises(ValueError, match="mixing"):
        smoothing(LabelStrategy("cutmix"), torch.zeros(2), torch.ones(2, dtype=torch.bool))
    for bad in ({"coverage": "box"}, {"power": 0.0}, {"mix_alpha": -1.0}):
        with pytest.raises(ValueError):
            LabelStrategy("als", **bad)
    cfg = get_cfg()
    cfg.LABELS.STRATEGY, cfg.LABELS.MIX_ALPHA = "mixup", 0.2
    s = LabelStrategy.from_cfg(cfg.LABELS)
    assert s.mixes and s.mix_alpha == 0.2 and not LabelStrategy("als").mixes
    # a checkpoint written before these keys existed reads back as today's defaults
    old = {
        "name": "als",
        "epsilon": 0.1,
        "e_min": 0.0,
        "e_max": 1.0,
        "no_box": "ls",
        "no_box_epsilon": 0.1,
    }
    assert LabelStrategy.from_dict(old) == LabelStrategy("als")
