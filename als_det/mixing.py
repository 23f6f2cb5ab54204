"""CutMix and MixUp baselines: torchvision's batch transforms on the crops every arm sees.

The data set yields the same crops to every arm (`ImageNetBoxes`); these arms then mix each
batch with `torchvision.transforms.v2.CutMix` / `MixUp` (image i with image i-1 of the same batch,
label mass in proportion to the pasted area or blend weight). The mixing draws (Beta(alpha,
alpha) ratio, CutMix box) come from the global CPU generator, which torchvision uses; here it is
reseeded from (seed, epoch, iteration, rank) inside `torch.random.fork_rng`, so a mix depends only
on those four numbers: the same in a resumed run, independent of worker count, and the global RNG
stream of the rest of training is untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from als_det.data.imagenet import sample_seed
from als_det.strategies import get_strategy, mixing_names
from als_det.targets import LabelStrategy

MIX_STREAM = (
    0x4D4958  # keeps mixing draws apart from the crop draws of the same (seed, epoch, index)
)


def mix_seed(seed: int, epoch: int, iteration: int, rank: int) -> int:
    """The seed of one batch's mixing draws."""
    return sample_seed(sample_seed(seed, epoch, iteration) ^ MIX_STREAM, rank, 0)


class BatchMixer:
    """`(images, labels) -> (mixed images, soft targets [B, K])` for a mixing strategy (cutmix,
    mixup: its registry entry's `mix_transform`).

    Rows with label -1 (undecodable images) are left out of the mixing: they are neither mixed
    nor pasted into another image, and their target row is all zeros (the loss masks them).
    """

    def __init__(self, strategy: LabelStrategy, num_classes: int, seed: int, rank: int = 0) -> None:
        if not strategy.mixes:
            raise ValueError(
                f"BatchMixer needs a {' or '.join(mixing_names())} strategy, got {strategy.name!r}"
            )
        transform = getattr(v2, get_strategy(strategy.name).mix_transform)
        self.transform = transform(alpha=strategy.mix_alpha, num_classes=num_classes)
        self.num_classes, self.seed, self.rank = num_classes, int(seed), int(rank)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, epoch: int, iteration: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        valid = (labels >= 0).nonzero().flatten()
        targets = torch.zeros(labels.shape[0], self.num_classes, device=images.device)
        if valid.numel() == 0:
            return images, targets
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(mix_seed(self.seed, epoch, iteration, self.rank))
            mixed, mixed_targets = self.transform(images[valid], labels[valid])
        images = images.clone()
        images[valid] = mixed
        targets[valid] = mixed_targets.to(targets.dtype)
        return images, targets


def loss_for_mixed_batch(
    logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """`loss_for_batch`'s contract for mixed targets: (mean soft cross entropy over rows with a
    label, per-sample e, 0 skips). e is the label mass a row gives away from its own class:
    1 - lambda, or 0 where the partner image has the same class."""
    labels = labels.to(logits.device)
    targets = targets.to(logits.device)
    use = labels >= 0
    e = torch.zeros(labels.shape[0], device=logits.device)
    if not use.any():
        return logits.sum() * 0.0, e, 0
    e[use] = 1.0 - targets[use].gather(1, labels[use, None].long()).squeeze(1)
    return F.cross_entropy(logits[use].float(), targets[use]), e, 0
