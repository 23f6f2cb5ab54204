"""The box index: real ILSVRC-style layout, every ImageNet layout variant, bad input, the cache."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from exif_photos import rotated_photo
from PIL import Image

import als_det.data.boxes as boxes_mod
from als_det.data import index_cache
from als_det.data.boxes import DataError, build_index, parse_voc_xml
from als_det.data.images import BadImageError


def jpeg(path: Path, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 128 if mode == "L" else (120, 60, 30)[: len(mode)]).save(path, "JPEG")
    return path


def voc(path: Path, objects: list[tuple], size: tuple[int, int] | None = (64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height></size>" if size else ""
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
        f"<xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for n, a, b, c, d in objects
    )
    path.write_text(f"<annotation>{size_xml}{objs}</annotation>")
    return path


# ----------------------------------------------------------------------------- the real fixture
def test_tiny_imagenet_index_matches_its_coco_json(tiny_imagenet: Path, tmp_path: Path) -> None:
    records, classes, report = build_index(tiny_imagenet, "train", cache_dir=tmp_path)
    assert len(classes) == 10 and classes == sorted(classes)
    assert report.images == len(records) == 3000 and report.with_boxes == 3000
    assert not report.skipped
    for r in records[::97]:
        assert Path(r.path).parent.name == classes[r.label]
    val, val_classes, val_report = build_index(
        tiny_imagenet, "val", cache_dir=tmp_path, classes=classes
    )
    assert val_classes == classes and val_report.images == 500
    # the fixture's COCO json holds the same boxes as (x, y, w, h) with w = xmax - xmin + 1
    coco = json.loads((tiny_imagenet / "annotations" / "instances_val.json").read_text())
    by_image = {im["id"]: im["file_name"] for im in coco["images"]}
    coco_boxes = {by_image[a["image_id"]]: a["bbox"] for a in coco["annotations"]}
    for r in val:
        x, y, w, h = coco_boxes[os.path.relpath(r.path, tiny_imagenet / "val")]
        np.testing.assert_array_equal(r.boxes, [[x, y, x + w, y + h]])


def test_cache_is_used_validated_and_invalidated(
    tiny_imagenet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build_index(tiny_imagenet, "val", cache_dir=tmp_path)
    (cache_file,) = tmp_path.glob("index-val-*.npz")

    def no_rebuild(*args, **kwargs):
        raise AssertionError("index rebuilt although the cache is valid")

    monkeypatch.setattr(boxes_mod, "_build", no_rebuild)
    again = build_index(tiny_imagenet, "val", cache_dir=tmp_path)
    assert [r.path for r in again[0]] == [r.path for r in first[0]]
    assert all(np.array_equal(a.boxes, b.boxes) for a, b in zip(again[0], first[0]))
    assert again[1:] == first[1:]
    monkeypatch.undo()
    cache_file.write_bytes(b"not a cache")  # a damaged cache is rebuilt, not trusted
    rebuilt = build_index(tiny_imagenet, "val", cache_dir=tmp_path)
    assert rebuilt[2] == first[2]
    other = build_index(tiny_imagenet, "val", cache_dir=tmp_path, max_per_class=2)
    assert other[2].images == 20 and len(list(tmp_path.glob("index-val-*.npz"))) == 2


def test_cache_notices_added_images(tmp_path: Path) -> None:
    jpeg(tmp_path / "d/train/n1/n1_0.JPEG")
    assert build_index(tmp_path / "d", "train")[2].images == 1
    jpeg(tmp_path / "d/train/n1/n1_1.JPEG")
    assert build_index(tmp_path / "d", "train")[2].images == 2


def test_cache_notices_a_box_file_fixed_in_place(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "d"
    jpeg(root / "train/n1/n1_0.JPEG")
    xml = root / "Annotation/train/n1/n1_0.xml"
    xml.parent.mkdir(parents=True)
    xml.write_text("<annotation><object><name>n1</name><bndbox><xmin>3</xmin>")
    folder_mtimes = {p: p.stat().st_mtime_ns for p in (xml.parent, xml.parent.parent)}
    assert build_index(root, "train")[2].skipped["malformed_box_file"] == [str(xml)]
    voc(xml, [("n1", 0, 0, 9, 9)])  # rewritten in place: no folder changes
    assert {p: p.stat().st_mtime_ns for p in folder_mtimes} == folder_mtimes
    with caplog.at_level(logging.INFO, logger="als_det.data"):
        records, _, report = build_index(root, "train")
    assert not report.skipped and report.with_boxes == 1
    np.testing.assert_array_equal(records[0].boxes, [[0, 0, 10, 10]])
    assert f"1 folder(s)/file(s) changed since it was built ({xml.parent})" in caplog.text


def test_a_tampered_cache_runs_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, marker = tmp_path / "d", tmp_path / "marker"
    jpeg(root / "train/n1/n1_0.JPEG")
    first = build_index(root, "train")
    (cache_file,) = (root / ".als_det_cache").iterdir()

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    payloads = {"pickle": pickle.dumps({"paths": [], "x": Payload()}), "npz": io.BytesIO()}
    np.savez(payloads["npz"], meta=np.array([Payload()], dtype=object))
    payloads["npz"] = payloads["npz"].getvalue()
    for name, payload in payloads.items():
        cache_file.write_bytes(payload)
        with caplog.at_level(logging.WARNING, logger="als_det.data"):
            again = build_index(root, "train")
        assert not marker.exists(), name
        assert "ignoring unreadable box index cache" in caplog.text, name
        assert again[2] == first[2] and again[1] == first[1]
        caplog.clear()
    pickle.loads(payloads["pickle"])  # the payload does run when unpickled
    assert marker.exists()


# ----------------------------------------------------------------------------- layouts
def test_voc_inclusive_corners_scaling_and_clipping(tmp_path: Path) -> None:
    root = tmp_path / "d"
    jpeg(root / "train/n1/n1_0.JPEG", (64, 48))
    jpeg(root / "train/n1/n1_1.JPEG", (64, 48))
    jpeg(root / "train/n1/n1_2.JPEG", (64, 48))
    voc(root / "Annotation/train/n1/n1_0.xml", [("n1", 0, 0, 63, 47)])
    # annotated on a 128 x 96 version of the image: boxes halve
    voc(root / "Annotation/train/n1/n1_1.xml", [("n1", 10, 20, 49, 59)], size=(128, 96))
    # partly outside the image: clipped (not a skip)
    voc(root / "Annotation/train/n1/n1_2.xml", [("n1", 50, 40, 99, 99)])
    records, _, report = build_index(root, "train", cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(records[0].boxes, [[0, 0, 64, 48]])
    np.testing.assert_array_equal(records[1].boxes, [[5, 10, 25, 30]])
    np.testing.assert_array_equal(records[2].boxes, [[50, 40, 64, 48]])
    assert report.boxes == 3 and not report.skipped


def test_no_annotation_folder_means_no_boxes(tmp_path: Path) -> None:
    jpeg(tmp_path / "d/train/n1/n1_0.JPEG")
    records, _, report = build_index(tmp_path / "d", "train")
    assert records[0].boxes.shape == (0, 4) and report.with_boxes == 0
    assert report.box_source == "none" and "box source: none" in report.summary()


def test_only_the_labelled_class_boxes_are_kept(tmp_path: Path) -> None:
    root = tmp_path / "d"
    jpeg(root / "train/n1/n1_0.JPEG")
    jpeg(root / "train/n2/n2_0.JPEG")
    voc(
        root / "Annotation/train/n1/n1_0.xml",
        [("n1", 0, 0, 9, 9), ("n2", 20, 20, 29, 29), ("n1", 5, 5, 14, 14)],
    )
    records, classes, report = build_index(root, "train")
    assert classes == ["n1", "n2"]
    np.testing.assert_array_equal(records[0].boxes, [[0, 0, 10, 10], [5, 5, 15, 15]])
    assert records[1].boxes.shape == (0, 4) and not report.skipped


def _flat_val(root: Path) -> list[str]:
    names = ["ILSVRC2012_val_00000001", "ILSVRC2012_val_00000002", "ILSVRC2012_val_00000003"]
    for n in names:
        jpeg(root / "val" / f"{n}.JPEG")
    return names


def test_flat_val_with_wnid_index_and_csv_labels(tmp_path: Path) -> None:
    root = tmp_path / "d"
    names = _flat_val(root)
    (tmp_path / "wnids.txt").write_text("n2\nn1\nn2\n")
    (tmp_path / "idx.txt").write_text("1\n0\n1\n")
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        f"{names[2]},n2 1 2 30 40 n2 5 5 9 9 \n{names[0]},n2 0 0 10 10\n{names[1]},n1 3 3 20 20\n"
    )
    want = [1, 0, 1]
    for labels_file in ("wnids.txt", "idx.txt", "LOC_val_solution.csv"):
        records, classes, report = build_index(
            root,
            "val",
            val_labels=str(tmp_path / labels_file),
            classes=["n1", "n2"],
            cache_dir=tmp_path / "c",
        )
        assert [r.label for r in records] == want, labels_file
        assert [Path(r.path).stem for r in records] == names
    # the Kaggle CSV is also a box source (its corners read like VOC's)
    records, _, report = build_index(
        root,
        "val",
        val_labels=str(tmp_path / "LOC_val_solution.csv"),
        boxes=str(tmp_path / "LOC_val_solution.csv"),
        cache_dir=tmp_path / "c",
    )
    np.testing.assert_array_equal(records[2].boxes, [[1, 2, 31, 41], [5, 5, 10, 10]])
    np.testing.assert_array_equal(records[1].boxes, [[3, 3, 21, 21]])
    assert report.boxes == 4
    with pytest.raises(DataError, match="idx.txt.*class list"):
        build_index(root, "val", val_labels=str(tmp_path / "idx.txt"), cache_dir=tmp_path / "c")


def test_flat_xml_dir_and_kaggle_train_csv(tmp_path: Path) -> None:
    root = tmp_path / "d"
    names = _flat_val(root)
    (tmp_path / "labels.txt").write_text("n1\nn1\nn1\n")
    voc(tmp_path / "valxml" / f"{names[1]}.xml", [("n1", 1, 1, 10, 10)])
    records, _, _ = build_index(
        root, "val", boxes=str(tmp_path / "valxml"), val_labels=str(tmp_path / "labels.txt")
    )
    assert [len(r.boxes) for r in records] == [0, 1, 0]
    jpeg(root / "train/n1/n1_7.JPEG")
    (tmp_path / "LOC_train_solution.csv").write_text(
        "ImageId,PredictionString\nn1_7,n1 2 2 11 11\n"
    )
    records, _, _ = build_index(root, "train", boxes=str(tmp_path / "LOC_train_solution.csv"))
    np.testing.assert_array_equal(records[0].boxes, [[2, 2, 12, 12]])


# ----------------------------------------------------------------------------- bad input
def _bad_tree(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "bad"
    f = {
        "good": jpeg(root / "train/n1/n1_0.JPEG"),
        "corrupt": root / "train/n1/n1_1.JPEG",
        "malformed_img": jpeg(root / "train/n1/n1_2.JPEG"),
        "boxes_img": jpeg(root / "train/n1/n1_3.JPEG"),
        "text": root / "train/n1/notes.txt",
    }
    f["corrupt"].write_bytes(b"\xff\xd8\xff\xe0 this is no JPEG")
    f["text"].write_text("hello")
    (root / "train/n_empty").mkdir(parents=True)
    ann = root / "Annotation/train/n1"
    voc(ann / "n1_0.xml", [("n1", 0, 0, 9, 9)])
    f["malformed"] = ann / "n1_2.xml"
    f["malformed"].parent.mkdir(parents=True, exist_ok=True)
    f["malformed"].write_text("<annotation><object><name>n1</name><bndbox><xmin>3</xmin>")
    f["box_xml"] = voc(
        ann / "n1_3.xml",
        [
            ("n1", 1, 1, 20, 20),
            ("n1", 30, 5, 10, 40),
            ("n1", 200, 200, 220, 220),
            ("n9", 1, 1, 5, 5),
        ],
    )
    f["orphan"] = voc(ann / "n1_99.xml", [("n1", 0, 0, 9, 9)])
    return f


def test_bad_input_is_skipped_counted_and_reported(tmp_path: Path) -> None:
    f = _bad_tree(tmp_path)
    records, classes, report = build_index(tmp_path / "bad", "train")
    assert classes == ["n1", "n_empty"]
    sk = report.skipped
    assert sk["corrupt_image"] == [str(f["corrupt"])]
    assert sk["not_an_image"] == [str(f["text"])]
    assert sk["empty_class_folder"] == [str(tmp_path / "bad/train/n_empty")]
    assert sk["malformed_box_file"] == [str(f["malformed"])]
    assert sk["inverted_box"] == [str(f["box_xml"])]
    assert sk["box_outside_image"] == [str(f["box_xml"])]
    assert sk["unknown_wnid"] == [str(f["box_xml"])]
    assert sk["box_file_without_image"] == [str(f["orphan"])]
    # what stays: the corrupt image is dropped; the malformed XML's image stays without boxes;
    # only the bad boxes of n1_3 are dropped
    by_stem = {Path(r.path).stem: r for r in records}
    assert sorted(by_stem) == ["n1_0", "n1_2", "n1_3"]
    assert by_stem["n1_2"].boxes.shape == (0, 4)
    np.testing.assert_array_equal(by_stem["n1_3"].boxes, [[1, 1, 21, 21]])
    assert report.images == 3 and report.with_boxes == 2 and report.empty_boxes_dropped == 1
    summary = report.summary()
    for reason in sk:
        assert reason in summary
    assert "n1_99.xml" in summary


@pytest.mark.parametrize("case", ["corrupt", "malformed", "box_xml", "orphan", "text", "empty"])
def test_strict_mode_raises_naming_the_file(tmp_path: Path, case: str) -> None:
    f = _bad_tree(tmp_path)
    root = tmp_path / "bad"
    keep = {
        "corrupt": "corrupt",
        "malformed": "malformed_img",
        "box_xml": "boxes_img",
        "orphan": "orphan",
        "text": "text",
        "empty": None,
    }[case]
    # leave only one bad thing in the tree
    for name in ("corrupt", "malformed_img", "boxes_img", "text"):
        if name != keep:
            f[name].unlink()
    for name in ("malformed", "box_xml", "orphan"):
        if name != case and f[name].exists():
            f[name].unlink()
    if case != "empty":
        (root / "train/n_empty").rmdir()
    expected = {
        "corrupt": f["corrupt"],
        "malformed": f["malformed"],
        "box_xml": f["box_xml"],
        "orphan": f["orphan"],
        "text": f["text"],
        "empty": root / "train/n_empty",
    }[case]
    error = BadImageError if case == "corrupt" else DataError
    with pytest.raises(error, match=str(expected)):
        build_index(root, "train", strict=True)
    if case not in ("corrupt",):
        build_index(root, "train", strict=False)  # the same tree indexes without strict


def test_flat_val_label_problems(tmp_path: Path) -> None:
    root = tmp_path / "d"
    names = _flat_val(root)
    (tmp_path / "short.txt").write_text("n1\n")
    with pytest.raises(DataError, match="short.txt.*1 labels for 3 images"):
        build_index(root, "val", val_labels=str(tmp_path / "short.txt"), classes=["n1"])
    (tmp_path / "bad.txt").write_text("n1\nn7\n1\n")
    records, _, report = build_index(
        root, "val", val_labels=str(tmp_path / "bad.txt"), classes=["n1"]
    )
    assert [Path(r.path).stem for r in records] == names[:1]
    assert len(report.skipped["bad_label"]) == 2
    (tmp_path / "part.csv").write_text(f"ImageId,PredictionString\n{names[0]},n1 0 0 3 3\n")
    records, _, report = build_index(root, "val", val_labels=str(tmp_path / "part.csv"))
    assert len(records) == 1 and len(report.skipped["unlabelled_image"]) == 2


def test_parse_voc_xml_reads_objects(tmp_path: Path) -> None:
    bf = parse_voc_xml(voc(tmp_path / "a.xml", [("n1", 1, 2, 3, 4)], size=(10, 20)))
    assert bf.size == (10, 20) and bf.objects == [("n1", 1.0, 2.0, 3.0, 4.0)]
    with pytest.raises(DataError, match="b.xml"):
        (tmp_path / "b.xml").write_text("<annotation><object><name>n1</name></object></annotation>")
        parse_voc_xml(tmp_path / "b.xml")


def test_read_only_root_is_not_written_without_cache_dir(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    jpeg(root / "train/n1/n1_0.JPEG")
    root.chmod(0o555)
    try:
        assert build_index(root, "train")[2].images == 1
        assert not (root / ".als_det_cache").exists()
    finally:
        root.chmod(0o755)


# ----------------------------------------------------------------------------- EXIF orientation
def test_exif_rotated_photo_is_indexed_in_its_displayed_orientation(tmp_path: Path) -> None:
    # stored 40x30 with EXIF orientation 6: displayed (and read by detectron2) as 30x40
    root = tmp_path / "d"
    rotated_photo(root / "train/n1/n1_0.JPEG")
    rotated_photo(root / "train/n1/n1_1.JPEG")
    voc(root / "Annotation/train/n1/n1_0.xml", [("n1", 20, 0, 29, 12)], size=(30, 40))
    stored = voc(root / "Annotation/train/n1/n1_1.xml", [("n1", 0, 0, 12, 9)], size=(40, 30))
    records, _, report = build_index(root, "train")
    assert [(r.width, r.height) for r in records] == [(30, 40), (30, 40)]
    np.testing.assert_array_equal(records[0].boxes, [[20, 0, 30, 13]])  # as given, not rescaled
    # a box file in the stored orientation is not rescaled onto another region: skipped, counted
    assert records[1].boxes.shape == (0, 4)
    assert report.skipped == {"box_file_before_exif": [str(stored)]}
    with pytest.raises(DataError, match=rf"{stored}: .*the size 40x30.*EXIF orientation 6"):
        build_index(root, "train", strict=True)
    assert "skipped 1 x box_file_before_exif" in report.summary()


# ----------------------------------------------------------------------------- symbolic links
def _linked_tree(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """One good image with its box, and links that loop or lead nowhere, in the image and box
    folders."""
    root = tmp_path / "d"
    jpeg(root / "train/n1/n1_0.JPEG")
    ann = root / "Annotation/train/n1"
    voc(ann / "n1_0.xml", [("n1", 0, 0, 9, 9)])
    links = {
        "image_loop": root / "train/n1/n1_1.JPEG",  # -> itself
        "image_broken": root / "train/n1/n1_2.JPEG",
        "folder_up": root / "train/n1/up",  # -> the split folder: a class folder's subfolder
        "box_loop": ann / "n1_1.xml",
        "box_folder_up": ann / "up",  # -> Annotation/, above the box folder
        "box_folder_cycle": ann / "other",  # -> a sibling folder linking back here
    }
    links["image_loop"].symlink_to("n1_1.JPEG")
    links["image_broken"].symlink_to("gone.JPEG")
    links["folder_up"].symlink_to("..")
    links["box_loop"].symlink_to("n1_1.xml")
    links["box_folder_up"].symlink_to("../..")
    (root / "Annotation/elsewhere").mkdir()
    (root / "Annotation/elsewhere/back").symlink_to(ann)
    links["box_folder_cycle"].symlink_to("../../elsewhere")
    return root, links


def test_symlink_loops_are_counted_skips_not_a_hang(tmp_path: Path) -> None:
    root, links = _linked_tree(tmp_path)
    records, _, report = build_index(root, "train")
    assert [Path(r.path).name for r in records] == ["n1_0.JPEG"]
    np.testing.assert_array_equal(records[0].boxes, [[0, 0, 10, 10]])
    assert report.skipped == {
        "symlink_loop": [
            str(links["image_loop"]),
            str(links["folder_up"]),
            str(links["box_loop"]),
            str(links["box_folder_cycle"] / "back"),
            str(links["box_folder_up"]),
        ],
        "broken_symlink": [str(links["image_broken"])],
    }
    assert "skipped 5 x symlink_loop" in report.summary()
    again = build_index(root, "train")  # the cache's digest of the folders ends too, and holds
    assert again[2] == report
    links["image_broken"].unlink()
    links["image_broken"].symlink_to("n1_0.JPEG")  # a link's change is noticed
    assert build_index(root, "train")[2].images == 2
    with pytest.raises(DataError, match=rf"{links['image_loop']}: symlink loop: .*loops"):
        build_index(root, "train", strict=True)


def test_folder_link_loops_end_the_walks(tmp_path: Path) -> None:
    """Folder links only (no looping file): the cache digest and the box scan follow folder
    links, and each stops where a link leads back instead of going 40 levels deep."""
    root = tmp_path / "d"
    jpeg(root / "train/n1/n1_0.JPEG")
    voc(root / "Annotation/train/n1/n1_0.xml", [("n1", 0, 0, 9, 9)])
    for link in ("train/n1/up", "train/n1/up2", "Annotation/train/n1/up"):
        (root / link).symlink_to("..")
    files = index_cache.fingerprint([root / "train", root / "Annotation/train"])
    assert sorted(files) == [
        str(root / p) for p in ("Annotation/train", "Annotation/train/n1", "train", "train/n1")
    ]
    records, _, report = build_index(root, "train")
    assert records[0].boxes.shape == (1, 4)
    assert report.skipped["symlink_loop"] == [
        str(root / p) for p in ("train/n1/up", "train/n1/up2", "Annotation/train/n1/up")
    ]
