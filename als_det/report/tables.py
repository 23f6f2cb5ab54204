"""Every table of the reports, through `tabulate`: Markdown (pipe) tables of pre-formatted cells."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tabulate import tabulate


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
    """A value as a table cell: n/a for None, strings as they are, numbers in `spec`."""
    if v is None:
        return "n/a"
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


def with_interval(h: dict[str, Any] | None, key: str) -> str:
    """`h[key]` with its 95% interval from `h["intervals_95"]`, if any."""
    if not h or h.get(key) is None:
        return "n/a"
    iv = h.get("intervals_95", {}).get(key)
    return f"{h[key]:.3f}" + (f" ({iv[0]:.3f}-{iv[1]:.3f})" if iv else "")
