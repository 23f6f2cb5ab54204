"""torchvision ResNet checkpoint -> detectron2 backbone `.pkl` (the proof that it loads right, and
a conversion published only once proven, are `als_det.detection.verify`'s).

The output follows detectron2's own `tools/convert-torchvision-to-d2.py`: short names (`stem.conv1`,
`res2.0.conv1`, ...) with `matching_heuristics: True`, so `DetectionCheckpointer` suffix-matches
them to `backbone.bottom_up.*` (FPN) and to `backbone.*` + `roi_heads.res5.*` (C4) alike.
Extra top-level keys (our `als_det` metadata) are returned unused by the checkpointer's `load`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from als_det.io import atomic_pickle_dump, sha256_file
from als_det.models import RESNET_LAYOUTS
from als_det.output_dir import check_output_folder
from als_det.revision import code_revision
from als_det.versions import package_versions
from als_det.weights_io import WeightsFileError, read_torch_file, strip_wrapper_prefixes

logger = logging.getLogger(__name__)

AUTHOR = "als_det"

_STEM = {"conv1.weight": "stem.conv1.weight"}
_BLOCK_RE = re.compile(r"^layer([1-4])\.(\d+)\.(conv\d|bn\d|downsample\.0|downsample\.1)\.(\w+)$")


class ConversionError(ValueError):
    """Input that cannot be converted or verified; the message names the file and the problem."""


# ----------------------------------------------------------------------------- reading the input
@dataclass
class SourceCheckpoint:
    """A `.pth` read for conversion: its ResNet state_dict (wrapper prefixes stripped), the rest of
    the checkpoint dict, and whether reading it needed full unpickling (`unsafe_load`)."""

    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    unsafe_load: bool = False


def load_checkpoint_file(path: str | os.PathLike, unsafe_load: bool = False) -> SourceCheckpoint:
    """Read a `.pth` with `weights_only=True` (full unpickling only with `unsafe_load`)."""
    try:
        obj, unsafe_used = read_torch_file(path, unsafe_load=unsafe_load)
    except WeightsFileError as err:
        raise ConversionError(str(err)) from err
    state_dict, meta = extract_state_dict(obj, str(path))
    return SourceCheckpoint(state_dict, meta, unsafe_used)


def extract_state_dict(
    obj: Any, source: str = "<state_dict>"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A bare state_dict or a checkpoint dict with `model`/`state_dict` -> (state_dict,
    metadata)."""
    if not isinstance(obj, Mapping):
        raise ConversionError(
            f"{source}: holds a {type(obj).__name__}, not a state_dict or a checkpoint dict"
        )
    meta: dict[str, Any] = {}
    for key in ("model", "state_dict"):
        if key in obj and isinstance(obj[key], Mapping):
            meta = {k: v for k, v in obj.items() if k != key}
            obj = obj[key]
            break
    if not obj:
        raise ConversionError(f"{source}: the state_dict is empty")
    non_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise ConversionError(
            f"{source}: not a state_dict (non-tensor entries {non_tensors[:5]}); "
            "expected a state_dict or a dict with a 'model'/'state_dict' key"
        )
    return {strip_wrapper_prefixes(k): v for k, v in obj.items()}, meta


def infer_depth(state_dict: Mapping[str, torch.Tensor], source: str = "<state_dict>") -> int:
    """ResNet depth from block counts per layer and the block type (conv3 = Bottleneck)."""
    if "conv1.weight" not in state_dict or not any(k.startswith("layer1.") for k in state_dict):
        raise ConversionError(
            f"{source}: not a torchvision ResNet state_dict (no conv1/layer1 "
            f"keys; first keys {list(state_dict)[:5]})"
        )
    blocks = [0, 0, 0, 0]
    for key in state_dict:
        m = re.match(r"^layer([1-4])\.(\d+)\.", key)
        if m:
            layer, index = int(m.group(1)) - 1, int(m.group(2))
            blocks[layer] = max(blocks[layer], index + 1)
    bottleneck = "layer1.0.conv3.weight" in state_dict
    for depth, layout in RESNET_LAYOUTS.items():
        if layout == (bottleneck, tuple(blocks)):
            return depth
    kind = "Bottleneck" if bottleneck else "BasicBlock"
    raise ConversionError(
        f"{source}: unknown ResNet layout ({kind}, blocks per layer {blocks}); "
        f"supported depths {sorted(RESNET_LAYOUTS)}"
    )


