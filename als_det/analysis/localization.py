"""Where a model looks: the share of its class activation map inside the labelled boxes, and the
CAM grid's data (images, boxes, one map per model) that `report.figures` draws."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from als_det.analysis.cam import compute_cams
from als_det.analysis.context import Preprocessing, centre_mask
from als_det.analysis.models import LoadedModel
from als_det.data.boxes import ImageRecord
from als_det.data.images import load_rgb
from als_det.io import atomic_savez

logger = logging.getLogger(__name__)


def cam_summary(
    res: dict[str, Any], records: Sequence[ImageRecord], prep: Preprocessing, method: str
) -> dict[str, Any]:
    """Mean fraction of positive CAM energy inside the labelled boxes, next to the boxes' share of
    the input (what a uniform map would score)."""
    has_box = torch.tensor(
        [len(records[int(p)].boxes) > 0 for p in res["positions"]], dtype=torch.bool
    )
    energy = res["energy"]
    valid = has_box & ~torch.isnan(energy)
    area = [
        float(
            centre_mask(
                prep.boxes_in_input(
                    records[int(p)].boxes, records[int(p)].width, records[int(p)].height
                ),
                prep.image_size,
            ).mean()
        )
        for p, ok in zip(res["positions"], valid.tolist())
        if ok
    ]
    return {
        "method": method,
        "n": int(valid.sum()),
        "mean_energy_inside_boxes": float(energy[valid].mean()) if valid.any() else None,
        "mean_box_area_fraction": float(np.mean(area)) if area else None,
        "skipped": {
            "no_box": int((~has_box).sum()),
            "no_positive_energy": int((has_box & torch.isnan(energy)).sum()),
        },
    }


def cam_grid(
    models: Sequence[LoadedModel],
    records: Sequence[ImageRecord],
    names: Sequence[str],
    grid_images: int,
    method: str,
    path: Path,
) -> dict[str, Any] | None:
    """The CAM grid's data: `grid_images` boxed val images spread over the index, each model's CAM
    of the labelled class and its prediction. Arrays go to `path` (.npz: `images` [R, S, S, 3]
    uint8, `boxes` [N, 5] (row, x0, y0, x1, y1) in input pixels, `cam_<i>` [R, S, S] per model);
    the returned entry (metrics.json's `cam_grid`) names the file and holds the captions: `rows`
    the class names, `files` the image stems."""
    boxed = [i for i, r in enumerate(records) if len(r.boxes)]
    if not boxed or not grid_images:
        return None
    picks = [
        boxed[i] for i in np.unique(np.linspace(0, len(boxed) - 1, grid_images).round().astype(int))
    ]
    prep = models[0].prep
    images, boxes, rows, files = [], [], [], []
    for row, p in enumerate(picks):
        rec = records[p]
        img = load_rgb(rec.path)
        images.append(np.asarray(prep.resize_crop(img)))
        boxes += [[row, *b] for b in prep.boxes_in_input(rec.boxes, *img.size).reshape(-1, 4)]
        rows.append(names[rec.label])
        files.append(Path(rec.path).stem)
    maps, titles = {}, {}
    for i, lm in enumerate(models):
        if lm.prep != prep:
            logger.warning(
                "%s uses another eval transform than %s; its CAM grid column uses its own crop",
                lm.name,
                models[0].name,
            )
        x = torch.stack([lm.prep.to_input(load_rgb(records[p].path)) for p in picks])
        y = torch.tensor([records[p].label for p in picks])
        device = next(lm.model.parameters()).device
        cams, logits = compute_cams(lm.model, x.to(device), y.to(device), method)
        conf, pred = logits.softmax(1).cpu().max(1)
        maps[f"cam_{i}"] = cams.cpu().numpy().astype(np.float32)
        titles[lm.name] = [f"pred {names[int(c)]} {float(q):.2f}" for c, q in zip(pred, conf)]
    atomic_savez(
        path,
        images=np.stack(images),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 5),
        **maps,
    )
    return {
        "data": path.name,
        "method": method,
        "models": [lm.name for lm in models],
        "rows": rows,
        "files": files,
        "titles": titles,
    }
