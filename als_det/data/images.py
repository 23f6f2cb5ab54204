"""Decoding images to RGB, with one error type for every unreadable file.

Orientation follows detectron2 (`detectron2.data.detection_utils.read_image`): an image is what it
displays as, its EXIF orientation applied. Sizes (`image_size`), boxes in every annotation file and
the decoded pixels (`load_rgb`) are all in that displayed orientation.
"""

from __future__ import annotations

import io
import os

from PIL import Image

EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transposition that displays the stored pixels (detectron2's table)
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # displayed width = stored height
_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class BadImageError(Exception):
    """An image file that cannot be read or decoded; `path` names it."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def orientation_of(img: Image.Image) -> int:
    """The EXIF orientation tag; 1 when absent or unreadable, as detectron2's `read_image`
    treats it."""
    try:
        value = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # detectron2 ignores an unreadable EXIF block the same way
        return 1
    return value if value in _TRANSPOSE else 1


def exif_orientation(path: str | os.PathLike) -> int:
    """`path`'s EXIF orientation (1..8; 1 = stored as displayed), from the header only."""
    try:
        with Image.open(path) as img:
            return orientation_of(img)
    except _PIL_ERRORS as exc:
        raise BadImageError(path, f"unreadable image header ({exc})") from exc


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) as displayed, EXIF orientation applied, from the file header only (no
    pixel decode): the size `load_rgb` and detectron2's `read_image` decode to."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if orientation_of(img) in TRANSPOSING_ORIENTATIONS:
                width, height = height, width
    except _PIL_ERRORS as exc:
        raise BadImageError(path, f"unreadable image header ({exc})") from exc
    if width <= 0 or height <= 0:
        raise BadImageError(path, f"invalid image size {width}x{height}")
    return width, height


def size_mismatch(path: str | os.PathLike, given: tuple[int, int], source: str) -> str | None:
    """None when `given` (the width, height that `source` records for `path`) is its displayed
    size; otherwise the problem, in words (a size that fits only before the EXIF orientation is
    applied is named as such)."""
    shown = image_size(path)
    given = (int(given[0]), int(given[1]))
    if given == shown:
        return None
    problem = (
        f"{source} gives {path} the size {given[0]}x{given[1]}, but it displays as "
        f"{shown[0]}x{shown[1]}"
    )
    orientation = exif_orientation(path)
    if given == shown[::-1] and orientation in TRANSPOSING_ORIENTATIONS:
        problem += (
            f": {given[0]}x{given[1]} is its stored size before its EXIF orientation "
            f"{orientation} is applied. Sizes and boxes must be given in the displayed "
            "orientation, as detectron2 reads the image"
        )
    return problem


def load_rgb(path: str | os.PathLike, data: bytes | None = None) -> Image.Image:
    """Fully decode `path` (or `data`, its bytes, read elsewhere: a packed split) as an RGB PIL
    image (greyscale, CMYK, palette, RGBA become RGB), in its displayed orientation (EXIF
    orientation applied).

    Truncated or corrupt data raises `BadImageError` (PIL's truncated-image tolerance stays off).
    """
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as img:
            img.load()
            method = _TRANSPOSE.get(orientation_of(img))
            out = img if img.mode == "RGB" else img.convert("RGB")
            return out.transpose(method) if method is not None else out
    except _PIL_ERRORS as exc:
        raise BadImageError(path, f"cannot decode image ({exc})") from exc
