"""Runs compared with a baseline: pairing by seed, mean ± sample std over seeds, Student-t
intervals of the paired differences and ratios, and what an interval of a ratio says.

Every report states its verdicts through `direction` (none for a model `near_chance`) and its
spreads through `mean_std` / `seed_stats`; `als_det.report` only formats them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import numpy as np

from als_det.metrics.intervals import t_interval

T = TypeVar("T")

NEUTRAL_POINTS = 1.0  # "accuracy-neutral": a mean top-1 cost of at most this many points
NEAR_CHANCE = 1.5  # top-1 below this many times chance (1/K) is "near chance"


class UnpairedError(ValueError):
    """Runs without a baseline run of the same key; `missing`: those keys, sorted."""

    def __init__(self, missing: list[Any]) -> None:
        super().__init__(f"no baseline for {missing}")
        self.missing = missing


def pair_with_baseline(
    items: Sequence[T], key: Callable[[T], Hashable], is_baseline: Callable[[T], bool]
) -> list[tuple[T, T]]:
    """(item, the baseline item of the same key) for every item that is not a baseline: the
    same seed (and training length) means the same crops and initialisation, so differences
    between the two are the strategy's. UnpairedError when some key has no baseline."""
    base = {key(x): x for x in items if is_baseline(x)}
    missing = sorted({key(x) for x in items} - set(base))
    if missing:
        raise UnpairedError(missing)
    return [(x, base[key(x)]) for x in items if base[key(x)] is not x]


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1) of the values that are not None; std None for one value,
    both None for none. A NaN among them makes both NaN."""
    x = np.array([v for v in values if v is not None], dtype=np.float64)
    if x.size == 0:
        return None, None
    return float(x.mean()), (float(x.std(ddof=1)) if x.size > 1 else None)


def seed_stats(values: Sequence[float | None], paired: bool = False) -> dict[str, Any]:
    """{n, mean, std, interval} over seeds (None values left out); `interval`: for a paired
    quantity (a difference or ratio to the baseline of the same seed) the 95% t-interval of its
    mean, None for one seed or an unpaired quantity."""
    present = [v for v in values if v is not None]
    mean, std = mean_std(present)
    iv = t_interval(present) if paired else None
    return {
        "n": len(present),
        "mean": mean,
        "std": std,
        "interval": [iv[1], iv[2]] if iv else None,
    }


def direction(interval: Sequence[float] | None) -> str | None:
    """The verdict of a ratio's interval: "lower" when it lies below 1, "higher" above 1,
    "alike" when it includes 1; None without an interval."""
    if not interval:
        return None
    low, high = interval
    return "lower" if high < 1 else ("higher" if low > 1 else "alike")


def accuracy_neutral(d_top1_mean: float) -> bool:
    """A mean top-1 change (a fraction) that costs at most NEUTRAL_POINTS points."""
    return d_top1_mean >= -NEUTRAL_POINTS / 100


def near_chance(top1: float, n: int, k: int) -> bool:
    """A model at or near chance on n val images of k classes: top-1 below NEAR_CHANCE / k, or its
    95% Wilson score interval includes 1/k (a model not shown better than guessing). Its
    confidences say nothing about what it learnt, so no verdict is drawn from them."""
    if top1 < NEAR_CHANCE / k:
        return True
    z = 1.959964
    centre = (top1 + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(top1 * (1 - top1) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half <= 1 / k <= centre + half
