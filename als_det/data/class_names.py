"""Readable class names for class ids (ImageNet wnids), from the files that ship beside the data.

Looked for in the data root, then its parent, first match per class wins:
- `classes.json`: the generated data set's `{wnid: name}`;
- `LOC_synset_mapping.txt` (Kaggle ImageNet): `n01440764 tench, Tinca tinca` per line;
- `words.txt` (Tiny-ImageNet, ImageNet's `words.txt`): `n01440764<TAB>tench, Tinca tinca` per line;
- `annotations/instances_*.json` (COCO-format copies such as tiny-imagenet-10's): categories with a
  `wnid` and an `imagenet_name` (or `name`).
The first comma-separated synonym is the name. A name that two of the classes share (ImageNet has
two "crane"s) gets its wnid appended; classes without a name keep their id.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)


def _synset_lines(path: Path) -> dict[str, str]:
    names = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        wnid, _, text = line.strip().partition("\t" if "\t" in line else " ")
        if wnid and text:
            names[wnid] = text.split(",")[0].strip()
    return names


def _coco_categories(path: Path) -> dict[str, str]:
    cats = json.loads(path.read_text(encoding="utf-8")).get("categories", [])
    return {c["wnid"]: c.get("imagenet_name") or c["name"] for c in cats if "wnid" in c}


def _sources(folder: Path) -> Iterable[dict[str, str]]:
    if (folder / "classes.json").is_file():
        data = json.loads((folder / "classes.json").read_text(encoding="utf-8"))
        if isinstance(data, dict):
            yield {str(k): str(v) for k, v in data.items()}
    for name in ("LOC_synset_mapping.txt", "words.txt"):
        if (folder / name).is_file():
            yield _synset_lines(folder / name)
    for path in sorted(folder.glob("annotations/instances_*.json")):
        yield _coco_categories(path)


def class_names(root: str | Path, classes: Sequence[str]) -> list[str]:
    """A display name per class id in `classes` (same order), found beside `root`."""
    root = Path(root)
    found: dict[str, str] = {}
    wanted = set(classes)
    for folder in (root, root.parent):
        for names in _sources(folder):
            found.update({w: n for w, n in names.items() if w in wanted and w not in found and n})
            if len(found) == len(wanted):
                break
        else:
            continue
        break
    names = [found.get(c, c) for c in classes]
    shared = {n for n in names if names.count(n) > 1}
    return [f"{n} ({c})" if n in shared else n for n, c in zip(names, classes)]
