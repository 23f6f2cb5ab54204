#!/usr/bin/env python
"""Compare fine-tuning runs by backbone label strategy: table with deltas + AP bar chart.

    python tools/compare.py output/finetune/demo_hard output/finetune/demo_ls \\
        output/finetune/demo_als [--baseline hard] [--format markdown|csv|latex] \\
        [--out output/compare]

The table goes to stdout (to paste or pipe); the files it wrote are logged.
"""

import sys

import _setup_hint  # noqa: F401  (first: a hint when als_det is missing)

from als_det.cli import argument_parser, run
from als_det.report.compare import FORMATS
from als_det.report.compare_output import run_compare


def build_parser():
    parser = argument_parser(__doc__)
    parser.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="fine-tuning output folders (or their results.json files)",
    )
    parser.add_argument("--baseline", default="hard", help="strategy the deltas refer to")
    parser.add_argument("--format", default="markdown", choices=list(FORMATS), help="table format")
    parser.add_argument(
        "--out",
        default="output/compare",
        metavar="DIR",
        help="folder for the table, comparison.json and ap_by_strategy.png",
    )
    return parser


def run_tool(args) -> None:
    print(run_compare(args.runs, args.baseline, args.format, args.out))


def main(argv: list[str] | None = None) -> int:
    return run(run_tool, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
