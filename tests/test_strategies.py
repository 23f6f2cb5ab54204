"""The label-strategy registry: a strategy added to it is accepted, trained on and reported
without another list to edit."""

from __future__ import annotations

import pytest
import torch

from als_det import strategies
from als_det.targets import LabelStrategy, loss_for_batch, smoothing


def test_a_registered_strategy_is_checked_trained_and_described(monkeypatch) -> None:
    half = strategies.Strategy(
        "half",
        "none",
        ("epsilon",),
        lambda s: f"half: e={s['epsilon'] / 2}",
        "v",
        smoothing=lambda s, a: a.new_full(a.shape, s.epsilon / 2),
    )
    with pytest.raises(ValueError, match="LABELS.STRATEGY must be one of"):
        LabelStrategy("half")
    monkeypatch.setitem(strategies.STRATEGIES, "half", half)
    s = LabelStrategy("half", epsilon=0.4)
    coverage, has_box = torch.tensor([0.2, 0.9]), torch.tensor([True, False])
    assert not s.mixes
    assert smoothing(s, coverage, has_box).tolist() == pytest.approx([0.2, 0.2])
    logits = torch.zeros(2, 4, requires_grad=True)
    loss, e, skipped = loss_for_batch(s, logits, torch.tensor([0, 1]), coverage, has_box)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(4.0)).item()) and skipped == 0
    assert strategies.describe(s.to_dict()) == "half: e=0.2"
    assert strategies.rank("mixup") < strategies.rank("half") < strategies.rank("unknown")


def test_an_entry_must_say_how_it_makes_targets() -> None:
    with pytest.raises(ValueError, match="mixing needs a mix_transform"):
        strategies.Strategy("odd", "mixing", (), lambda s: "odd", "o")
    with pytest.raises(ValueError, match="inputs must be one of"):
        strategies.Strategy("odd", "boxes", (), lambda s: "odd", "o", smoothing=lambda s, a: a)
