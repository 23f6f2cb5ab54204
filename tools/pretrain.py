#!/usr/bin/env python
"""Pretrain one ResNet arm (hard | ls | als | cutmix | mixup; docs/als.md).

    python tools/pretrain.py --config configs/pretrain/demo_als.yaml
    python tools/pretrain.py --config configs/pretrain/demo_als.yaml --opts DATA.ROOT ../shared/data/tiny-imagenet-10 DATA.GENERATE False
    python tools/pretrain.py --config configs/pretrain/demo_als.yaml --resume             # OUTPUT_DIR/last.pth
    python tools/pretrain.py --config configs/pretrain/demo_als.yaml --resume --allow-config-change --opts SOLVER.EPOCHS 12
    torchrun --nproc_per_node 8 tools/pretrain.py --config configs/pretrain/imagenet_r50_als.yaml

Config overrides are KEY VALUE pairs after --opts, or trailing; put a bare --resume last (or give it a path).
"""
from __future__ import annotations

import argparse

from als_det.config import load_config
from als_det.engine.trainer import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (may inherit with _BASE_)")
    parser.add_argument("--resume", nargs="?", const="last", default=None, metavar="PATH",
                        help="continue a run: OUTPUT_DIR/last.pth, or the checkpoint PATH")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="with --resume: continue although the config's experiment differs from the "
                             "checkpoint's (each change is recorded in OUTPUT_DIR/run.json)")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE", help="config overrides")
    args, extra = parser.parse_known_args()
    flags = [x for x in extra if x.startswith("--")]
    if flags:
        parser.error(f"unrecognised arguments: {' '.join(flags)}")
    if args.allow_config_change and not args.resume:
        parser.error("--allow-config-change only applies with --resume")
    train(load_config(args.config, args.opts + extra), resume=args.resume,
          allow_config_change=args.allow_config_change)


if __name__ == "__main__":
    main()
