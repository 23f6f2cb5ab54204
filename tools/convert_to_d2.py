#!/usr/bin/env python
"""Convert a torchvision ResNet checkpoint to a detectron2 backbone .pkl (optionally verified).

    python tools/convert_to_d2.py output/pretrain/demo_als/last.pth pretrained/demo_als.pkl --verify

--verify builds the detectron2 backbone, loads the .pkl through DetectionCheckpointer and compares
its features with the torchvision model's.
"""

from __future__ import annotations

import json
import logging
import sys

import _setup_hint  # noqa: F401  (first: a hint when als_det is missing)

from als_det.cli import argument_parser, run
from als_det.convert import convert_file
from als_det.detection.verify import DEFAULT_VERIFY_CONFIG, VerificationFailed, convert_verified

logger = logging.getLogger("als_det.tools.convert_to_d2")


def build_parser():
    parser = argument_parser(__doc__)
    parser.add_argument(
        "input",
        help="torchvision ResNet .pth: a state_dict or a dict with 'model'/'state_dict' "
        "(read with torch.load(weights_only=True))",
    )
    parser.add_argument("output", help="detectron2 .pkl to write (atomically)")
    parser.add_argument("--force", action="store_true", help="replace an existing OUTPUT")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="load the file into a detectron2 model through DetectionCheckpointer and "
        "compare res2..res5 with torchvision; OUTPUT is written only if it passes",
    )
    parser.add_argument(
        "--config-file",
        default=str(DEFAULT_VERIFY_CONFIG),
        metavar="FILE",
        help="detectron2 config to verify in (FPN or C4; depth is set from INPUT)",
    )
    parser.add_argument(
        "--verify-size",
        type=int,
        default=224,
        metavar="PIXELS",
        help="random input size for --verify",
    )
    parser.add_argument(
        "--unsafe-load",
        action="store_true",
        help="allow full unpickling of a trusted INPUT that weights_only=True refuses "
        "(it can run code; recorded in OUTPUT's metadata)",
    )
    return parser


def run_tool(args) -> int:
    try:
        if args.verify:
            result = convert_verified(
                args.input,
                args.output,
                args.force,
                config_file=args.config_file,
                input_size=args.verify_size,
                unsafe_load=args.unsafe_load,
            )
        else:
            result = convert_file(args.input, args.output, args.force, unsafe_load=args.unsafe_load)
    except VerificationFailed as err:
        logger.error("%s\nverification failed: %s was not written", err, args.output)
        return 1
    meta = result["als_det"]
    logger.info(
        f"wrote {result['output']}: resnet{meta['depth']}, {result['num_tensors']} tensors, "
        f"source sha256 {meta['source_sha256'][:12]}, label strategy "
        f"{json.dumps(meta.get('label_strategy', 'unknown'))}"
        + (" (INPUT read with full unpickling: --unsafe-load)" if meta["unsafe_load"] else "")
    )
    if result["verify"] is not None:
        v = result["verify"]
        logger.info(
            f"verified: loaded {v['loaded_tensors']}/{v['expected_tensors']} backbone tensors, "
            f"max abs difference {v['max_diff']:.3g} (< {v['tolerance']:g})"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(run_tool, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
