#!/usr/bin/env python
"""Does a pretrained backbone transfer? Linear probe, k-NN and full fine-tuning on a downstream
classification set the backbones never saw, with paired bootstrap intervals between checkpoints.

    python tools/transfer.py --checkpoint output/pretrain/tiny_imagenet_hard/last.pth \\
        --checkpoint output/pretrain/tiny_imagenet_als/last.pth \\
        --data ../shared/data/tiny-imagenet-transfer --out output/transfer
    python tools/transfer.py --checkpoint A.pth --name hard --checkpoint B.pth --name als \\
        --data ROOT --out DIR --protocols linear_probe,knn

ROOT has the ImageNet layout (train/<class>/*, val/<class>/*). Writes DIR/transfer.json and
DIR/report.md; features and per-checkpoint results are cached in DIR/cache/, so a rerun resumes.
"""

from __future__ import annotations

import logging
import sys

import _setup_hint  # noqa: F401  (first: a hint when als_det is missing)

from als_det.analysis.transfer import TransferOptions, run_transfer
from als_det.cli import add_options, argument_parser, options_from_args, run
from als_det.report.transfer import write_transfer

logger = logging.getLogger("als_det.tools.transfer")


def build_parser():
    p = argument_parser(__doc__)
    p.add_argument(
        "--checkpoint", action="append", required=True, help="a pretraining checkpoint (repeat)"
    )
    p.add_argument(
        "--name",
        action="append",
        default=None,
        help="a model name per --checkpoint, in order (default: its label strategy)",
    )
    p.add_argument(
        "--data", required=True, metavar="ROOT", help="downstream data root (train/ and val/)"
    )
    p.add_argument("--out", default="output/transfer", metavar="DIR", help="output folder")
    p.add_argument(
        "--baseline",
        default=None,
        help="model name every other model is compared with (default: the first)",
    )
    add_options(p.add_argument_group("transfer options"), TransferOptions)
    return p


def run_tool(args) -> None:
    results = run_transfer(
        args.checkpoint,
        args.data,
        args.out,
        names=args.name,
        baseline=args.baseline,
        opts=options_from_args(TransferOptions, args),
        args=vars(args),
    )
    report = write_transfer(results, args.out)
    logger.info("wrote %s and transfer.json beside it (%.0f s)", report, results["wall_time_s"])


def main(argv: list[str] | None = None) -> int:
    return run(run_tool, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
