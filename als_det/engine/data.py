"""The pretraining data: the demo data generated if asked, train and val indexed (val with train's
classes), their datasets and loaders (a distributed sampler that drops the tail; val sharded
without padding so every image counts once), decoded where DATA.DECODE says."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from fvcore.common.config import CfgNode
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler

from als_det.data.boxes import ImageRecord, IndexReport, build_index, index_cache_dir
from als_det.data.crops import coverage as box_coverage
from als_det.data.dali_decode import DALI_FALLBACK_NAMES, DaliDecoder, require_dali
from als_det.data.device_decode import (
    FALLBACK_NAMES,
    DeviceDecodedLoader,
    DeviceDecoder,
    EncodedImageNetBoxes,
)
from als_det.data.generated import generate
from als_det.data.imagenet import ImageNetBoxes
from als_det.data.pack import is_packed
from als_det.engine.distributed import DistInfo, all_reduce_sum, barrier


@dataclass
class DataBundle:
    train_set: ImageNetBoxes
    val_set: ImageNetBoxes
    classes: list[str]
    reports: dict[str, IndexReport]
    box_area: float  # mean over train images with boxes of area(union(boxes)) / image area


def mean_box_area(records: list[ImageRecord]) -> float:
    """Mean coverage of the whole image by the labelled boxes, over images that have boxes."""
    areas = [
        box_coverage(r.boxes, (0.0, 0.0, float(r.width), float(r.height)))
        for r in records
        if len(r.boxes)
    ]
    return float(np.mean(areas)) if areas else float("nan")


def build_data(cfg: CfgNode, info: DistInfo, out_dir: Path) -> DataBundle:
    """Generate the demo data if asked, index train and val (val with train's classes), build
    datasets.

    Rank 0 generates and indexes first (writing the caches); the other ranks then read them.
    """
    root = Path(cfg.DATA.ROOT)
    for turn in ("main", "others"):
        if (turn == "main") == info.is_main:
            if cfg.DATA.GENERATE:
                generate(root, cfg.DATA.GEN)
            split = cfg.DATA.TRAIN_SPLIT
            if not (root / split).is_dir() and not is_packed(root, split):
                raise FileNotFoundError(
                    f"DATA.ROOT {root} has no '{split}' folder nor {split}.pack "
                    "(set DATA.GENERATE True to make the demo data there)"
                )
            cache = index_cache_dir(cfg.DATA.ROOT, out_dir / "index_cache", cfg.DATA.CACHE_DIR)
            train_records, classes, train_report = build_index(
                root,
                cfg.DATA.TRAIN_SPLIT,
                boxes=cfg.DATA.TRAIN_BOXES,
                strict=cfg.DATA.STRICT,
                cache_dir=cache,
                max_per_class=cfg.DATA.MAX_PER_CLASS,
            )
            val_records, _, val_report = build_index(
                root,
                cfg.DATA.VAL_SPLIT,
                boxes=cfg.DATA.VAL_BOXES,
                val_labels=cfg.DATA.VAL_LABELS,
                strict=cfg.DATA.STRICT,
                cache_dir=cache,
                max_per_class=cfg.DATA.MAX_PER_CLASS,
                classes=classes,
            )
        barrier()
    kw = dict(image_size=cfg.DATA.IMAGE_SIZE, seed=cfg.SEED, strict=cfg.DATA.STRICT)
    train_set = ImageNetBoxes(
        train_records,
        classes,
        train=True,
        scale=tuple(cfg.DATA.CROP_SCALE),
        ratio=tuple(cfg.DATA.CROP_RATIO),
        **kw,
    )
    val_set = ImageNetBoxes(val_records, classes, train=False, val_resize=cfg.DATA.VAL_RESIZE, **kw)
    return DataBundle(
        train_set,
        val_set,
        classes,
        {"train": train_report, "val": val_report},
        mean_box_area(train_records),
    )


def build_loaders(
    cfg: CfgNode, data: DataBundle, info: DistInfo
) -> tuple[DataLoader, DistributedSampler, DataLoader]:
    """(train loader, its sampler, val loader of this rank's shard)."""
    sampler = DistributedSampler(
        data.train_set,
        num_replicas=info.world_size,
        rank=info.rank,
        shuffle=True,
        seed=cfg.SEED,
        drop_last=True,
    )
    if len(sampler) < cfg.SOLVER.BATCH_SIZE:
        raise ValueError(
            f"the train split has {len(sampler)} images per process, fewer than "
            f"SOLVER.BATCH_SIZE={cfg.SOLVER.BATCH_SIZE}"
        )
    common = dict(
        batch_size=cfg.SOLVER.BATCH_SIZE,
        num_workers=cfg.DATA.NUM_WORKERS,
        pin_memory=info.device.type == "cuda",
    )
    check_decode(cfg)
    device_decode = cfg.DATA.DECODE in ("device", "dali")
    train_set, val_set = data.train_set, data.val_set
    if device_decode:
        train_set, val_set = EncodedImageNetBoxes(train_set), EncodedImageNetBoxes(val_set)
        common["collate_fn"] = EncodedImageNetBoxes.collate
    # persistent_workers stays off: workers must pick up the dataset's set_epoch each epoch.
    train_loader = DataLoader(train_set, sampler=sampler, drop_last=True, **common)
    shard = Subset(val_set, range(info.rank, len(val_set), info.world_size))
    val_loader = DataLoader(shard, shuffle=False, drop_last=False, **common)
    if device_decode:
        channels_last = bool(cfg.TRAIN.CHANNELS_LAST)
        if cfg.DATA.DECODE == "dali":
            dali = dict(batch_size=cfg.SOLVER.BATCH_SIZE, num_threads=cfg.DATA.NUM_WORKERS)
            decode = (
                DaliDecoder(s, info.device, channels_last, **dali)
                for s in (data.train_set, data.val_set)
            )
        else:
            decode = (
                DeviceDecoder(s, info.device, channels_last) for s in (data.train_set, data.val_set)
            )
        train_loader, val_loader = (
            DeviceDecodedLoader(loader, dec)
            for loader, dec in zip((train_loader, val_loader), decode)
        )
    return train_loader, sampler, val_loader


def check_decode(cfg: CfgNode) -> None:
    """DATA.DECODE dali needs NVIDIA DALI; checked before a run writes anything."""
    if cfg.DATA.DECODE == "dali":
        require_dali()


def fallback_names(decode: str) -> tuple[str, ...]:
    """The counted fallbacks of a decode path (none on `workers`)."""
    return {"device": FALLBACK_NAMES, "dali": DALI_FALLBACK_NAMES}.get(decode, ())


def decode_fallbacks(*loaders: object) -> dict[str, int]:
    """The fallbacks of `DATA.DECODE device` or `dali` since the last call, summed over `loaders`
    and every rank ({} on the workers path). Every rank must call it."""
    decoders = [lo.decoder for lo in loaders if isinstance(lo, DeviceDecodedLoader)]
    if not decoders:
        return {}
    names = list(decoders[0].names)
    counts = [d.take_counts() for d in decoders]
    totals = torch.tensor([float(sum(c[n] for c in counts)) for n in names], dtype=torch.float64)
    device = decoders[0].device
    totals = totals.to(device)
    all_reduce_sum(totals)
    return {n: int(v) for n, v in zip(names, totals.tolist())}
