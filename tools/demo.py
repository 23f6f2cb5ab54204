#!/usr/bin/env python
"""`make demo`: the whole suite end to end on the generated data set (no data, no network).

    python tools/demo.py [--seeds 1] [--out demo_output]

Generates the context-bias data set, pretrains the hard, ls and als arms, evaluates them in one
report, converts each backbone to detectron2 (verified), fine-tunes Faster R-CNN from each, compares
the detectors, and writes demo_output/report.md. A second run reuses the stages that finished.
"""
import argparse
from pathlib import Path

from als_det.pipeline import (SMOKE_DETECTION_OPTS, SMOKE_EVAL_ARGS, SMOKE_PRETRAIN_OPTS, DemoPlan,
                              run_demo)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=1, help="repeat each arm over this many seeds (0, 1, ...)")
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="where everything lands")
    parser.add_argument("--smoke", action="store_true",
                        help="every stage for a few iterations only (checks the hand-offs, not the science)")
    args = parser.parse_args()
    plan = DemoPlan(out=args.out, seeds=tuple(range(args.seeds)))
    if args.smoke:
        plan.pretrain_opts, plan.detection_opts, plan.eval_args = (
            list(SMOKE_PRETRAIN_OPTS), list(SMOKE_DETECTION_OPTS), list(SMOKE_EVAL_ARGS))
    run_demo(plan)
