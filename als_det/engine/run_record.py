"""What a pretraining run records about itself: the identity every checkpoint carries, run.json
(what actually ran) and the opening log line."""

from __future__ import annotations

import logging
from typing import Any

import torch
from fvcore.common.config import CfgNode

from als_det.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from als_det.engine.data import DataBundle, fallback_names
from als_det.engine.distributed import DistInfo
from als_det.engine.loops import emulated_bf16_warning
from als_det.revision import code_revision
from als_det.targets import LabelStrategy
from als_det.versions import package_versions

logger = logging.getLogger(__name__)


def run_record(
    cfg: CfgNode,
    info: DistInfo,
    data: DataBundle,
    strategy: LabelStrategy,
    amp: str,
    channels_last: bool,
    resumes: list[dict[str, Any]],
) -> dict[str, Any]:
    """run.json: what actually ran (device, intra-op threads, precision, memory format, compiler,
    decode path with its CPU fallbacks, updated each epoch), data and versions."""
    record = {
        "seed": cfg.SEED,
        "world_size": info.world_size,
        "device": str(info.device),
        "torch_threads": torch.get_num_threads(),
        "amp": amp,
        "channels_last": channels_last,
        "compile": "inductor" if cfg.TRAIN.COMPILE else False,
        "decode": cfg.DATA.DECODE,
        "label_strategy": strategy.to_dict(),
        "classes": data.classes,
        "index": {
            k: {
                "images": r.images,
                "with_boxes": r.with_boxes,
                "boxes": r.boxes,
                "skipped": {why: len(f) for why, f in r.skipped.items()},
            }
            for k, r in data.reports.items()
        },
        "train_mean_box_area": data.box_area,
        "resumes": resumes,
        "versions": package_versions(),
        "revision": code_revision(),
    }
    if fallback_names(cfg.DATA.DECODE):
        record["decode_fallbacks"] = dict.fromkeys(fallback_names(cfg.DATA.DECODE), 0)
    return record


def fallback_totals(history: list[dict[str, Any]], decode: str) -> dict[str, int]:
    """run.json's `decode_fallbacks`: each fallback of `DATA.DECODE device` or `dali` summed over
    the epochs of metrics.jsonl (a resumed run's earlier epochs included)."""
    return {name: sum(int(row.get(name, 0)) for row in history) for name in fallback_names(decode)}


def checkpoint_identity(
    cfg: CfgNode, data: DataBundle, strategy: LabelStrategy, world_size: int
) -> dict[str, Any]:
    """What every checkpoint of the run records besides its training state."""
    return {
        "arch": cfg.MODEL.ARCH,
        "num_classes": len(data.classes),
        "classes": data.classes,
        "label_strategy": strategy.to_dict(),
        "preprocessing": {
            "input_format": "RGB",
            "pixel_mean": [255.0 * m for m in IMAGENET_MEAN],
            "pixel_std": [255.0 * s for s in IMAGENET_STD],
            "image_size": cfg.DATA.IMAGE_SIZE,
        },
        "config": cfg.dump(),
        "seed": cfg.SEED,
        "world_size": world_size,
    }


def log_start(
    cfg: CfgNode,
    info: DistInfo,
    data: DataBundle,
    strategy: LabelStrategy,
    iters_per_epoch: int,
    amp: str,
    channels_last: bool,
) -> None:
    tr, va = data.reports["train"], data.reports["val"]
    logger.info(tr.summary())
    logger.info(va.summary())
    logger.info(
        f"train: {tr.images} images, {tr.with_boxes} with boxes "
        f"({100.0 * tr.with_boxes / max(1, tr.images):.1f}%), mean box area {data.box_area:.3f} of "
        f"the image; {len(data.classes)} classes; label strategy {strategy.name}; "
        f"{info.world_size} process(es) on {info.device}, global batch "
        f"{cfg.SOLVER.BATCH_SIZE * info.world_size}, {iters_per_epoch} iterations/epoch; precision "
        f"{'float32' if amp == 'none' else amp + ' autocast'}, channels_last {channels_last}"
    )
    slow = emulated_bf16_warning(amp, info.device)
    if slow:
        logger.warning(slow)
