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
