"""Confidence intervals over a few seeds: Student's t, which a bootstrap over 3 values cannot
replace."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np


@functools.lru_cache(maxsize=64)
def t_quantile(p: float, df: float) -> float:
    """The p-quantile (0.5 < p < 1) of Student's t with `df` >= 1 degrees of freedom.

    With x = sqrt(df) tan(theta) the t density becomes proportional to cos(theta) ** (df - 1) on
    [0, pi/2), a smooth bounded integrand: its cumulative integral on a fine grid, inverted, gives
    the quantile to about 1e-9 (df = 1 is the Cauchy distribution, tan((p - 1/2) pi), exactly).
    """
    if not 0.5 < p < 1.0 or df < 1:
        raise ValueError(f"need 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    theta = np.linspace(0.0, math.pi / 2, 200_001)
    f = np.cos(theta) ** (df - 1)
    cum = np.concatenate([[0.0], np.cumsum((f[1:] + f[:-1]) / 2 * np.diff(theta))])
    angle = float(np.interp((2 * p - 1) * cum[-1], cum, theta))
    return math.sqrt(df) * math.tan(angle)


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float] | None:
    """(mean, low, high): the `level` t-interval of the mean over independent values (e.g. seeds);
    None for fewer than two values (one seed has no spread to estimate)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return None
    mean = float(x.mean())
    half = t_quantile(0.5 + level / 2, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, mean - half, mean + half
