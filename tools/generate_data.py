#!/usr/bin/env python
"""Generate the context-bias data set that a pretraining config's DATA.ROOT and DATA.GEN describe.

    python tools/generate_data.py --config-file configs/pretrain/demo_hard.yaml \\
        DATA.ROOT datasets/context_bias

Nothing happens when DATA.ROOT already holds a finished generation with the same parameters.
"""

from __future__ import annotations

import logging
import sys

import _setup_hint  # noqa: F401  (first: a hint when als_det is missing)

from als_det.cli import argument_parser, run
from als_det.config import load_config
from als_det.data.generated import generate

logger = logging.getLogger("als_det.tools.generate_data")


def build_parser():
    return argument_parser(
        __doc__, config="required", override_example="DATA.ROOT datasets/context_bias"
    )


def run_tool(args) -> None:
    cfg = load_config(args.config_file, args.opts)
    logger.info("generated data set at %s", generate(cfg.DATA.ROOT, cfg.DATA.GEN))


def main(argv: list[str] | None = None) -> int:
    return run(run_tool, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
