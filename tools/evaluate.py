#!/usr/bin/env python
"""Evaluate pretrained checkpoints: classification, calibration, context-only views, where the
model looks.

    python tools/evaluate.py --checkpoint output/pretrain/demo_hard/last.pth \\
        --checkpoint output/pretrain/demo_als/last.pth --data datasets/context_bias \\
        --out output/evaluate
    torchrun --nproc_per_node 8 tools/evaluate.py \\
        --checkpoint output/pretrain/imagenet_r50_hard/last.pth \\
        --checkpoint output/pretrain/imagenet_r50_als/last.pth --data datasets/imagenet \\
        --out output/eval_r50

Writes DIR/metrics.json, DIR/report.md and PNG figures (reliability diagrams, bg_only confidence,
CAM grid).

An ImageNet-9 Backgrounds Challenge tree (ROOT/<variant>/val/<class>/*, variants original,
only_bg_b, only_bg_t, no_fg, only_fg, mixed_same, mixed_rand, mixed_next) is recognised by its
original/val folder: per-variant accuracy and BG-Gap go to DIR/in9_metrics.json and
DIR/in9_report.md.

    python tools/evaluate.py --checkpoint output/pretrain/imagenet_r50_als/last.pth \\
        --data datasets/bg_challenge --in-to-in9 datasets/bg_challenge/in_to_in9.json \\
        --out output/eval_r50_in9
"""

from __future__ import annotations

import sys

import _setup_hint  # noqa: F401  (first: a hint when als_det is missing)

from als_det.analysis.evaluate import EvalOptions
from als_det.cli import add_options, argument_parser, options_from_args, run
from als_det.evaluation import evaluate


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
        "--data",
        required=True,
        metavar="ROOT",
        help="data root (ImageNet layout with Annotation/<split>, or an ImageNet-9 tree)",
    )
    p.add_argument("--out", default="output/evaluate", metavar="DIR", help="output folder")
    p.add_argument(
        "--baseline",
        default=None,
        help="model name the context-reliance ratios divide by (default: hard if present, else "
        "the first)",
    )
    p.add_argument(
        "--in-to-in9",
        default=None,
        metavar="JSON",
        help="ImageNet-9 data: the challenge's in_to_in9.json, "
        "for models whose classes are not IN-9's",
    )
    add_options(p.add_argument_group("evaluation options"), EvalOptions)
    return p


def run_tool(args) -> None:
    evaluate(
        args.checkpoint,
        args.data,
        args.out,
        names=args.name,
        baseline=args.baseline,
        in_to_in9=args.in_to_in9,
        opts=options_from_args(EvalOptions, args),
        args=vars(args),
    )


def main(argv: list[str] | None = None) -> int:
    return run(run_tool, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
