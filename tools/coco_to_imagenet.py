#!/usr/bin/env python
"""Turn a COCO-format detection set into an ImageNet-with-boxes tree for ALS pretraining.

    python tools/coco_to_imagenet.py --coco-root datasets/coco --out datasets/coco_cls
    python tools/coco_to_imagenet.py --split train=my/train.json:my/images \\
        --split val=my/val.json:my/images --out datasets/my_cls --crowd drop --min-images 20
    python tools/pretrain.py --config-file configs/pretrain/imagenet_r50_als.yaml \\
        DATA.ROOT datasets/coco_cls

Label of an image = its dominant category (largest total box area); its boxes = that category's
boxes (Pascal-VOC XML under OUT/Annotation/<split>/). The first split decides the classes.
"""

from __future__ import annotations

import argparse
import logging
import sys

import _setup_hint  # noqa: F401  (first: a hint when als_det is missing)

from als_det.cli import argument_parser, run
from als_det.data.coco_to_imagenet import (
    CROWD_POLICIES,
    SplitSource,
    coco_split_sources,
    coco_to_imagenet,
)

logger = logging.getLogger("als_det.tools.coco_to_imagenet")


def _split(spec: str) -> SplitSource:
    name, sep, rest = spec.partition("=")
    json_file, sep2, image_dir = rest.rpartition(".json:")
    if not (name and sep and sep2 and json_file and image_dir):
        raise argparse.ArgumentTypeError(
            f"expected NAME=JSON:IMAGE_DIR (JSON ending in .json), got {spec!r}"
        )
    return SplitSource(name, json_file + ".json", image_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argument_parser(__doc__)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--coco-root",
        metavar="DIR",
        help="COCO 2017 in the official layout: train2017 -> train, val2017 -> val",
    )
    src.add_argument(
        "--split",
        action="append",
        type=_split,
        metavar="NAME=JSON:IMAGE_DIR",
        help="a split to convert (repeatable; the first decides the classes)",
    )
    parser.add_argument(
        "--out", required=True, metavar="ROOT", help="output root (must not exist, or be empty)"
    )
    parser.add_argument(
        "--crowd",
        choices=CROWD_POLICIES,
        default="keep",
        help="crowd annotations: keep as boxes of their category, drop them, or "
        "leave their images out",
    )
    parser.add_argument(
        "--min-images",
        type=int,
        default=1,
        metavar="N",
        help="keep classes dominant in at least N images of the first split",
    )
    parser.add_argument(
        "--symlink", action="store_true", help="symlink the images instead of copying them"
    )
    return parser


def run_tool(args: argparse.Namespace) -> None:
    splits = coco_split_sources(args.coco_root) if args.coco_root else args.split
    coco_to_imagenet(
        splits,
        args.out,
        crowd=args.crowd,
        min_images=args.min_images,
        link="symlink" if args.symlink else "copy",
    )  # logs each split's summary
    logger.info("wrote %s (classes.json, conversion.json)", args.out)


def main(argv: list[str] | None = None) -> int:
    return run(run_tool, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
