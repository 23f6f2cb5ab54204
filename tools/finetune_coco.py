#!/usr/bin/env python
"""Fine-tune a detector (detectron2) from a converted pretrained backbone; writes results.json.

    python tools/finetune_coco.py --config-file configs/detection/faster_rcnn_R_18_FPN_demo.yaml \\
        MODEL.WEIGHTS pretrained/demo_als.pkl OUTPUT_DIR output/finetune/demo_als
    python tools/finetune_coco.py --coco-root /data/coco --num-gpus 8 \\
        --config-file configs/detection/faster_rcnn_R_50_FPN_1x.yaml \\
        MODEL.WEIGHTS pretrained/r50_als.pkl OUTPUT_DIR output/finetune/r50_als
    torchrun --nproc_per_node 8 tools/finetune_coco.py --coco-root /data/coco \\
        --config-file configs/detection/faster_rcnn_R_50_FPN_1x.yaml \\
        MODEL.WEIGHTS pretrained/r50_als.pkl OUTPUT_DIR output/finetune/r50_als

Options go before the trailing KEY VALUE config overrides. Without CUDA, --num-gpus N starts N CPU
processes (gloo) that train as one job; under torchrun its processes are the job (no --num-gpus).

MODEL.WEIGHTS must be a .pkl from tools/convert_to_d2.py (or a detectron2 checkpoint); every
backbone tensor must come from it unless --allow-random-backbone, and its tensors must be the
ones its conversion recorded unless --allow-modified-weights. Weight files are read without
full unpickling unless --unsafe-load.

--resume continues OUTPUT_DIR's last checkpoint, the same experiment only (config, seed, train
data); a deliberate change needs --allow-config-change and is recorded in results.json:

    python tools/finetune_coco.py --resume --allow-config-change \
        --config-file output/finetune/demo_als/config.yaml SOLVER.MAX_ITER 600
"""

import sys

import _setup_hint  # noqa: F401  (first: a hint when als_det is missing)

from als_det.cli import run
from als_det.detection.command_line import finetune_argument_parser
from als_det.detection.trainer import launch_finetune


def build_parser():
    return finetune_argument_parser(__doc__)


def main(argv: list[str] | None = None) -> int:
    return run(launch_finetune, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
