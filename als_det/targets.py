"""Label strategies: box coverage -> smoothing factor e -> soft targets -> cross entropy (torch's,
with probability targets, computed in float32).

Which strategies exist, what each needs and its e are the registry's (`als_det.strategies`).
ALS (Krothapalli & Abbott, 2020): e = clip((1 - a) ** power, e_min, e_max) with `a` the crop
coverage (default) or the object coverage, and the target is (1 - e) * onehot + e / K, so a
constant e is exactly torch's `label_smoothing=e`. The CutMix and MixUp baselines mix images and
labels over the batch instead (`als_det.mixing`); their strategies only carry `mix_alpha` here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from als_det.strategies import STRATEGIES, get_strategy

NO_BOX_POLICIES = ("ls", "hard", "skip")
COVERAGES = ("crop", "object")


@dataclass(frozen=True)
class LabelStrategy:
    """Which targets an arm trains on. Each strategy reads only its registry entry's `keys`:
    `no_box`, `no_box_epsilon`, `coverage` and `power` "als", `mix_alpha` (the Beta(alpha, alpha)
    of the mixing ratio) "cutmix"/"mixup"."""

    name: str
    epsilon: float = 0.1
    e_min: float = 0.0
    e_max: float = 1.0
    no_box: str = "ls"
    no_box_epsilon: float = 0.1
    coverage: str = "crop"
    power: float = 1.0
    mix_alpha: float = 1.0

    def __post_init__(self) -> None:
        """Each field is a LABELS config key (name: LABELS.STRATEGY); errors name the key."""
        if self.name not in STRATEGIES:
            raise ValueError(
                f"LABELS.STRATEGY must be one of {tuple(STRATEGIES)}, got {self.name!r}"
            )
        if self.no_box not in NO_BOX_POLICIES:
            raise ValueError(f"LABELS.NO_BOX must be one of {NO_BOX_POLICIES}, got {self.no_box!r}")
        if not 0.0 <= self.e_min <= self.e_max <= 1.0:
            raise ValueError(
                f"LABELS needs 0 <= E_MIN <= E_MAX <= 1, got {self.e_min}, {self.e_max}"
            )
        for key in ("epsilon", "no_box_epsilon"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(
                    f"LABELS.{key.upper()} must lie in [0, 1], got {getattr(self, key)}"
                )
        if self.coverage not in COVERAGES:
            raise ValueError(f"LABELS.COVERAGE must be one of {COVERAGES}, got {self.coverage!r}")
        for key in ("power", "mix_alpha"):
            if not getattr(self, key) > 0.0:
                raise ValueError(f"LABELS.{key.upper()} must be > 0, got {getattr(self, key)}")

    @property
    def mixes(self) -> bool:
        """CutMix/MixUp: targets come from mixing the batch (`als_det.mixing`), not from
        coverage."""
        return get_strategy(self.name).inputs == "mixing"

    @classmethod
    def from_cfg(cls, labels_cfg: Any) -> LabelStrategy:
        """From the config's `LABELS` node."""
        return cls(
            name=labels_cfg.STRATEGY,
            epsilon=float(labels_cfg.EPSILON),
            e_min=float(labels_cfg.E_MIN),
            e_max=float(labels_cfg.E_MAX),
            no_box=labels_cfg.NO_BOX,
            no_box_epsilon=float(labels_cfg.NO_BOX_EPSILON),
            coverage=labels_cfg.COVERAGE,
            power=float(labels_cfg.POWER),
            mix_alpha=float(labels_cfg.MIX_ALPHA),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelStrategy:
        """From `to_dict()` output; keys a checkpoint predates take their defaults (today's
        behaviour)."""
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def smoothing(
    strategy: LabelStrategy,
    coverage: torch.Tensor,
    has_box: torch.Tensor,
    object_coverage: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample smoothing factor e (float32, shape [B]); NaN marks a sample to skip.

    The registry entry's e (hard: 0; ls: epsilon; als: clip((1 - a) ** power, e_min, e_max));
    for a strategy that needs coverage, a = `coverage` (crop coverage) or `object_coverage` as the
    strategy says, and images without boxes follow the no-box policy (ls: no_box_epsilon, hard: 0,
    skip: NaN).
    """
    spec = get_strategy(strategy.name)
    if spec.smoothing is None:
        raise ValueError(
            f"{strategy.name} targets come from mixing "
            "the batch (als_det.mixing), not from coverage"
        )
    if spec.inputs == "coverage" and strategy.coverage == "object":
        if object_coverage is None:
            raise ValueError("LABELS.COVERAGE object needs the object coverage of every sample")
        coverage = object_coverage
    coverage = torch.as_tensor(coverage, dtype=torch.float32)
    has_box = torch.as_tensor(has_box, dtype=torch.bool, device=coverage.device)
    e = spec.smoothing(strategy, coverage)
    if spec.inputs != "coverage":
        return e
    no_box_e = {"ls": strategy.no_box_epsilon, "hard": 0.0, "skip": float("nan")}[strategy.no_box]
    return torch.where(has_box, e, torch.full_like(e, no_box_e))


def soft_targets(labels: torch.Tensor, eps: torch.Tensor | float, num_classes: int) -> torch.Tensor:
    """(1 - e) * onehot(labels) + e / K, shape [B, K]; `eps` is a scalar or one value per sample."""
    onehot = F.one_hot(labels.long(), num_classes).float()
    e = torch.as_tensor(eps, dtype=torch.float32, device=onehot.device)
    if e.dim() == 1:
        e = e[:, None]
    return (1.0 - e) * onehot + e / num_classes


def loss_for_batch(
    strategy: LabelStrategy,
    logits: torch.Tensor,
    labels: torch.Tensor,
    coverage: torch.Tensor,
    has_box: torch.Tensor,
    object_coverage: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean loss over used samples, per-sample e, number of skipped samples).

    Samples with label -1 (undecodable images, see `ImageNetBoxes`) and samples the no-box policy
    skips (e = NaN) are left out of the mean; they are not counted in each other's tallies:
    the returned count is the no-box skips among valid labels. A batch with no usable sample gives
    a zero loss that still depends on `logits` (so backward and DDP gradient sync still run).
    """
    labels = labels.to(logits.device)
    e = smoothing(
        strategy,
        coverage.to(logits.device),
        has_box.to(logits.device),
        None if object_coverage is None else object_coverage.to(logits.device),
    )
    valid_label = labels >= 0
    skipped = valid_label & torch.isnan(e)
    use = valid_label & ~torch.isnan(e)
    n_use = int(use.sum())
    if n_use == 0:
        return logits.sum() * 0.0, e, int(skipped.sum())
    targets = soft_targets(labels[use], e[use], logits.shape[1])
    return F.cross_entropy(logits[use].float(), targets), e, int(skipped.sum())
