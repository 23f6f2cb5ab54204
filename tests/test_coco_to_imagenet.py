"""COCO-format detection set -> ImageNet-with-boxes tree (als_det.data.coco_to_imagenet,
tools/coco_to_imagenet.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from exif_photos import rotated_photo
from PIL import Image
from tiny_runs import tool_module

from als_det.data.boxes import build_index
from als_det.data.coco_to_imagenet import (
    ConversionError,
    SplitSource,
    coco_to_imagenet,
    voc_corners,
)

CATS = [{"id": 3, "name": "cat"}, {"id": 7, "name": "hot dog"}]


def _coco(root: Path, name: str, anns: list[dict], n_images: int) -> SplitSource:
    (root / name).mkdir(parents=True)
    images = [
        {"id": i, "file_name": f"{name}_{i}.jpg", "width": 40, "height": 30}
        for i in range(n_images)
    ]
    for im in images:
        Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(root / name / im["file_name"])
    anns = [dict(a, id=k, iscrowd=a.get("iscrowd", 0)) for k, a in enumerate(anns)]
    js = root / f"{name}.json"
    js.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATS}))
    return SplitSource(name, str(js), str(root / name))


@pytest.fixture
def train_split(tmp_path) -> SplitSource:
    return _coco(
        tmp_path / "coco",
        "train",
        [
            {"image_id": 0, "category_id": 3, "bbox": [2, 3, 10, 8]},  # cat 80 px^2
            {"image_id": 0, "category_id": 7, "bbox": [0, 0, 5, 5]},  # hot dog 25
            {"image_id": 0, "category_id": 3, "bbox": [20, 10, 5.5, 4.2]},  # cat, fractional
            {
                "image_id": 1,
                "category_id": 7,
                "bbox": [0, 0, 30, 20],
                "iscrowd": 1,
            },  # crowd of hot dogs 600
            {"image_id": 1, "category_id": 3, "bbox": [1, 1, 10, 10]},  # cat 100
            {"image_id": 3, "category_id": 3, "bbox": [5, 5, 0, 4]},  # zero width: dropped
        ],
        n_images=4,
    )  # image 2: no annotation


def _records(root: Path, split: str, classes=None):
    records, classes, report = build_index(root, split, classes=classes)
    return (
        {Path(r.path).name: (classes[r.label], r.boxes.tolist()) for r in records},
        classes,
        report,
    )


def test_dominant_category_boxes_and_crowd_kept(train_split, tmp_path):
    reports = coco_to_imagenet([train_split], tmp_path / "out")
    by_name, classes, index = _records(tmp_path / "out", "train")
    assert classes == ["cat", "hot_dog"]
    # largest total area decides; VOC corners cover each box, read back as (x0, y0, x1 + 1, y1 + 1)
    assert by_name["train_0.jpg"] == ("cat", [[2, 3, 12, 11], [20, 10, 26, 15]])
    assert by_name["train_1.jpg"] == (
        "hot_dog",
        [[0, 0, 30, 20]],
    )  # the crowd region counts as its box
    assert sorted(by_name) == ["train_0.jpg", "train_1.jpg"] and index.skipped == {}
    rep = reports["train"]
    assert (rep.images, rep.boxes, rep.crowd_boxes_kept) == (2, 3, 1)
    assert rep.skipped_images == {"no usable box": ["train_2.jpg", "train_3.jpg"]}
    assert rep.dropped_boxes == {"malformed or non-positive bbox": 1}
    meta = json.loads((tmp_path / "out" / "classes.json").read_text())
    assert meta == [
        {"folder": "cat", "coco_id": 3, "images": 1},
        {"folder": "hot_dog", "coco_id": 7, "images": 1},
    ]
    assert json.loads((tmp_path / "out" / "conversion.json").read_text())["crowd"] == "keep"
    assert (tmp_path / "out" / "train" / "cat" / "train_0.jpg").read_bytes() == (
        Path(train_split.image_dir) / "train_0.jpg"
    ).read_bytes()  # the original file, not re-encoded


@pytest.mark.parametrize(
    "crowd, expected", [("drop", ("cat", [[1, 1, 11, 11]])), ("skip_image", None)]
)
def test_crowd_policies(train_split, tmp_path, crowd, expected):
    reports = coco_to_imagenet([train_split], tmp_path / "out", crowd=crowd)
    if expected is None:
        assert not (
            tmp_path / "out" / "train" / "hot_dog"
        ).exists()  # hot dog was dominant only there
        assert (
            "train_1.jpg"
            in reports["train"].skipped_images["has a crowd annotation (crowd policy 'skip_image')"]
        )
        return
    by_name, _, _ = _records(tmp_path / "out", "train")
    assert by_name["train_1.jpg"] == expected
    assert reports["train"].dropped_boxes["crowd (crowd policy 'drop')"] == 1


def test_later_splits_use_the_first_splits_classes(train_split, tmp_path):
    val = _coco(
        tmp_path / "coco",
        "val",
        [
            {"image_id": 0, "category_id": 3, "bbox": [0, 0, 8, 8]},
            {"image_id": 1, "category_id": 7, "bbox": [0, 0, 8, 8]},
        ],
        n_images=2,
    )
    reports = coco_to_imagenet([train_split, val], tmp_path / "out", min_images=1, crowd="drop")
    # with crowds dropped, hot dog is nobody's dominant class in train: val's hot dog image is left
    # out
    assert reports["val"].skipped_images == {"class absent from the first split": ["val_1.jpg"]}
    by_name, classes, _ = _records(tmp_path / "out", "val", classes=["cat"])
    assert classes == ["cat"] and list(by_name) == ["val_0.jpg"]
    with pytest.raises(ConversionError, match="no category is dominant in 3 or more images"):
        coco_to_imagenet([train_split], tmp_path / "other", min_images=3)
    assert not (tmp_path / "other").exists()


def test_refusals_leave_nothing_behind(train_split, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(ConversionError, match="exists and is not empty"):
        coco_to_imagenet([train_split], out)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    (Path(train_split.image_dir) / "train_0.jpg").unlink()
    with pytest.raises(ConversionError, match=r"train.json: 1 images missing .* \['train_0.jpg'\]"):
        coco_to_imagenet([train_split], tmp_path / "new")
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".new.tmp-*"))


def test_voc_corners_stay_inside_the_image():
    assert voc_corners([0.4, 0.6, 10.2, 5.0], 40, 30) == (0, 0, 10, 5)
    assert voc_corners([35.5, 25.0, 10.0, 10.0], 40, 30) == (35, 25, 39, 29)


def test_tool_with_split_specs(train_split, tmp_path, capsys):
    main = tool_module("coco_to_imagenet")["main"]
    spec = f"train={train_split.json_file}:{train_split.image_dir}"
    assert main(["--split", spec, "--out", str(tmp_path / "out"), "--symlink"]) == 0
    # once, not repeated by the tool
    assert capsys.readouterr().err.count("train: 2 of 4 images in 2 classes") == 1
    assert (tmp_path / "out" / "train" / "cat" / "train_0.jpg").is_symlink()
    assert main(["--split", spec, "--out", str(tmp_path / "out")]) == 2  # not empty any more
    assert "exists and is not empty" in capsys.readouterr().err


def _edit(split: SplitSource, change) -> None:
    js = Path(split.json_file)
    data = json.loads(js.read_text())
    change(data)
    js.write_text(json.dumps(data))


def test_duplicate_image_ids_are_refused(train_split, tmp_path):
    # a second entry with id 0 pointing at another photo would take image 0's boxes
    _edit(train_split, lambda d: d["images"].append(dict(d["images"][2], id=0)))
    with pytest.raises(ConversionError, match=r"train.json: duplicate image ids: 0$"):
        coco_to_imagenet([train_split], tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))
    _edit(train_split, lambda d: (d["images"].pop(), d["annotations"][1].update(id=0)))
    with pytest.raises(ConversionError, match="duplicate annotation ids: 0"):
        coco_to_imagenet([train_split], tmp_path / "out")


def test_annotation_of_an_unknown_image_is_a_counted_drop(train_split, tmp_path, caplog):
    _edit(
        train_split,
        lambda d: d["annotations"].append(
            {"id": 50, "image_id": 99, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 0}
        ),
    )
    with caplog.at_level(logging.INFO, logger="als_det.data.coco_to_imagenet"):
        reports = coco_to_imagenet([train_split], tmp_path / "out")
    assert reports["train"].dropped_boxes == {
        "malformed or non-positive bbox": 1,
        "image id not in 'images'": 1,
    }
    assert "dropped 1 boxes: image id not in 'images'" in caplog.text
    recorded = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert recorded["splits"]["train"]["dropped_boxes"]["image id not in 'images'"] == 1


def test_file_names_with_folders_are_flattened_and_indexed(tiny_imagenet, tmp_path, caplog):
    # the fixture's json names its photos "<wnid>/<file>"; pretraining reads only files directly
    # in the class folders
    train = SplitSource(
        "train",
        str(tiny_imagenet / "annotations" / "instances_train.json"),
        str(tiny_imagenet / "train"),
    )
    with caplog.at_level(logging.INFO, logger="als_det.data.coco_to_imagenet"):
        reports = coco_to_imagenet([train], tmp_path / "out", link="symlink")
    assert reports["train"].images == 3000
    assert "check: pretraining indexes 3000 train images with 3000 boxes" in caplog.text
    records, classes, index = build_index(tmp_path / "out", "train", cache_dir=tmp_path / "c")
    assert (index.images, index.boxes, index.skipped) == (3000, 3000, {})
    names = {Path(r.path).name for r in records}
    assert "n04146614_n04146614_0.JPEG" in names and len(names) == 3000
    assert list((tmp_path / "out" / "Annotation" / "train").glob("*/n04146614_n04146614_0.xml"))


@pytest.mark.parametrize(
    "names, needle",
    [
        (["a/b_0.jpg", "a_b/0.jpg"], "would share a name once flattened"),
        (["x/../../0.jpg", "1.jpg"], "not a plain relative path"),
        (["/etc/0.jpg", "1.jpg"], "not a plain relative path"),
    ],
)
def test_names_that_cannot_be_flattened_are_refused(train_split, tmp_path, names, needle):
    def rename(d):
        d["images"] = d["images"][:2]
        for im, name in zip(d["images"], names):
            im["file_name"] = name

    _edit(train_split, rename)
    with pytest.raises(ConversionError, match=needle):
        coco_to_imagenet([train_split], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_tree_pretraining_cannot_index_is_refused(train_split, tmp_path):
    # pretraining indexes .jpeg/.jpg/.png only: a .bmp photo would be written but never read
    Image.open(Path(train_split.image_dir) / "train_0.jpg").save(
        Path(train_split.image_dir) / "train_0.bmp"
    )
    _edit(train_split, lambda d: d["images"][0].update(file_name="train_0.bmp"))
    with pytest.raises(
        ConversionError,
        match=r"(?s)wrote 2 images with 3 boxes, but pretraining indexes 1 images with 1 boxes"
        r".*not_an_image.*train_0.bmp",
    ):
        coco_to_imagenet([train_split], tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_exif_rotated_photo_is_converted_in_its_displayed_orientation(tmp_path):
    # stored 40x30 with EXIF orientation 6: displayed (and read by detectron2) as 30x40
    src = tmp_path / "coco"
    rotated_photo(src / "img" / "r.jpg")
    image = {"id": 1, "file_name": "r.jpg", "width": 30, "height": 40}
    ann = {"id": 1, "image_id": 1, "category_id": 3, "bbox": [20, 0, 10, 13], "iscrowd": 0}
    js = src / "train.json"
    js.write_text(json.dumps({"images": [image], "annotations": [ann], "categories": CATS}))
    split = SplitSource("train", str(js), str(src / "img"))
    coco_to_imagenet([split], tmp_path / "out")
    records, _, _ = build_index(tmp_path / "out", "train")
    assert (records[0].width, records[0].height) == (30, 40)
    assert records[0].boxes.tolist() == [[20, 0, 30, 13]]  # not rescaled onto another region
    # the stored size fits only before the orientation is applied: an error naming the file
    js.write_text(
        json.dumps(
            {"images": [dict(image, width=40, height=30)], "annotations": [ann], "categories": CATS}
        )
    )
    with pytest.raises(
        ConversionError, match=r"train.json: .*r.jpg the size 40x30.*EXIF orientation 6"
    ):
        coco_to_imagenet([split], tmp_path / "other")
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("name", ["../escaped", "ABSOLUTE", "Annotation", ".hidden", "a/b"])
def test_split_names_are_plain_folder_names(train_split, tmp_path, name):
    name = str(tmp_path / "escaped") if name == "ABSOLUTE" else name
    bad = SplitSource(name, train_split.json_file, train_split.image_dir)
    with pytest.raises(ValueError, match="split name"):
        coco_to_imagenet([bad], tmp_path / "out")
    with pytest.raises(ValueError, match="split names must differ"):
        coco_to_imagenet([train_split, train_split], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco"]


@pytest.mark.parametrize("category", ["..", " ", ".cat"])
def test_category_names_that_make_no_readable_folder_are_refused(train_split, tmp_path, category):
    _edit(train_split, lambda d: d["categories"][0].update(name=category))
    with pytest.raises(ConversionError, match="empty or hidden"):
        coco_to_imagenet([train_split], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco"]


def test_bboxes_that_are_not_four_finite_numbers_are_counted_drops(train_split, tmp_path):
    def bad_boxes(d):
        good = {"image_id": 2, "category_id": 3, "iscrowd": 0}
        for k, bbox in enumerate([[float("nan"), 1, 5, 5], ["1", 1, 5, 5], [1, 1, True, 5]]):
            d["annotations"].append(dict(good, id=100 + k, bbox=bbox))

    _edit(train_split, bad_boxes)
    reports = coco_to_imagenet([train_split], tmp_path / "out")
    assert reports["train"].dropped_boxes == {"malformed or non-positive bbox": 4}
    assert "train_2.jpg" in reports["train"].skipped_images["no usable box"]
