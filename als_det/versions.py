"""Package versions and environment facts written next to every output."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

_PACKAGES = (
    "als_det",
    "torch",
    "torchvision",
    "detectron2",
    "pb1-detectron2",
    "fvcore",
    "pycocotools",
    "numpy",
    "opencv-python-headless",
    "pillow",
)


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a result (absent ones are left out)."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        import torch

        out["cuda"] = torch.version.cuda or "none"
        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return out
