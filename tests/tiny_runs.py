"""What every tiny CPU training in the tests shares (pytest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path


def tiny_data_overrides(root: str | Path, cache_dir: str | Path | None = None) -> list[str]:
    """Config overrides for a generated data set at 16-pixel crops, read in the main process."""
    opts = [
        "DATA.ROOT",
        str(root),
        "DATA.GENERATE",
        "False",
        "DATA.IMAGE_SIZE",
        "16",
        "DATA.VAL_RESIZE",
        "18",
        "DATA.NUM_WORKERS",
        "0",
    ]
    return opts if cache_dir is None else [*opts, "DATA.CACHE_DIR", str(cache_dir)]
