"""The Backgrounds Challenge's ImageNet-9 test sets (Xiao et al. 2020, "Noise or Signal").

Layout, as released (github.com/MadryLab/backgrounds_challenge): `ROOT/<variant>/val/<class>/*`
for the variants in `IN9_VARIANTS`, with the same 9 class folders (`00_dog` ... `08_insect`) in
each; a class's index is its position in the sorted folder names (torchvision `ImageFolder`).

Scoring follows the challenge's `eval_model` exactly: the prediction is the argmax over all of
the model's outputs; a 9-class model's prediction is the IN-9 class itself; any other model's
prediction index goes through the user's `in_to_in9.json` (`{"<output index>": <IN-9 index or
-1>}`), and a prediction mapped to -1 counts as wrong. Accuracy is over every image of the variant
(undecodable files are counted and reported, not silently dropped). BG-Gap = accuracy on
mixed_same - accuracy on mixed_rand.

Inputs: the challenge feeds its 224 x 224 images unchanged (`ToTensor`) and normalises with the
model's own mean/std; here a model whose input size differs sees the whole image resized to its
input size (no crop, so no part of the foreground is cut away).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.functional as TF
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from als_det.analysis.context import Preprocessing
from als_det.analysis.evaluate import EvalOptions
from als_det.analysis.models import EvaluationInputError, LoadedModel, load_models
from als_det.data.images import BadImageError, load_rgb
from als_det.engine.distributed import DistInfo, all_gather_objects, init_distributed
from als_det.io import sha256_file
from als_det.logger import setup_logging
from als_det.output_dir import check_output_folder
from als_det.revision import code_revision
from als_det.versions import package_versions

logger = logging.getLogger(__name__)

IN9_VARIANTS = (
    "original",
    "only_bg_b",
    "only_bg_t",
    "no_fg",
    "only_fg",
    "mixed_same",
    "mixed_rand",
    "mixed_next",
)
NUM_CLASSES = 9
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# torchvision's ResNet-50, from the challenge's README ("Test Accuracy Results on ImageNet-9").
REFERENCE = {
    "model": "torchvision ResNet-50 (Xiao et al. 2020)",
    "accuracy": {"original": 0.956, "mixed_same": 0.862, "mixed_rand": 0.789},
    "bg_gap": 0.073,
}


def is_in9_layout(root: str | Path) -> bool:
    """True when `root` holds the challenge's `<variant>/val/` folders (at least `original`)."""
    return (Path(root) / "original" / "val").is_dir()


def in9_classes(root: Path) -> list[str]:
    """The 9 class folder names of `original/val`, sorted (their index is the IN-9 label)."""
    return sorted(p.name for p in (root / "original" / "val").iterdir() if p.is_dir())


