"""tools/prepare_imagenet.py --pack on a few real photos of tiny-imagenet-10: the packed copy
indexes as the folder copy does (samples, labels, sizes, boxes), every decode path gives its
images and coverages unchanged, and a truncated or altered pack is an error, never a wrong image."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny_runs import tool_module

from als_det.data.annotations import DataError
from als_det.data.boxes import build_index, layout_problems
from als_det.data.device_decode import DeviceDecoder, EncodedImageNetBoxes
from als_det.data.imagenet import ImageNetBoxes
from als_det.data.pack import index_path, pack_path
from als_det.experiment.estimate import _pretrain_images

main = tool_module("prepare_imagenet")["main"]
CLASSES, TRAIN, VAL = 2, 3, 2  # classes, train and val images per class


def _few(tiny_imagenet: Path, dst: Path) -> Path:
    """A tree of links to the first images (and their box files) of the first classes."""
    for split, n in (("train", TRAIN), ("val", VAL)):
        for wnid in sorted(p.name for p in (tiny_imagenet / split).iterdir())[:CLASSES]:
            for img in sorted((tiny_imagenet / split / wnid).iterdir())[:n]:
                for rel in (
                    Path(split, wnid, img.name),
                    Path("Annotation", split, wnid, img.stem + ".xml"),
                ):
                    (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                    (dst / rel).symlink_to(tiny_imagenet / rel)
    return dst


@pytest.fixture(scope="module")
def copies(tiny_imagenet: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("pack")
    src = _few(tiny_imagenet, tmp / "src")
    out = {}
    for name, extra in (("folder", []), ("packed", ["--pack"])):
        out[name] = tmp / name
        argv = ["--src", str(src), "--out", str(out[name]), "--max-side", "48", "--workers", "1"]
        assert main([*argv, *extra]) == 0
    return out


def _indexes(root: Path, cache: Path):
    train, classes, report = build_index(root, "train", cache_dir=cache)
    val, _, _ = build_index(root, "val", cache_dir=cache, classes=classes)
    return train, val, classes, report


def test_the_packed_copy_indexes_as_the_folder_copy(copies, tmp_path: Path) -> None:
    packed = copies["packed"]
    assert sorted(p.name for p in packed.iterdir()) == [
        "prepared.json",
        "train.pack",
        "train.pack.index.npz",
        "val.pack",
        "val.pack.index.npz",
    ]
    record = json.loads((packed / "prepared.json").read_text())
    assert record["packed"]["train"]["images"] == CLASSES * TRAIN
    assert record["packed"]["train"]["with_boxes"] == CLASSES * TRAIN
    assert record["packed"]["val"]["bytes"] == pack_path(packed, "val").stat().st_size
    assert layout_problems(packed, "train") == []
    assert layout_problems(packed, "val", val_labels="labels.txt")  # the pack carries its labels
    folder = _indexes(copies["folder"], tmp_path / "cache")
    pack = _indexes(packed, tmp_path / "cache")
    assert pack[2] == folder[2]  # classes
    assert (pack[3].images, pack[3].with_boxes, pack[3].boxes) == (
        folder[3].images,
        folder[3].with_boxes,
        folder[3].boxes,
    )
    for mine, theirs, split in ((pack[0], folder[0], "train"), (pack[1], folder[1], "val")):
        assert len(mine) == len(theirs) == CLASSES * (TRAIN if split == "train" else VAL)
        for a, b in zip(mine, theirs):
            assert Path(a.path).relative_to(pack_path(packed, split)) == Path(b.path).relative_to(
                copies["folder"] / split
            )
            assert (a.label, a.width, a.height) == (b.label, b.width, b.height)
            assert np.array_equal(a.boxes, b.boxes)
    one, _, _ = build_index(packed, "train", max_per_class=1)
    assert [r.label for r in one] == list(range(CLASSES))
    data = SimpleNamespace(ROOT=str(packed), TRAIN_SPLIT="train", MAX_PER_CLASS=2)
    assert _pretrain_images(SimpleNamespace(DATA=data), False)[0] == CLASSES * 2  # the dry run's


def test_every_decode_path_reads_the_pack_unchanged(copies, tmp_path: Path) -> None:
    """workers (PIL from the pack's bytes), device and (where installed) dali: per-sample coverage
    and pixels equal to the folder copy's, exactly (the same bytes); train and val crops."""
    for split in ("train", "val"):
        sets = {}
        for name, root in copies.items():
            records, classes, _ = build_index(root, "train", cache_dir=tmp_path / name)
            if split == "val":
                records, _, _ = build_index(root, "val", cache_dir=tmp_path / name, classes=classes)
            ds = ImageNetBoxes(records, classes, split == "train", 32, val_resize=36, seed=4)
            ds.set_epoch(1)
            sets[name] = ds
        folder, packed = sets["folder"], sets["packed"]
        assert packed.packed(0) and not folder.packed(0)
        for i in range(len(folder)):
            a, b = folder[i], packed[i]
            assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
        decoders = [DeviceDecoder]
        if importlib.util.find_spec("nvidia") and importlib.util.find_spec("nvidia.dali"):
            from als_det.data.dali_decode import DaliDecoder

            decoders.append(DaliDecoder)
        for decoder in decoders:
            out = []
            for ds in (folder, packed):
                encoded = EncodedImageNetBoxes(ds)
                batch = encoded.collate([encoded[i] for i in range(len(ds))])
                out.append(decoder(ds, torch.device("cpu"))(batch))
            for x, y in zip(*out):
                assert torch.equal(x, y), decoder.__name__


def test_a_truncated_or_altered_pack_is_an_error(copies, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(copies["packed"], broken)
    records, classes, _ = build_index(broken, "train")
    pack = pack_path(broken, "train")
    data = bytearray(pack.read_bytes())
    data[records[1].offset + records[1].length // 2] ^= 0xFF  # one byte inside the second image
    pack.write_bytes(bytes(data))
    ds = ImageNetBoxes(records, classes, True, 32)
    ds[0]  # the others still read
    with pytest.raises(DataError, match=r"train\.pack/.*fail their SHA-1"):
        ds[1]
    with pytest.raises(DataError, match="fail their SHA-1"):
        EncodedImageNetBoxes(ds)[1]
    pack.write_bytes(bytes(data[:-10]))
    with pytest.raises(DataError, match=r"train\.pack: \d+ bytes, but its index .* records"):
        build_index(broken, "train")
    index_path(broken, "train").write_bytes(b"not an index")
    with pytest.raises(DataError, match="unreadable pack index"):
        build_index(broken, "train")


def test_a_split_without_class_folders_is_refused(tiny_imagenet: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "val").mkdir(parents=True)
    (src / "val" / "a.JPEG").symlink_to(next((tiny_imagenet / "val").rglob("*.JPEG")))
    argv = ["--src", str(src), "--out", str(tmp_path / "out"), "--max-side", "48", "--pack"]
    assert main([*argv, "--workers", "1"]) == 2
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["src"]


def test_what_packing_skipped_is_reported_and_refused_when_strict(
    tiny_imagenet: Path, tmp_path: Path
) -> None:
    src = _few(tiny_imagenet, tmp_path / "src")
    wnid = sorted(p.name for p in (src / "train").iterdir())[0]
    (src / "train" / wnid / "zz_broken.JPEG").write_bytes(b"not an image")
    out = tmp_path / "out"
    argv = ["--src", str(src), "--out", str(out), "--max-side", "48", "--workers", "1", "--pack"]
    assert main(argv) == 0
    records, _, report = build_index(out, "train")
    assert len(records) == CLASSES * TRAIN
    assert report.skipped == {"corrupt_image": [f"train/{wnid}/zz_broken.JPEG"]}
    with pytest.raises(DataError, match="zz_broken.JPEG: corrupt image .skipped when .*packed"):
        build_index(out, "train", strict=True)
