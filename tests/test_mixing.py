"""CutMix/MixUp arms: torchvision's mixing on the batch, seeded from (seed, epoch, iteration,
rank)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from als_det.mixing import BatchMixer, loss_for_mixed_batch
from als_det.targets import LabelStrategy

K = 6


def _batch(n: int = 6, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is the constant i + 1 (so every pixel tells whose it is); labels all differ."""
    images = (
        torch.arange(1, n + 1, dtype=torch.float32)[:, None, None, None]
        .expand(n, 3, size, size)
        .clone()
    )
    return images, torch.arange(n) % K


def test_cutmix_label_mass_is_the_pasted_area() -> None:
    images, labels = _batch()
    mixer = BatchMixer(LabelStrategy("cutmix", mix_alpha=1.0), K, seed=0)
    seen_partial = 0
    for it in range(20):
        mixed, targets = mixer(images, labels, epoch=1, iteration=it)
        torch.testing.assert_close(targets.sum(1), torch.ones(len(labels)))
        for i in range(len(labels)):
            partner = (i - 1) % len(labels)  # torchvision pairs image i with image i - 1
            pasted = (mixed[i] == partner + 1).double().mean().item()
            own = (mixed[i] == i + 1).double().mean().item()
            assert own + pasted == pytest.approx(1.0)
            assert targets[i, labels[i]].item() == pytest.approx(own, abs=1e-6)
            assert targets[i, labels[partner]].item() == pytest.approx(pasted, abs=1e-6)
        seen_partial += 0.0 < pasted < 1.0
    assert seen_partial >= 10


def test_mixup_blends_images_and_labels_alike() -> None:
    images, labels = _batch()
    mixed, targets = BatchMixer(LabelStrategy("mixup", mix_alpha=0.2), K, seed=0)(
        images, labels, 1, 0
    )
    lam = targets[0, labels[0]].item()
    assert 0.0 < lam < 1.0
    for i in range(len(labels)):
        partner = (i - 1) % len(labels)
        expected = lam * (i + 1) + (1 - lam) * (partner + 1)
        torch.testing.assert_close(mixed[i], torch.full_like(mixed[i], expected))
        assert targets[i, labels[partner]].item() == pytest.approx(1 - lam, abs=1e-6)


def test_mixing_depends_only_on_seed_epoch_iteration_rank() -> None:
    images, labels = _batch()
    strategy = LabelStrategy("cutmix")
    a = BatchMixer(strategy, K, seed=3)(images, labels, 2, 5)
    torch.manual_seed(123)  # the global RNG state does not matter ...
    b = BatchMixer(strategy, K, seed=3)(images, labels, 2, 5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # ... and is not consumed: the rest of training draws as if no mixing happened
    torch.manual_seed(7)
    BatchMixer(strategy, K, seed=3)(images, labels, 2, 5)
    after = torch.rand(4)
    torch.manual_seed(7)
    assert torch.equal(after, torch.rand(4))
    others = [
        BatchMixer(strategy, K, seed=s, rank=r)(images, labels, e, i)[1]
        for s, r, e, i in ((4, 0, 2, 5), (3, 1, 2, 5), (3, 0, 3, 5), (3, 0, 2, 6))
    ]
    assert all(not torch.equal(a[1], t) for t in others)


def test_undecodable_rows_are_neither_mixed_nor_pasted() -> None:
    images, labels = _batch()
    images[2] = 99.0
    labels = labels.clone()
    labels[2] = -1
    mixed, targets = BatchMixer(LabelStrategy("cutmix"), K, seed=0)(images, labels, 1, 0)
    assert torch.equal(mixed[2], images[2]) and torch.all(targets[2] == 0)
    assert not (mixed[[0, 1, 3, 4, 5]] == 99.0).any()
    # the valid rows are paired among themselves: row 3's partner is row 1
    pasted = (mixed[3] == 2.0).double().mean().item()
    assert targets[3, labels[1]].item() == pytest.approx(pasted, abs=1e-6)

    logits = torch.randn(6, K, requires_grad=True)
    loss, e, skipped = loss_for_mixed_batch(logits, labels, targets)
    use = labels >= 0
    expected = -(targets[use] * torch.log_softmax(logits[use], dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert skipped == 0 and torch.all(logits.grad[2] == 0)
    torch.testing.assert_close(e[use], 1.0 - targets[use].gather(1, labels[use, None]).squeeze(1))


def test_unmixed_targets_reduce_to_cross_entropy() -> None:
    logits, labels = torch.randn(4, K), torch.tensor([0, 3, 5, 1])
    loss, e, _ = loss_for_mixed_batch(logits, labels, F.one_hot(labels, K).float())
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))
    assert torch.all(e == 0)
    with pytest.raises(ValueError, match="cutmix or mixup"):
        BatchMixer(LabelStrategy("als"), K, seed=0)
