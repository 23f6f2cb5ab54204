"""COCO-format data set validation and registration (als_det.detection.datasets)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import SizeMismatchError, check_image_size, read_image
from exif_photos import rotated_photo
from tiny_runs import tiny_coco

from als_det.data.images import image_size, load_rgb
from als_det.detection import datasets as ds


def test_valid_set_reports_counts_and_drops_degenerate_boxes(tmp_path):
    js, img = tiny_coco(tmp_path)
    rep = ds.register_coco_detection("als_test_tiny", js, img)
    assert (rep.images, rep.annotations, rep.crowd) == (2, 3, 1)
    assert rep.dropped_boxes == [2]
    assert rep.categories == [(3, "cat"), (7, "dog")]
    assert "1 boxes of non-positive size dropped" in rep.summary()
    dicts = DatasetCatalog.get("als_test_tiny")
    kept = sorted(a["id"] for d in dicts for a in d["annotations"])
    assert kept == [1, 3]
    meta = MetadataCatalog.get("als_test_tiny")
    assert meta.thing_classes == ["cat", "dog"]
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    # ground truth for the evaluator is then built from the cleaned dicts, not the original json
    assert not hasattr(meta, "json_file")
    assert {a["category_id"] for d in dicts for a in d["annotations"]} == {0, 1}


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing_image", "1 of 2 images missing on disk"),
        ("dup_image", "duplicate image ids: 100"),
        ("dup_ann", "duplicate annotation ids: 1"),
        ("unknown_cat", "unknown ids: 5"),
        ("unknown_image", "image_id is not in 'images'"),
        ("bad_bbox", "4-number bbox"),
        ("no_categories", "'categories' is empty"),
        ("no_annotations", r"no usable box to train or evaluate on \('annotations' is empty\)"),
        ("only_crowd", "all 1 annotations are crowd regions or boxes of non-positive size"),
    ],
)
def test_bad_json_is_a_clear_error_naming_the_file(tmp_path, case, needle):
    good = {"id": 1, "image_id": 100, "category_id": 3, "bbox": [1, 2, 3, 4], "iscrowd": 0}
    kwargs: dict = {}
    if case == "missing_image":
        js, img = tiny_coco(tmp_path, anns=[good])
        (img / "1.jpg").unlink()
    else:
        anns = {
            "dup_ann": [good, dict(good)],
            "unknown_cat": [dict(good, category_id=5)],
            "unknown_image": [dict(good, image_id=999)],
            "bad_bbox": [dict(good, bbox=[1, 2])],
            "no_annotations": [],
            "only_crowd": [dict(good, iscrowd=1)],
        }.get(case, [good])
        if case == "no_categories":
            kwargs["cats"] = []
        js, img = tiny_coco(tmp_path, anns=anns, **kwargs)
        if case == "dup_image":
            data = json.loads(js.read_text())
            data["images"][1]["id"] = 100
            js.write_text(json.dumps(data))
    with pytest.raises(ds.DatasetError, match=needle) as err:
        ds.validate_coco_json("x", js, img)
    assert str(js) in str(err.value)


def test_unreadable_json_and_missing_folder(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ds.DatasetError, match="not a readable json"):
        ds.validate_coco_json("x", bad, tmp_path)
    with pytest.raises(ds.DatasetError, match="image folder not found"):
        ds.validate_coco_json("x", bad, tmp_path / "nope")
    with pytest.raises(ds.DatasetError, match="annotation file not found"):
        ds.validate_coco_json("x", tmp_path / "none.json", tmp_path)


def test_dataset_spec_parsing():
    assert ds.parse_dataset_spec("mine=/a:b/x.json:/imgs:2") == ("mine", "/a:b/x.json", "/imgs:2")
    for bad in ("mine", "mine=/x.json", "=/x.json:/imgs", "mine=/x.txt:/imgs"):
        with pytest.raises(ds.DatasetError, match="NAME=JSON:IMAGE_DIR"):
            ds.parse_dataset_spec(bad)


def test_train_and_test_sets_must_share_categories(tmp_path):
    a = ds.validate_coco_json("a", *tiny_coco(tmp_path / "a"))
    only_cat = [{"id": 1, "image_id": 100, "category_id": 3, "bbox": [1, 2, 3, 4], "iscrowd": 0}]
    b = ds.validate_coco_json(
        "b",
        *tiny_coco(
            tmp_path / "b", anns=only_cat, cats=[{"id": 3, "name": "cat"}, {"id": 8, "name": "dog"}]
        ),
    )
    assert ds.check_same_categories([a, a]) == [(3, "cat"), (7, "dog")]
    with pytest.raises(ds.DatasetError, match="different categories"):
        ds.check_same_categories([a, b])


def test_coco_mini_replaces_detectron2_builtin_registration(coco_mini):
    # detectron2 pre-registers coco_2017_val under $DETECTRON2_DATASETS at import
    assert "coco_2017_val" in DatasetCatalog.list()
    rep = ds.register_coco_detection("coco_2017_val", *ds.coco_split_paths(coco_mini, "val2017"))
    assert rep.images == 47 and rep.annotations == 469 and rep.crowd > 0
    assert rep.dropped_boxes == []
    official = json.loads((coco_mini / "annotations/instances_val2017.json").read_text())
    assert rep.categories == sorted((c["id"], c["name"]) for c in official["categories"])
    assert len(rep.categories) == 80 and rep.categories[-1][0] == 90
    meta = MetadataCatalog.get("coco_2017_val")
    assert meta.image_root == str(coco_mini / "val2017")
    assert meta.json_file == str(coco_mini / "annotations/instances_val2017.json")
    dicts = DatasetCatalog.get("coco_2017_val")
    assert len(dicts) == 47
    # detectron2's contiguous mapping: official id 90 (toothbrush) -> 79
    assert meta.thing_dataset_id_to_contiguous_id[90] == 79
    assert all(0 <= a["category_id"] < 80 for d in dicts for a in d["annotations"])


def test_json_sizes_are_checked_against_the_displayed_image_up_front(tmp_path):
    """A photo stored 40x30 with EXIF orientation 6 is 30x40 to detectron2 (`read_image` applies
    the orientation): a json with its stored size is refused by validation, before any model is
    built, not at its first loading; one with the displayed size passes detectron2's own check."""
    rotated_photo(tmp_path / "img" / "r.jpg")
    image = {"id": 1, "file_name": "r.jpg", "width": 30, "height": 40}
    ann = {"id": 1, "image_id": 1, "category_id": 3, "bbox": [20, 0, 10, 13], "iscrowd": 0}
    js = tmp_path / "instances.json"
    cats = [{"id": 3, "name": "cat"}]
    js.write_text(json.dumps({"images": [image], "annotations": [ann], "categories": cats}))
    ds.register_coco_detection("als_test_exif", js, tmp_path / "img")
    (record,) = DatasetCatalog.get("als_test_exif")
    check_image_size(record, read_image(record["file_name"], "BGR"))  # detectron2 agrees
    # and pretraining decodes the same pixels as detectron2
    np.testing.assert_array_equal(
        np.asarray(load_rgb(record["file_name"])), read_image(record["file_name"], "RGB")
    )
    stored = dict(image, width=40, height=30)
    js.write_text(json.dumps({"images": [stored], "annotations": [ann], "categories": cats}))
    with pytest.raises(
        ds.DatasetError,
        match=rf"{js}: 1 of 1 images do not have the width and height given: image id 1 gives "
        r".*r.jpg the size 40x30, but it displays as 30x40: .*EXIF orientation 6",
    ):
        ds.validate_coco_json("x", js, tmp_path / "img")
    with pytest.raises(SizeMismatchError):  # what detectron2 itself says, only when loading it
        check_image_size(dict(record, **stored), read_image(record["file_name"], "BGR"))
    js.write_text(
        json.dumps({"images": [dict(image, width=31)], "annotations": [ann], "categories": cats})
    )
    with pytest.raises(ds.DatasetError, match=r"the size 31x40, but it displays as 30x40$"):
        ds.validate_coco_json("x", js, tmp_path / "img")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_read_as_detectron2_reads_it(tmp_path, orientation):
    photo = rotated_photo(tmp_path / "r.jpg", orientation=orientation)
    seen = read_image(str(photo), "RGB")
    assert image_size(photo) == (seen.shape[1], seen.shape[0])
    np.testing.assert_array_equal(np.asarray(load_rgb(photo)), seen)
