"""The label strategies, one entry each. Everything that checks, trains, names or orders a strategy
reads this registry: `targets` (LABELS.STRATEGY's check, the smoothing factor e), `mixing` (the
batch transform), the evaluation report's checkpoint table, the sweep's descriptions and figure
markers, and the comparison's row order. The definitions are docs/als.md's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

INPUTS = ("none", "coverage", "mixing")


@dataclass(frozen=True)
class Strategy:
    """How one strategy makes its targets and how reports show it.

    `inputs`: what its targets need besides the label: "none" (a constant e), "coverage" (each
    sample's box coverage, the crop's or the object's by LABELS.COVERAGE, and whether it has a box,
    for the no-box policy) or "mixing" (the whole batch, `als_det.mixing`). `keys`: the
    `LabelStrategy` fields (LABELS keys) it reads. `smoothing(strategy, a) -> e` (float32 tensors
    of one value per sample; for "coverage", the samples with boxes) or, for "mixing",
    `mix_transform`: the `torchvision.transforms.v2` class that mixes a batch.
    """

    name: str
    inputs: str
    keys: tuple[str, ...]
    describe: Callable[[dict[str, Any]], str]  # a strategy dict -> a short text for reports
    marker: str  # its matplotlib marker in the sweep figures
    color: str | None = None  # its colour there (None: the next of the palette)
    smoothing: Callable[[Any, torch.Tensor], torch.Tensor] | None = None
    mix_transform: str | None = None

    def __post_init__(self) -> None:
        if self.inputs not in INPUTS:
            raise ValueError(f"{self.name}: inputs must be one of {INPUTS}, got {self.inputs!r}")
        mixes = self.inputs == "mixing"
        if mixes != (self.smoothing is None) or mixes != (self.mix_transform is not None):
            raise ValueError(f"{self.name}: mixing needs a mix_transform, the others smoothing")


def _als_smoothing(s: Any, a: torch.Tensor) -> torch.Tensor:
    """e = clip((1 - a) ** power, e_min, e_max)."""
    e = 1.0 - a
    if s.power != 1.0:
        e = e.pow(s.power)
    return e.clamp(s.e_min, s.e_max)


def _describe_als(s: dict[str, Any]) -> str:
    power = s.get("power", 1.0)
    return (
        f"als: {s.get('coverage', 'crop')} coverage"
        + (f", p={power:g}" if power != 1.0 else "")
        + f", e in [{s['e_min']:g}, {s['e_max']:g}]"
    )


def _describe_mixing(s: dict[str, Any]) -> str:
    return f"{s['name']}: alpha={s.get('mix_alpha', 1.0)}"


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            "hard", "none", (), lambda s: "hard", "s", smoothing=lambda s, a: a.new_zeros(a.shape)
        ),
        Strategy(
            "ls",
            "none",
            ("epsilon",),
            lambda s: f"ls: e={s['epsilon']}",
            "^",
            "tab:gray",  # green is kept for the sweep figures' target region
            lambda s, a: a.new_full(a.shape, s.epsilon),
        ),
        Strategy(
            "als",
            "coverage",
            ("e_min", "e_max", "no_box", "no_box_epsilon", "coverage", "power"),
            _describe_als,
            "o",
            smoothing=_als_smoothing,
        ),
        Strategy("cutmix", "mixing", ("mix_alpha",), _describe_mixing, "D", mix_transform="CutMix"),
        Strategy("mixup", "mixing", ("mix_alpha",), _describe_mixing, "P", mix_transform="MixUp"),
    )
}


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown label strategy {name!r}; known: {tuple(STRATEGIES)}")
    return STRATEGIES[name]


def mixing_names() -> list[str]:
    return [s.name for s in STRATEGIES.values() if s.inputs == "mixing"]


def describe(strategy: dict[str, Any]) -> str:
    """What a strategy dict (a checkpoint's `label_strategy`) does, e.g. "als: object coverage,
    p=2, e in [0, 0.5]"."""
    return get_strategy(strategy["name"]).describe(strategy)


def rank(name: str) -> int:
    """Where reports order a strategy: the registry's order, names it does not hold last."""
    return list(STRATEGIES).index(name) if name in STRATEGIES else len(STRATEGIES)
