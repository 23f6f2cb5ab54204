#!/usr/bin/env python
"""Pretrain one ResNet arm (hard | ls | als | cutmix | mixup; docs/als.md).

    python tools/pretrain.py --config-file configs/pretrain/demo_als.yaml
    python tools/pretrain.py --config-file configs/pretrain/demo_als.yaml \\
        DATA.ROOT ../shared/data/tiny-imagenet-10 DATA.GENERATE False
    python tools/pretrain.py --resume \\
        --config-file configs/pretrain/demo_als.yaml   # from OUTPUT_DIR/last.pth
    python tools/pretrain.py --resume --allow-config-change \\
        --config-file configs/pretrain/demo_als.yaml SOLVER.EPOCHS 12
    torchrun --nproc_per_node 8 tools/pretrain.py \\
        --config-file configs/pretrain/imagenet_r50_als.yaml

Options go before the trailing KEY VALUE config overrides.
"""

from __future__ import annotations

import sys

import _setup_hint  # noqa: F401  (first: a hint when als_det is missing)

from als_det.cli import argument_parser, run
from als_det.config import load_config
from als_det.engine.trainer import train


def build_parser():
    parser = argument_parser(__doc__, config="required")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in OUTPUT_DIR from its last.pth (a flag: a checkpoint "
        "path goes in --resume-from)",
    )
    parser.add_argument(
        "--resume-from",
        metavar="PATH",
        default=None,
        help="continue from this checkpoint instead of OUTPUT_DIR/last.pth (implies --resume)",
    )
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="with --resume: continue although the config's experiment differs from the "
        "checkpoint's (each change is recorded in OUTPUT_DIR/run.json)",
    )
    return parser


def run_tool(args) -> None:
    resume = args.resume_from or ("last" if args.resume else None)
    if args.allow_config_change and not resume:
        raise ValueError("--allow-config-change only applies with --resume")
    train(
        load_config(args.config_file, args.opts),
        resume=resume,
        allow_config_change=args.allow_config_change,
    )


def main(argv: list[str] | None = None) -> int:
    return run(run_tool, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
