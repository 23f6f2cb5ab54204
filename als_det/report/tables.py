"""Every table of the reports, through `tabulate`: Markdown (pipe) tables of pre-formatted cells,
one way to show a missing value, an interval and a mean ± std."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

MISSING = "n/a"  # a value a table has no number for, in every report


def markdown_table(
    rows: Sequence[Sequence[Any]], headers: Sequence[str], colalign: Sequence[str] | None = None
) -> str:
    """A pipe table; cells are shown as given (numbers are formatted by the caller)."""
    return tabulate(
        [[str(c) for c in row] for row in rows],
        headers=list(headers),
        tablefmt="pipe",
        disable_numparse=True,
        colalign=colalign,
    )


def cell(v: Any, spec: str) -> str:
    """A value as a table cell: MISSING for None, strings as they are, numbers in `spec`."""
    if v is None:
        return MISSING
    if isinstance(v, str):
        return v
    return format(v, spec)


def lookup(d: dict[str, Any], *keys: str) -> Any:
    """d[k1][k2]...; None where a key is missing."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def interval_cell(iv: Sequence[float] | None, spec: str = ".3f") -> str:
    """A 95% interval as `[low, high]` (in `spec`); MISSING without one."""
    return MISSING if not iv else f"[{format(iv[0], spec)}, {format(iv[1], spec)}]"


def _absent(v: float | None) -> bool:
    return v is None or math.isnan(v)


def mean_pm_std(mean: float | None, std: float | None, spec: str, scale: float = 1.0) -> str:
    """Mean and std as `mean ± std` (each times `scale`, in `spec`); the mean alone without a std
    (one seed or run), MISSING without a mean."""
    if _absent(mean):
        return MISSING
    text = format(mean * scale, spec)
    return text if _absent(std) else f"{text} ± {format(std * abs(scale), spec)}"
