"""Make a folder of symlinks to just the packages a rented GPU machine has preinstalled.

`gpu_check.sh --cpu-smoke` adds this folder to a fresh venv through a `.pth` file, so the venv
sees torch, torchvision, numpy, ... (and their own dependencies) as the GPU machine would, but
not detectron2, pycocotools, fvcore, ...: those must then come from the wheelhouse, which proves
it complete. Run with the interpreter whose packages are linked (the project's .venv).

Usage: .venv/bin/python benchmarks/emulate_preinstalled.py OUT_DIR
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import shutil
import sys
from pathlib import Path

from packaging.requirements import Requirement

# What the GPU machines come with (benchmarks/gpu_check.sh's documented environment).
PREINSTALLED = [
    "torch",
    "torchvision",
    "numpy",
    "pillow",
    "opencv-python-headless",
    "matplotlib",
    "tqdm",
    "pyyaml",
    "tabulate",
    "cloudpickle",
    "tensorboard",
    "portalocker",
    "pytest",
    "pip",
    "setuptools",
]
# What the wheelhouse must supply; none may reach the folder.
WHEELHOUSE = [
    "pb1-detectron2",
    "pycocotools",
    "fvcore",
    "iopath",
    "yacs",
    "termcolor",
    "omegaconf",
    "hydra-core",
    "antlr4-python3-runtime",
    "submitit",
    "als-det",
]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[str]) -> dict[str, md.Distribution]:
    """Installed distributions reachable from `roots` through unconditional requirements."""
    found: dict[str, md.Distribution] = {}
    todo = list(roots)
    while todo:
        name = _norm(todo.pop())
        if name in found:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise SystemExit(f"{name} is not installed in {sys.prefix}") from None
        found[name] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


def top_level_entries(dist: md.Distribution) -> set[str]:
    """First path components this distribution installed into site-packages (dist-info included)."""
    entries = set()
    for file in dist.files or []:
        first = file.parts[0]
        if first not in ("..", "__pycache__") and not first.endswith(".pth"):
            entries.add(first)
    return entries


def build(out: Path) -> list[str]:
    dists = closure(PREINSTALLED)
    leaked = sorted(set(dists) & {_norm(n) for n in WHEELHOUSE})
    if leaked:
        raise SystemExit(f"preinstalled packages depend on wheelhouse packages {leaked}")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    site = Path(md.distribution("torch").locate_file(""))
    for dist in dists.values():
        for entry in top_level_entries(dist):
            src = Path(dist.locate_file(entry))
            if src.exists() and not (out / entry).exists():
                (out / entry).symlink_to(src)
    if not (out / "torch").exists():
        raise SystemExit(f"no torch linked from {site}")
    return sorted(dists)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder of symlinks to create (replaced if present)")
    args = parser.parse_args()
    names = build(Path(args.out))
    print(f"{args.out}: {len(names)} preinstalled distributions linked: {' '.join(names)}")


if __name__ == "__main__":
    main()
