#!/usr/bin/env python
"""Compare fine-tuning runs by backbone label strategy: table with deltas + AP bar chart.

    python tools/compare.py output/finetune/hard output/finetune/ls output/finetune/als \
        [--baseline hard] [--format markdown|csv|latex] [--out output/compare]
"""
import argparse
import sys

from als_det.report.compare import FORMATS, ResultsError, run_compare

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="fine-tuning output folders (or their results.json files)")
    parser.add_argument("--baseline", default="hard", help="strategy the deltas refer to")
    parser.add_argument("--format", default="markdown", choices=list(FORMATS))
    parser.add_argument("--out", default="output/compare",
                        help="folder for the table, comparison.json and ap_by_strategy.png")
    args = parser.parse_args()
    try:
        print(run_compare(args.runs, args.baseline, args.format, args.out))
    except ResultsError as err:
        sys.exit(f"error: {err}")
