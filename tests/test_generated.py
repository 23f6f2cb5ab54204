"""The generated context-bias data set: layout, determinism, idempotence, the bias, COCO set."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

import als_det.data.generated as gen_mod
from als_det.config import get_cfg
from als_det.data.boxes import build_index
from als_det.data.generated import SPLITS, generate

SMALL = {
    "NUM_CLASSES": 4,
    "TRAIN_PER_CLASS": 12,
    "VAL_PER_CLASS": 5,
    "IMAGE_SIZE": 48,
    "DETECTION_TRAIN": 6,
    "DETECTION_VAL": 3,
    "DETECTION_IMAGE_SIZE": 96,
}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(
        tmp_path_factory.mktemp("gen") / "ctx", {**SMALL, "NO_BOX_FRACTION": 0.25}, progress=False
    )


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "generation.json"
    }


def test_layout_counts_and_index(small: Path, tmp_path: Path) -> None:
    meta = json.loads((small / "generation.json").read_text())
    classes = json.loads((small / "classes.json").read_text())
    assert list(classes) == [f"s{k:07d}" for k in range(4)]
    assert len(set(classes.values())) == 4 and all(" " in n for n in classes.values())
    assert meta["params"]["NUM_CLASSES"] == 4 and meta["seed"] == 0 and "versions" in meta
    for split in SPLITS:
        n = 12 if split == "train" else 5
        for wnid in classes:
            assert len(list((small / split / wnid).glob("*.JPEG"))) == n
    assert not (small / "Annotation" / "val_bg_only").exists()
    train, wnids, report = build_index(small, "train", cache_dir=tmp_path)
    assert wnids == list(classes) and report.images == 48 and not report.skipped
    assert 0 < report.with_boxes < 48  # NO_BOX_FRACTION withholds some XMLs
    assert report.with_boxes == meta["counts"]["train"]["xml"]
    for split in ("val", "val_mixed"):
        _, _, rep = build_index(small, split, cache_dir=tmp_path, classes=wnids)
        assert rep.with_boxes == rep.images == 20 and not rep.skipped
    _, _, rep = build_index(small, "val_bg_only", cache_dir=tmp_path, classes=wnids)
    assert rep.images == 20 and rep.with_boxes == 0
    first = Image.open(train[0].path)
    assert first.format == "JPEG" and first.size == (48, 48) and first.mode == "RGB"


def test_boxes_fit_the_drawn_object_and_spread_in_area(small: Path, tmp_path: Path) -> None:
    records, _, _ = build_index(small, "val", cache_dir=tmp_path)
    fractions = []
    for r in records:
        ((x0, y0, x1, y1),) = r.boxes
        fractions.append((x1 - x0) * (y1 - y0) / (48 * 48))
        assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 48
    assert min(fractions) < 0.08 and max(fractions) > 0.3


def test_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    cfg = {
        **SMALL,
        "TRAIN_PER_CLASS": 3,
        "VAL_PER_CLASS": 2,
        "DETECTION_TRAIN": 2,
        "DETECTION_VAL": 1,
    }
    a = _tree_digest(generate(tmp_path / "a", cfg, progress=False))
    b = _tree_digest(generate(tmp_path / "b", cfg, progress=False))
    c = _tree_digest(generate(tmp_path / "c", {**cfg, "SEED": 1}, progress=False))
    assert a == b
    images = [k for k in a if k.endswith((".JPEG", ".jpg"))]
    assert sum(a[k] != c[k] for k in images) == len(images)


def test_idempotent_regenerated_on_change_and_never_clobbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = {
        **SMALL,
        "TRAIN_PER_CLASS": 2,
        "VAL_PER_CLASS": 1,
        "DETECTION_TRAIN": 1,
        "DETECTION_VAL": 1,
    }
    root = generate(tmp_path / "g", cfg, progress=False)
    marker = root / "train" / "s0000000" / "s0000000_0.JPEG"
    mtime = marker.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("regenerated although the generation is finished")

    with monkeypatch.context() as m:
        m.setattr(gen_mod, "_write_classification", fail)
        assert generate(root, cfg, progress=False) == root
    assert marker.stat().st_mtime_ns == mtime
    # a crash mid-generation leaves the finished tree untouched and no temporary folder behind
    with monkeypatch.context() as m:
        m.setattr(
            gen_mod, "_write_detection", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom"))
        )
        with pytest.raises(RuntimeError, match="boom"):
            generate(root, {**cfg, "SEED": 5}, progress=False)
    assert json.loads((root / "generation.json").read_text())["seed"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]
    generate(root, {**cfg, "TRAIN_PER_CLASS": 3}, progress=False)
    assert len(list((root / "train" / "s0000000").glob("*.JPEG"))) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("do not delete")
    with pytest.raises(FileExistsError, match="mine"):
        generate(foreign, cfg, progress=False)
    with pytest.raises(KeyError, match="COLOURS"):
        generate(tmp_path / "x", {"COLOURS": 3}, progress=False)


def test_backgrounds_carry_the_class_context(tmp_path: Path) -> None:
    """With CONTEXT_RATE 1 a class's train backgrounds match its background-only images (by mean
    colour, nearest class), and with CONTEXT_RATE 0 no train image is on its own context."""
    cfg = {
        **SMALL,
        "NUM_CLASSES": 6,
        "TRAIN_PER_CLASS": 8,
        "VAL_PER_CLASS": 4,
        "DETECTION_TRAIN": 0,
        "DETECTION_VAL": 0,
        "MAX_AREA": 0.05,
        "CONTEXT_RATE": 1.0,
    }
    root = generate(tmp_path / "biased", cfg, progress=False)

    def mean_colour(split: str, wnid: str) -> np.ndarray:
        return np.mean(
            [
                np.asarray(Image.open(p), float).reshape(-1, 3).mean(0)
                for p in sorted((root / split / wnid).glob("*.JPEG"))
            ],
            axis=0,
        )

    wnids = sorted(json.loads((root / "classes.json").read_text()))
    train = np.stack([mean_colour("train", w) for w in wnids])
    bg = np.stack([mean_colour("val_bg_only", w) for w in wnids])
    nearest = np.linalg.norm(bg[:, None] - train[None], axis=2).argmin(1)
    assert list(nearest) == list(range(6))
    meta = json.loads((root / "generation.json").read_text())
    assert meta["counts"]["train"]["on_own_context"] == 48
    unbiased = generate(tmp_path / "unbiased", {**cfg, "CONTEXT_RATE": 0.0}, progress=False)
    assert (
        json.loads((unbiased / "generation.json").read_text())["counts"]["train"]["on_own_context"]
        == 0
    )


def test_coco_detection_set(small: Path) -> None:
    for split, n in (("train2017", 6), ("val2017", 3)):
        coco = COCO(str(small / "detection" / "annotations" / f"instances_{split}.json"))
        assert sorted(coco.getCatIds()) == [1, 2, 3, 4] and len(coco.getImgIds()) == n
        for img_id in coco.getImgIds():
            info = coco.loadImgs(img_id)[0]
            assert Image.open(small / "detection" / split / info["file_name"]).size == (96, 96)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
            assert 1 <= len(anns) <= 5
            boxes = []
            for a in anns:
                x, y, w, h = a["bbox"]
                assert a["iscrowd"] == 0 and 0 < a["area"] <= w * h
                assert x >= 0 and y >= 0 and x + w <= 96 and y + h <= 96
                boxes.append((x, y, x + w, y + h))
            for i in range(len(boxes)):
                for j in range(i):
                    assert gen_mod._iou(boxes[i], boxes[j]) < 0.3


def test_default_config_is_accepted() -> None:
    p = gen_mod._params(get_cfg().DATA.GEN)
    assert p["NUM_CLASSES"] == 10 and p["CONTEXT_RATE"] == 0.9