def list_variant(root: Path, variant: str, classes: Sequence[str]) -> list[tuple[str, int]]:
    """(path, IN-9 label) for every image of `variant`; its class folders must be `classes`."""
    val = root / variant / "val"
    folders = sorted(p.name for p in val.iterdir() if p.is_dir())
    if folders != list(classes):
        raise EvaluationInputError(
            f"{val}: class folders {folders} differ from original/val's {list(classes)}"
        )
    return [
        (str(p), k)
        for k, c in enumerate(classes)
        for p in sorted((val / c).iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES
    ]


def load_in9_mapping(path: str | Path, num_outputs: int) -> torch.Tensor:
    """`in_to_in9.json` as a LongTensor [num_outputs] of IN-9 indices (-1: no IN-9 class)."""
    raw = json.loads(Path(path).read_text())
    if not isinstance(raw, dict):
        raise EvaluationInputError(
            f"{path}: expected a JSON object {{\"<output index>\": <IN-9 index>}}"
        )
    keys = {str(i) for i in range(num_outputs)}
    if set(raw) != keys:
        missing, extra = sorted(keys - set(raw), key=int)[:5], sorted(set(raw) - keys)[:5]
        raise EvaluationInputError(
            f"{path} maps {len(raw)} outputs, the model has {num_outputs} "
            f"(missing e.g. {missing}, unexpected e.g. {extra})"
        )
    values = torch.tensor([int(raw[str(i)]) for i in range(num_outputs)], dtype=torch.long)
    if ((values < -1) | (values >= NUM_CLASSES)).any() or not (values >= 0).any():
        raise EvaluationInputError(f"{path}: values must be IN-9 indices 0-8 or -1, and not all -1")
    return values


def output_mapping(
    lm: LoadedModel, classes: Sequence[str], mapping_path: str | None
) -> torch.Tensor | None:
    """None for a model trained on the IN-9 classes themselves, else its output -> IN-9 map."""
    ck_classes = list(lm.ckpt["classes"])
    if ck_classes == list(classes):
        return None
    if not mapping_path:
        raise EvaluationInputError(
            f"{lm.path}: its {len(ck_classes)} classes are not the IN-9 folders "
            f"{list(classes)}; pass --in-to-in9 in_to_in9.json (the challenge's mapping)"
        )
    return load_in9_mapping(mapping_path, int(lm.ckpt["num_classes"]))


class In9Images(Dataset):
    """`(input, label, position)` per image; undecodable files come back with label -1."""

    def __init__(
        self, items: Sequence[tuple[str, int]], prep: Preprocessing, positions: Sequence[int]
    ) -> None:
        self.items, self.prep, self.positions = items, prep, list(positions)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        pos = self.positions[i]
        path, label = self.items[pos]
        size = self.prep.image_size
        try:
            img = load_rgb(path)
        except BadImageError:
            logger.warning("undecodable image %s: counted, left out", path)
            return torch.zeros(3, size, size), -1, pos
        if img.size != (size, size):
            img = TF.resize(img, [size, size], antialias=True)
        x = TF.normalize(
            TF.to_tensor(img), [m / 255 for m in self.prep.mean], [s / 255 for s in self.prep.std]
        )
        return x, label, pos


@torch.no_grad()
def score_variant(
    lm: LoadedModel,
    items: Sequence[tuple[str, int]],
    mapping: torch.Tensor | None,
    opts: EvalOptions,
    info: DistInfo,
    desc: str,
) -> dict[str, Any]:
    """Accuracy (the challenge's rule), mean max-softmax confidence, predictions outside IN-9."""
    ds = In9Images(items, lm.prep, range(info.rank, len(items), info.world_size))
    loader = DataLoader(ds, batch_size=opts.batch_size, num_workers=opts.workers, shuffle=False)
    model = lm.model.to(info.device).eval()
    labels, preds, confs = [], [], []
    for x, y, _ in tqdm(
        loader, desc=desc, disable=not (opts.progress and info.is_main), leave=False
    ):
        probs = model(x.to(info.device)).float().softmax(1).cpu()
        conf, pred = probs.max(1)
        labels.append(y)
        preds.append(pred if mapping is None else mapping[pred])
        confs.append(conf)
    local = [
        torch.cat(t) if t else torch.zeros(0, dtype=dtype)
        for t, dtype in ((labels, torch.long), (preds, torch.long), (confs, torch.float32))
    ]
    y, pred, conf = (torch.cat([p[i] for p in all_gather_objects(local)]) for i in range(3))
    ok = y >= 0
    n = int(ok.sum())
    if n == 0:
        return {"n": 0, "undecodable": int((~ok).sum())}
    y, pred, conf = y[ok].long(), pred[ok].long(), conf[ok]
    return {
        "n": n,
        "undecodable": int((~ok).sum()),
        "accuracy": float((pred == y).double().mean()),
        "mean_confidence": float(conf.double().mean()),
        "predicted_outside_in9": float((pred < 0).double().mean()),
        "per_class_accuracy": [
            float((pred[y == k] == k).double().mean()) if (y == k).any() else None
            for k in range(NUM_CLASSES)
        ],
    }


def evaluate_in9(
    checkpoints: Sequence[str],
    data_root: str,
    out_dir: str,
    names: Sequence[str] | None = None,
    in_to_in9: str | None = None,
    opts: EvalOptions | None = None,
    args: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Every checkpoint on every IN-9 variant present: in9_metrics.json's content on rank 0 (None on
    the others); `report.backgrounds.write_in9_report` writes it with in9_report.md."""
    start = time.perf_counter()
    opts = opts or EvalOptions()
    root = Path(data_root)
    check_output_folder(out_dir, "--out")
    if not is_in9_layout(root):
        raise FileNotFoundError(f"{root} is not an ImageNet-9 tree: no {root / 'original' / 'val'}")
    classes = in9_classes(root)
    if len(classes) != NUM_CLASSES:
        raise EvaluationInputError(
            f"{root / 'original' / 'val'} has {len(classes)} class folders, IN-9 has {NUM_CLASSES}"
        )
    variants = [v for v in IN9_VARIANTS if (root / v / "val").is_dir()]
    missing = [v for v in IN9_VARIANTS if v not in variants]
    info = init_distributed(opts.device)
    models = load_models(checkpoints, names)
    mappings = {lm.name: output_mapping(lm, classes, in_to_in9) for lm in models}
    items = {v: list_variant(root, v, classes) for v in variants}
    setup_logging(out_dir, info.rank)
    results: dict[str, Any] = {}
    for lm in models:
        scores = {
            v: score_variant(lm, items[v], mappings[lm.name], opts, info, f"{lm.name} {v}")
            for v in variants
        }
        same, rand = (
            scores.get("mixed_same", {}).get("accuracy"),
            scores.get("mixed_rand", {}).get("accuracy"),
        )
        results[lm.name] = {
            "checkpoint": {
                "path": str(Path(lm.path).resolve()),
                "sha256": sha256_file(lm.path),
                "arch": lm.ckpt["arch"],
                "num_classes": int(lm.ckpt["num_classes"]),
                "epoch": int(lm.ckpt["epoch"]),
                "image_size": lm.prep.image_size,
            },
            "label_strategy": lm.ckpt["label_strategy"],
            "output_mapping": "IN-9 classes"
            if mappings[lm.name] is None
            else str(Path(in_to_in9).resolve()),
            "variants": scores,
            "bg_gap": None if same is None or rand is None else same - rand,
        }
    if not info.is_main:
        return None
    return {
        "models": results,
        "reference": REFERENCE,
        "data": {
            "root": str(root.resolve()),
            "classes": classes,
            "variants": variants,
            "missing": missing,
            "images": {v: len(items[v]) for v in variants},
            "world_size": info.world_size,
            "device": str(info.device),
        },
        "options": asdict(opts),
        "versions": package_versions(),
        "revision": code_revision(),
        "args": args or {},
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
