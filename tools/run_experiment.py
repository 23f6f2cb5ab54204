#!/usr/bin/env python
"""Run a whole experiment from its plan: pretrain the arms, evaluate, transfer, convert, fine-tune,
compare.

    python tools/run_experiment.py --plan configs/experiments/paper_r50.yaml --dry-run
    python tools/run_experiment.py --plan configs/experiments/paper_r50.yaml  # this machine
    python tools/run_experiment.py --plan configs/experiments/paper_r50.yaml --launcher slurm \\
        --partition gpu --account lab  # with --dry-run: each job's sbatch options
    python tools/run_experiment.py --plan configs/experiments/demo.yaml \\
        --seeds 3  # `make demo SEEDS=3`
    python tools/run_experiment.py --plan configs/experiments/demo.yaml --out demo_t1 \\
        --threads 1  # two stages side by side on 2 CPUs (the plan's: 2 threads, one at a time)

Finished stages are reused (fingerprint of command and inputs), interrupted trainings resume from
their checkpoint, and a failed stage stops only the stages that need it. Run the same command
again after a failure or an interruption: only what is left runs. Here (`local`), stages whose
dependencies are done run side by side while their threads fit in the CPUs (`--cpus`); each line
of their output shows the stage's name, and each stage's log holds all of it. Before anything is
launched a pre-flight check (data roots, GPUs, torch and detectron2 builds, disk) lists what the
plan needs and refuses on a problem (`--skip-preflight` launches anyway). A finished stage that
another code revision ran (als_det.revision) is reused with a warning naming it;
--rerun-other-revisions runs it again.
"""

from __future__ import annotations

import argparse
import logging
import sys

import _setup_hint  # noqa: F401  (first: a hint when als_det is missing)

from als_det.cli import argument_parser, run
from als_det.experiment.plan import load_plan
from als_det.experiment.runner import LAUNCHERS, dry_run, run_experiment

logger = logging.getLogger("als_det.tools.run_experiment")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argument_parser(__doc__)
    parser.add_argument(
        "--plan", required=True, metavar="FILE", help="experiment plan (YAML, configs/experiments/)"
    )
    parser.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="local",
        help="local: every stage here, side by side within --cpus; slurm: one job per stage "
        "(submitit, afterok dependencies); submitit-local: submitit jobs on this machine",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print every command with its resources"
    )
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="output folder (default: the plan's `out`)"
    )
    parser.add_argument(
        "--seeds",
        type=positive_int,
        default=None,
        metavar="N",
        help="seeds 0..N-1 instead of the plan's",
    )
    for option in ("partition", "account"):
        parser.add_argument(
            f"--{option}",
            default=None,
            help=f"slurm: the SLURM {option} of every job (instead of the plan's slurm.{option}"
            + ("; a stage's own resources.partition still wins)" if option == "partition" else ")"),
        )
    parser.add_argument(
        "--skip-preflight",
        action="store_true",
        help="launch even when the pre-flight check (data roots, GPUs, torch, detectron2, disk) "
        "finds a problem",
    )
    parser.add_argument(
        "--rerun-other-revisions",
        action="store_true",
        help="run again the finished stages that another code revision ran (by default they are "
        "reused, with a warning naming them)",
    )
    parser.add_argument(
        "--cpus",
        type=positive_int,
        default=None,
        metavar="N",
        help="local: run stages side by side while their threads fit in N CPUs (default: the "
        "CPUs this process may use)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="T",
        help="local: threads per process of every stage, recorded in its records (default: "
        "$OMP_NUM_THREADS when set, else each stage's resources.cpus_per_proc)",
    )
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="slurm: submit and return; run the command again to follow the jobs",
    )
    return parser


def run_tool(args: argparse.Namespace) -> int:
    plan = load_plan(args.plan).with_changes(
        out=args.out,
        seeds=None if args.seeds is None else list(range(args.seeds)),
        slurm={k: getattr(args, k) for k in ("partition", "account") if getattr(args, k)},
    )
    if args.dry_run:
        print(dry_run(plan, args.launcher))
        return 0
    try:
        outcome = run_experiment(
            plan,
            args.launcher,
            wait=not args.no_wait,
            check=not args.skip_preflight,
            rerun_other_revisions=args.rerun_other_revisions,
            cpus=args.cpus,
            threads=args.threads,
        )
    except KeyboardInterrupt:
        logger.warning("interrupted; run the same command again to go on from here")
        return 130
    return 0 if outcome.ok or (args.no_wait and not outcome.failed) else 1


def main(argv: list[str] | None = None) -> int:
    return run(run_tool, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
