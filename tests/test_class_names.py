"""Readable class names from the files beside the data; wnids where none exist."""

from __future__ import annotations

import json
from pathlib import Path

from als_det.data.class_names import class_names


def test_names_from_the_real_fixture_coco_categories(tiny_imagenet: Path) -> None:
    wnids = sorted(p.name for p in (tiny_imagenet / "val").iterdir())
    names = class_names(tiny_imagenet, wnids)
    cats = json.loads((tiny_imagenet / "annotations" / "instances_val.json").read_text())[
        "categories"
    ]
    assert names == [next(c["imagenet_name"] for c in cats if c["wnid"] == w) for w in wnids]
    assert "golden retriever" in names and not any(n.startswith("n0") for n in names)


def test_synset_files_first_synonym_duplicates_and_fallback(tmp_path: Path) -> None:
    root = tmp_path / "imagenet"
    root.mkdir()
    (tmp_path / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn02012849 crane\nn03126707 crane\n"
    )
    (root / "words.txt").write_text(
        "n01443537\tgoldfish, Carassius auratus\nn02012849\tcrane, whooper\n"
    )
    wnids = ["n01440764", "n01443537", "n02012849", "n03126707", "n09999999"]
    assert class_names(root, wnids) == [
        "tench",
        "goldfish",
        "crane (n02012849)",
        "crane (n03126707)",
        "n09999999",
    ]


def test_generated_set_classes_json(tmp_path: Path) -> None:
    (tmp_path / "classes.json").write_text(json.dumps({"n00000001": "disc", "n00000002": "ring"}))
    assert class_names(tmp_path, ["n00000002", "n00000001"]) == ["ring", "disc"]
