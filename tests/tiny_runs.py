"""What every tiny CPU training in the tests shares (pytest puts this folder on sys.path): the
generated data set's parameters, pretraining overrides, a hand-made COCO set, the fine-tuning
settings (the ResNet-18 backbones they start from are fixtures of conftest.py), and a tool run in
the test's own process."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def tool_module(name: str) -> dict[str, Any]:
    """tools/NAME.py's namespace (its `main`, `build_parser`, ...), loaded in this process."""
    return runpy.run_path(str(REPO / "tools" / f"{name}.py"))


def run_tool(name: str, argv: list[str]) -> int:
    """tools/NAME.py's main(argv) in this process: what `python tools/NAME.py ARGV` does, minus
    the interpreter start (importing torch and detectron2, seconds per process here). Its output
    goes to this process's stderr (capsys)."""
    return tool_module(name)["main"](argv)


# The generated data set at its smallest: 24 train / 9 val images of 3 classes, 16 pixels.
TINY_GEN = {
    "NUM_CLASSES": 3,
    "TRAIN_PER_CLASS": 8,
    "VAL_PER_CLASS": 3,
    "IMAGE_SIZE": 16,
    "DETECTION_TRAIN": 1,
    "DETECTION_VAL": 1,
    "DETECTION_IMAGE_SIZE": 32,
}


def tiny_data_overrides(root: str | Path, cache_dir: str | Path | None = None) -> list[str]:
    """Config overrides for a generated data set at 16-pixel crops, read in the main process."""
    opts = [
        "DATA.ROOT",
        str(root),
        "DATA.GENERATE",
        "False",
        "DATA.IMAGE_SIZE",
        "16",
        "DATA.VAL_RESIZE",
        "18",
        "DATA.NUM_WORKERS",
        "0",
    ]
    return opts if cache_dir is None else [*opts, "DATA.CACHE_DIR", str(cache_dir)]


def tiny_coco(root: Path, images=2, anns=None, cats=None, write_images=True) -> tuple[Path, Path]:
    """A hand-made COCO json with `images` 32x24 JPEGs; categories with non-contiguous ids."""
    img_dir = root / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    ims = [
        {"id": 100 + i, "file_name": f"{i}.jpg", "width": 32, "height": 24} for i in range(images)
    ]
    if write_images:
        for im in ims:
            Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(img_dir / im["file_name"])
    cats = cats if cats is not None else [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    anns = (
        anns
        if anns is not None
        else [
            {
                "id": 1,
                "image_id": 100,
                "category_id": 3,
                "bbox": [1, 2, 10, 8],
                "area": 80,
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": 100,
                "category_id": 7,
                "bbox": [5, 5, 0, 4],
                "area": 0,
                "iscrowd": 0,
            },
            {
                "id": 3,
                "image_id": 101,
                "category_id": 7,
                "bbox": [0, 0, 20, 20],
                "area": 400,
                "iscrowd": 1,
            },
        ]
    )
    js = root / "instances.json"
    js.write_text(json.dumps({"images": ims, "annotations": anns, "categories": cats}))
    return js, img_dir


# The preprocessing of a torchvision backbone, as a pretraining checkpoint records it.
TORCHVISION_PRE = {
    "input_format": "RGB",
    "pixel_mean": [123.675, 116.28, 103.53],
    "pixel_std": [58.395, 57.12, 57.375],
    "image_size": 64,
}

DETECTION_DEMO = str(REPO / "configs/detection/faster_rcnn_R_18_FPN_demo.yaml")
# Detection overrides for a fine-tune of a few iterations on 64-pixel images.
FINETUNE_TINY = [
    "SOLVER.IMS_PER_BATCH",
    "1",
    "SOLVER.BASE_LR",
    "0.001",
    "SOLVER.WARMUP_ITERS",
    "1",
    "INPUT.MIN_SIZE_TRAIN",
    "(64,)",
    "INPUT.MAX_SIZE_TRAIN",
    "96",
    "INPUT.MIN_SIZE_TEST",
    "64",
    "INPUT.MAX_SIZE_TEST",
    "96",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "20",
    "TEST.DETECTIONS_PER_IMAGE",
    "10",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "0.0",
    "DATALOADER.NUM_WORKERS",
    "0",
    "SEED",
    "5",
]


def finetune(*argv: str, config: str = DETECTION_DEMO) -> dict[str, Any]:
    """`tools/finetune_coco.py`'s run in this process: its results dict."""
    from als_det.detection.command_line import finetune_argument_parser
    from als_det.detection.trainer import run_finetune

    return run_finetune(finetune_argument_parser().parse_args(["--config-file", config, *argv]))