def backbone_state_dict(
    state_dict: Mapping[str, torch.Tensor], depth: int, source: str = "<state_dict>"
) -> dict[str, torch.Tensor]:
    """The backbone tensors (no `fc.*`, no `num_batches_tracked`), checked against torchvision.

    Names and shapes must equal those of torchvision's `resnet{depth}` exactly: a missing, extra
    or misshapen tensor (a wide ResNet, a ResNeXt, a damaged file) is an error.
    """
    with torch.device("meta"):
        reference = getattr(torchvision.models, f"resnet{depth}")(weights=None).state_dict()
    expected = {k: tuple(v.shape) for k, v in reference.items() if _is_backbone_key(k)}
    given = {k: v for k, v in state_dict.items() if _is_backbone_key(k)}
    missing = sorted(set(expected) - set(given))
    extra = sorted(set(given) - set(expected))
    shapes = [
        f"{k} {tuple(given[k].shape)} != {expected[k]}"
        for k in sorted(set(given) & set(expected))
        if tuple(given[k].shape) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} backbone tensors {missing[:5]}")
    if extra:
        problems.append(f"{len(extra)} unexpected tensors {extra[:5]}")
    if shapes:
        problems.append(f"{len(shapes)} tensors of the wrong shape: {shapes[:3]}")
    if problems:
        raise ConversionError(
            f"{source}: not a torchvision resnet{depth} backbone: " + "; ".join(problems)
        )
    return {k: given[k] for k in expected}


def _is_backbone_key(key: str) -> bool:
    return not key.startswith("fc.") and not key.endswith("num_batches_tracked")


# ----------------------------------------------------------------------------- renaming
def d2_name(key: str) -> str:
    """torchvision backbone name -> detectron2 ResNet name (e.g. layer1.0.bn2.weight ->
    res2.0.conv2.norm.weight; layer2.0.downsample.1.running_var ->
    res3.0.shortcut.norm.running_var)."""
    if key in _STEM:
        return _STEM[key]
    if key.startswith("bn1."):
        return "stem.conv1.norm." + key[len("bn1.") :]
    m = _BLOCK_RE.match(key)
    if not m:
        raise ConversionError(f"no detectron2 name for torchvision key {key!r}")
    layer, index, module, param = m.groups()
    stage = f"res{int(layer) + 1}.{index}"
    if module.startswith("conv"):
        return f"{stage}.{module}.{param}"
    if module.startswith("bn"):
        return f"{stage}.conv{module[2:]}.norm.{param}"
    return (
        f"{stage}.shortcut.{param}"
        if module == "downsample.0"
        else f"{stage}.shortcut.norm.{param}"
    )


def convert_torchvision_resnet(
    state_dict: Mapping[str, torch.Tensor], source: str = "<state_dict>"
) -> dict[str, np.ndarray]:
    """A torchvision ResNet state_dict -> {detectron2 name: float numpy array} of its backbone."""
    state_dict = {strip_wrapper_prefixes(k): v for k, v in state_dict.items()}
    backbone = backbone_state_dict(state_dict, infer_depth(state_dict, source), source)
    return {d2_name(k): v.detach().cpu().numpy().copy() for k, v in backbone.items()}


