#!/usr/bin/env python
"""Write a prepared copy of an ImageNet-with-boxes tree: images at most N pixels on the longer
side (JPEG at a stated quality), boxes scaled, the same layout, so every tool reads it unchanged.

    python tools/prepare_imagenet.py --src datasets/imagenet --out datasets/imagenet_s320 \\
        --max-side 320 --workers 16
    python tools/pretrain.py --config-file configs/pretrain/imagenet_r50_als.yaml \\
        DATA.ROOT datasets/imagenet_s320

What is resized, scaled, re-encoded or copied is listed in OUT/prepared.json. With --pack, each
split is then one file, OUT/<split>.pack, with its index OUT/<split>.pack.index.npz (labels,
boxes, offsets, SHA-1s), in place of its many small files: DATA.ROOT OUT reads it unchanged.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import _setup_hint  # noqa: F401  (first: a hint when als_det is missing)

from als_det.cli import argument_parser, run
from als_det.data.prepare import prepare_imagenet

logger = logging.getLogger("als_det.tools.prepare_imagenet")


def build_parser() -> argparse.ArgumentParser:
    parser = argument_parser(__doc__)
    parser.add_argument("--src", required=True, metavar="ROOT", help="the tree to copy")
    parser.add_argument(
        "--out", required=True, metavar="ROOT", help="output root (must not exist, or be empty)"
    )
    parser.add_argument(
        "--max-side",
        type=int,
        required=True,
        metavar="N",
        help="longest side of every image in the copy, in pixels (smaller images are kept)",
    )
    parser.add_argument(
        "--quality", type=int, default=90, metavar="Q", help="JPEG quality of written images"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=max(1, (os.cpu_count() or 1) // 2),
        metavar="N",
        help="processes resizing images",
    )
    parser.add_argument(
        "--pack",
        action="store_true",
        help="write each split (class folders) as one pack file plus an index, not many files",
    )
    return parser


def run_tool(args: argparse.Namespace) -> None:
    prepare_imagenet(args.src, args.out, args.max_side, args.quality, args.workers, args.pack)
    logger.info("wrote %s (prepared.json lists what was done)", args.out)


def main(argv: list[str] | None = None) -> int:
    return run(run_tool, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
