"""Decoding images to RGB, with one error type for every unreadable file."""

from __future__ import annotations

import os

from PIL import Image


class BadImageError(Exception):
    """An image file that cannot be read or decoded; `path` names it."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the file header only (no pixel decode), for indexing."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadImageError(path, f"unreadable image header ({exc})") from exc
    if width <= 0 or height <= 0:
        raise BadImageError(path, f"invalid image size {width}x{height}")
    return width, height


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Fully decode `path` as an RGB PIL image (greyscale, CMYK, palette, RGBA become RGB).

    Truncated or corrupt data raises `BadImageError` (PIL's truncated-image tolerance stays off).
    """
    try:
        with Image.open(path) as img:
            img.load()
            return img if img.mode == "RGB" else img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadImageError(path, f"cannot decode image ({exc})") from exc
