#!/usr/bin/env python
"""Generate the context-bias data set that a pretraining config's DATA.ROOT and DATA.GEN describe.

    python tools/generate_data.py --config configs/pretrain/demo_hard.yaml --opts DATA.ROOT datasets/context_bias

Nothing happens when DATA.ROOT already holds a finished generation with the same parameters.
"""
from __future__ import annotations

import argparse

from als_det.config import load_config
from als_det.data.generated import ensure_generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="pretraining YAML config (DATA.ROOT, DATA.GEN)")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE", help="config overrides")
    args = parser.parse_args()
    cfg = load_config(args.config, args.opts)
    print(f"generated data set at {ensure_generated(cfg.DATA.ROOT, cfg.DATA.GEN)}")


if __name__ == "__main__":
    main()
