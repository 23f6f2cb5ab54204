"""Photos with an EXIF orientation, made at test time (never committed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112


def rotated_photo(path: Path, stored: tuple[int, int] = (40, 30), orientation: int = 6) -> Path:
    """A JPEG stored `stored` (width, height), dark with a white block in its stored top-left
    corner, tagged with EXIF `orientation` (6: displayed turned 90 degrees clockwise, so the block
    shows in the top-right corner of a height x width image)."""
    w, h = stored
    pixels = np.full((h, w, 3), 20, np.uint8)
    pixels[: h // 3, : w // 3] = 235
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, "JPEG", quality=95, exif=exif)
    return path