# ----------------------------------------------------------------------------- files
def tensors_digest(arrays: Mapping[str, Any]) -> str:
    """sha256 over the tensors of a `.pkl`'s `model` dict (numpy arrays or torch tensors): each
    name, dtype, shape and bytes, in name order. Recorded at conversion as `tensors_sha256` in
    the file's `als_det` record, and checked when it is loaded: a tensor altered in place (even
    with its shape kept) no longer matches."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        value = arrays[name]
        a = np.ascontiguousarray(value.numpy() if isinstance(value, torch.Tensor) else value)
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def conversion_metadata(
    source: Path, depth: int, meta: Mapping[str, Any], unsafe_load: bool = False
) -> dict[str, Any]:
    """What the `.pkl` records about where its weights came from (see pretrained/README.md);
    `unsafe_load`: reading the source needed full unpickling (`--unsafe-load`)."""
    out: dict[str, Any] = {
        "source": str(source.resolve()),
        "source_sha256": sha256_file(source),
        "unsafe_load": unsafe_load,
        "depth": depth,
        "arch": f"resnet{depth}",
        "versions": package_versions(),
        "revision": code_revision(),
    }
    for key, name in (
        ("label_strategy", "label_strategy"),
        ("preprocessing", "preprocessing"),
        ("config", "pretrain_config"),
        ("epoch", "pretrain_epoch"),
        ("metrics", "pretrain_metrics"),
        ("seed", "pretrain_seed"),
        ("classes", "pretrain_classes"),
        ("versions", "pretrain_versions"),
    ):
        if key in meta:
            out[name] = meta[key]
    return out


@dataclass
class Conversion:
    """A checked conversion, not written yet: where it goes, the `.pkl`'s content, and the source
    state_dict it must reproduce."""

    output: Path
    content: dict[str, Any]
    source_state_dict: dict[str, torch.Tensor]

    def result(self) -> dict[str, Any]:
        """What a conversion tells its caller: {"output", "num_tensors", "als_det": metadata,
        "verify": None (a verified conversion fills it)}."""
        return {
            "output": str(self.output),
            "num_tensors": len(self.content["model"]),
            "als_det": self.content["als_det"],
            "verify": None,
        }


def prepare_conversion(
    input: str | os.PathLike,
    output: str | os.PathLike,
    force: bool = False,
    unsafe_load: bool = False,
) -> Conversion:
    """Read and convert `input` (.pth) for `output` (.pkl); every check before anything is written.

    `input` is read with `weights_only=True`; `unsafe_load` allows full unpickling of a trusted
    file that needs it (recorded as `unsafe_load` in the output's `als_det` metadata)."""
    source, output = Path(input), Path(output)
    if output.suffix != ".pkl":
        raise ConversionError(
            f"{output}: the output must end in .pkl (detectron2 reads .pkl "
            "files as converted model-zoo weights)"
        )
    if output.is_dir():
        raise ConversionError(f"{output} is a folder: OUTPUT names the .pkl file to write")
    check_output_folder(output.parent, "OUTPUT's folder")
    if output.exists() and not force:
        raise ConversionError(f"{output}: already exists (use force=True / --force to replace it)")
    checkpoint = load_checkpoint_file(source, unsafe_load=unsafe_load)
    state_dict, meta = checkpoint.state_dict, checkpoint.metadata
    depth = infer_depth(state_dict, str(source))
    if "arch" in meta and meta["arch"] != f"resnet{depth}":
        raise ConversionError(
            f"{source}: records arch {meta['arch']!r} but its tensors are a resnet{depth}"
        )
    content = {
        "model": convert_torchvision_resnet(state_dict, str(source)),
        "__author__": AUTHOR,
        "matching_heuristics": True,
        "als_det": conversion_metadata(source, depth, meta, checkpoint.unsafe_load),
    }
    content["als_det"]["tensors_sha256"] = tensors_digest(content["model"])
    return Conversion(output, content, state_dict)


def convert_file(
    input: str | os.PathLike,
    output: str | os.PathLike,
    force: bool = False,
    *,
    unsafe_load: bool = False,
) -> dict[str, Any]:
    """Convert `input` (.pth) to detectron2 `output` (.pkl), written atomically, unverified
    (`als_det.detection.verify.convert_verified` proves it first); returns
    `Conversion.result()`."""
    conversion = prepare_conversion(input, output, force, unsafe_load)
    atomic_pickle_dump(conversion.output, conversion.content)
    return conversion.result()
