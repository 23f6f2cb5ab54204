"""torchvision ResNet checkpoint -> detectron2 backbone `.pkl`, and a proof that it loads right.

The output follows detectron2's own `tools/convert-torchvision-to-d2.py`: short names (`stem.conv1`,
`res2.0.conv1`, ...) with `matching_heuristics: True`, so `DetectionCheckpointer` suffix-matches
them to `backbone.bottom_up.*` (FPN) and to `backbone.*` + `roi_heads.res5.*` (C4) alike.
Extra top-level keys (our `als_det` metadata) are returned unused by the checkpointer's `load`.
"""
from __future__ import annotations

import logging
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torchvision

from als_det.io import atomic_pickle_dump, sha256_file
from als_det.models import RESNET_LAYOUTS
from als_det.versions import package_versions
from als_det.weights_io import (WeightsFileError, read_detectron2_pickle, read_torch_file,
                                strip_wrapper_prefixes)

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VERIFY_CONFIG = REPO_ROOT / "configs" / "detection" / "faster_rcnn_R_50_FPN_1x.yaml"
VERIFY_TOLERANCE = 1e-4
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


def extract_state_dict(obj: Any, source: str = "<state_dict>"
                       ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A bare state_dict or a checkpoint dict with `model`/`state_dict` -> (state_dict, metadata)."""
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{source}: holds a {type(obj).__name__}, not a state_dict or a "
                              "checkpoint dict")
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
        raise ConversionError(f"{source}: not a state_dict (non-tensor entries {non_tensors[:5]}); "
                              "expected a state_dict or a dict with a 'model'/'state_dict' key")
    return {strip_wrapper_prefixes(k): v for k, v in obj.items()}, meta


def infer_depth(state_dict: Mapping[str, torch.Tensor], source: str = "<state_dict>") -> int:
    """ResNet depth from block counts per layer and the block type (conv3 = Bottleneck)."""
    if "conv1.weight" not in state_dict or not any(k.startswith("layer1.") for k in state_dict):
        raise ConversionError(f"{source}: not a torchvision ResNet state_dict (no conv1/layer1 "
                              f"keys; first keys {list(state_dict)[:5]})")
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
    raise ConversionError(f"{source}: unknown ResNet layout ({kind}, blocks per layer {blocks}); "
                          f"supported depths {sorted(RESNET_LAYOUTS)}")


def backbone_state_dict(state_dict: Mapping[str, torch.Tensor], depth: int,
                        source: str = "<state_dict>") -> dict[str, torch.Tensor]:
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
    shapes = [f"{k} {tuple(given[k].shape)} != {expected[k]}"
              for k in sorted(set(given) & set(expected)) if tuple(given[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} backbone tensors {missing[:5]}")
    if extra:
        problems.append(f"{len(extra)} unexpected tensors {extra[:5]}")
    if shapes:
        problems.append(f"{len(shapes)} tensors of the wrong shape: {shapes[:3]}")
    if problems:
        raise ConversionError(f"{source}: not a torchvision resnet{depth} backbone: "
                              + "; ".join(problems))
    return {k: given[k] for k in expected}


def _is_backbone_key(key: str) -> bool:
    return not key.startswith("fc.") and not key.endswith("num_batches_tracked")


# ----------------------------------------------------------------------------- renaming
def d2_name(key: str) -> str:
    """torchvision backbone name -> detectron2 ResNet name (e.g. layer1.0.bn2.weight ->
    res2.0.conv2.norm.weight; layer2.0.downsample.1.running_var -> res3.0.shortcut.norm.running_var)."""
    if key in _STEM:
        return _STEM[key]
    if key.startswith("bn1."):
        return "stem.conv1.norm." + key[len("bn1."):]
    m = _BLOCK_RE.match(key)
    if not m:
        raise ConversionError(f"no detectron2 name for torchvision key {key!r}")
    layer, index, module, param = m.groups()
    stage = f"res{int(layer) + 1}.{index}"
    if module.startswith("conv"):
        return f"{stage}.{module}.{param}"
    if module.startswith("bn"):
        return f"{stage}.conv{module[2:]}.norm.{param}"
    return f"{stage}.shortcut.{param}" if module == "downsample.0" else f"{stage}.shortcut.norm.{param}"


def convert_torchvision_resnet(state_dict: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A torchvision ResNet state_dict -> {detectron2 name: float numpy array} of its backbone."""
    state_dict = {strip_wrapper_prefixes(k): v for k, v in state_dict.items()}
    depth = infer_depth(state_dict)
    backbone = backbone_state_dict(state_dict, depth)
    return {d2_name(k): v.detach().cpu().numpy().copy() for k, v in backbone.items()}


# ----------------------------------------------------------------------------- files
def conversion_metadata(source: Path, depth: int, meta: Mapping[str, Any],
                        unsafe_load: bool = False) -> dict[str, Any]:
    """What the `.pkl` records about where its weights came from (see pretrained/README.md);
    `unsafe_load`: reading the source needed full unpickling (`--unsafe-load`)."""
    out: dict[str, Any] = {
        "source": str(source.resolve()),
        "source_sha256": sha256_file(source),
        "unsafe_load": unsafe_load,
        "depth": depth,
        "arch": f"resnet{depth}",
        "versions": package_versions(),
    }
    for key, name in (("label_strategy", "label_strategy"), ("preprocessing", "preprocessing"),
                      ("config", "pretrain_config"), ("epoch", "pretrain_epoch"),
                      ("metrics", "pretrain_metrics"), ("seed", "pretrain_seed"),
                      ("classes", "pretrain_classes"), ("versions", "pretrain_versions")):
        if key in meta:
            out[name] = meta[key]
    return out


def convert_file(input: str | os.PathLike, output: str | os.PathLike, force: bool = False, *,
                 verify_config: str | os.PathLike | None = None, verify_size: int = 0,
                 unsafe_load: bool = False) -> dict[str, Any]:
    """Convert `input` (.pth) to detectron2 `output` (.pkl), written atomically.

    `input` is read with `weights_only=True`; `unsafe_load` allows full unpickling of a trusted
    file that needs it (recorded as `unsafe_load` in the output's `als_det` metadata).
    With `verify_size > 0` the file is first written beside `output` under a temporary name,
    verified (see `verify`) with a `verify_size`-pixel input, and only moved into place if it
    passes; otherwise a `VerificationFailed` is raised and nothing is written.
    Returns {"output", "num_tensors", "als_det": metadata, "verify": VerifyResult dict or None}.
    """
    source, output = Path(input), Path(output)
    if output.suffix != ".pkl":
        raise ConversionError(f"{output}: the output must end in .pkl (detectron2 reads .pkl "
                              "files as converted model-zoo weights)")
    if output.exists() and not force:
        raise ConversionError(f"{output}: already exists (use force=True / --force to replace it)")
    checkpoint = load_checkpoint_file(source, unsafe_load=unsafe_load)
    state_dict, meta = checkpoint.state_dict, checkpoint.metadata
    depth = infer_depth(state_dict, str(source))
    if "arch" in meta and meta["arch"] != f"resnet{depth}":
        raise ConversionError(f"{source}: records arch {meta['arch']!r} but its tensors are a "
                              f"resnet{depth}")
    backbone = backbone_state_dict(state_dict, depth, str(source))
    converted = {
        "model": {d2_name(k): v.detach().cpu().numpy().copy() for k, v in backbone.items()},
        "__author__": AUTHOR,
        "matching_heuristics": True,
        "als_det": conversion_metadata(source, depth, meta, checkpoint.unsafe_load),
    }
    result: dict[str, Any] = {"output": str(output), "num_tensors": len(converted["model"]),
                              "als_det": converted["als_det"], "verify": None}
    if verify_size <= 0:
        atomic_pickle_dump(output, converted)
        return result
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.stem}.", suffix=".verify.pkl", dir=output.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        atomic_pickle_dump(tmp, converted)
        checked = verify(tmp, state_dict, config_file=verify_config, input_size=verify_size)
        checked.pkl = str(output)  # report the destination, not the temporary name
        result["verify"] = checked.to_dict()
        if not checked.ok:
            raise VerificationFailed(checked)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return result


# ----------------------------------------------------------------------------- verification
@dataclass
class VerifyResult:
    """Outcome of `verify`: `ok` only if every backbone tensor loaded exactly and outputs match."""
    pkl: str
    config_file: str
    depth: int
    expected_tensors: int                  # backbone tensors the detectron2 model has
    loaded_tensors: int                    # of those, loaded by the checkpointer, equal to source
    max_abs_diff: dict[str, float] = field(default_factory=dict)   # res2..res5 vs torchvision
    problems: list[str] = field(default_factory=list)
    tolerance: float = VERIFY_TOLERANCE

    @property
    def max_diff(self) -> float:
        return max(self.max_abs_diff.values(), default=math.inf)

    @property
    def ok(self) -> bool:
        return (not self.problems and self.loaded_tensors == self.expected_tensors > 0
                and self.max_diff < self.tolerance)

    def summary(self) -> str:
        diffs = ", ".join(f"{k} {v:.3g}" for k, v in self.max_abs_diff.items())
        lines = [f"{'OK' if self.ok else 'FAILED'}: {self.pkl} in {Path(self.config_file).name} "
                 f"(resnet{self.depth}): loaded {self.loaded_tensors}/{self.expected_tensors} "
                 f"backbone tensors; max |d2 - torchvision| = {self.max_diff:.3g} "
                 f"(tolerance {self.tolerance:g}; {diffs})"]
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "max_diff": self.max_diff}


class VerificationFailed(ConversionError):
    """`verify` found a converted file that does not reproduce its torchvision source."""

    def __init__(self, result: VerifyResult):
        super().__init__(result.summary())
        self.result = result


def verify(pkl_path: str | os.PathLike, state_dict_or_input: Mapping[str, torch.Tensor] | str | os.PathLike,
           config_file: str | os.PathLike | None = None, input_size: int = 224, batch: int = 2,
           seed: int = 0, unsafe_load: bool = False) -> VerifyResult:
    """Load `pkl_path` into a detectron2 model the way a fine-tune does and compare with torchvision.

    Builds the whole detectron2 model from `config_file` (default: our R50-FPN 1x config, depth and
    RES2_OUT_CHANNELS set from the source), loads the file through `DetectionCheckpointer`, then
    checks that (1) no backbone tensor is missing, misshapen or left over, (2) every backbone tensor
    equals its torchvision source exactly, (3) res2..res5 on random input match torchvision's
    layer1..layer4 (eval mode, float64) within `VERIFY_TOLERANCE`. Both files are read without
    full unpickling (`unsafe_load` allows it for a trusted source `.pth` that needs it).
    """
    from detectron2.modeling import build_model
    from detectron2.modeling.backbone import ResNet
    from torchvision.models.feature_extraction import create_feature_extractor

    from als_det.detection.checkpoint import RecordingCheckpointer
    from als_det.detection.config import MODEL_ZOO_PREFIX, get_detection_cfg

    pkl_path = Path(pkl_path)
    config_file = str(config_file or DEFAULT_VERIFY_CONFIG)
    if not (config_file.startswith(MODEL_ZOO_PREFIX) or Path(config_file).is_file()):
        raise ConversionError(f"{config_file}: no such detection config")
    if not pkl_path.is_file():
        raise ConversionError(f"{pkl_path}: no such file")
    if isinstance(state_dict_or_input, (str, os.PathLike)):
        source_sd = load_checkpoint_file(state_dict_or_input, unsafe_load).state_dict
        source = str(state_dict_or_input)
    else:
        source_sd, _ = extract_state_dict(state_dict_or_input)
        source = "<state_dict>"
    depth = infer_depth(source_sd, source)
    source_sd = backbone_state_dict(source_sd, depth, source)
    try:
        data, _ = read_detectron2_pickle(pkl_path)
    except WeightsFileError as err:
        raise ConversionError(str(err)) from err
    if not (isinstance(data, dict) and data.get("__author__") == AUTHOR and "model" in data):
        raise ConversionError(f"{pkl_path}: not an {AUTHOR} detectron2 conversion")
    file_model: dict[str, np.ndarray] = data["model"]

    cfg = get_detection_cfg(config_file, [
        "MODEL.RESNETS.DEPTH", str(depth),
        "MODEL.RESNETS.RES2_OUT_CHANNELS", "64" if depth < 50 else "256",
        "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    c4 = cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeads"
    if c4 and depth < 50:
        raise ConversionError(f"{config_file}: a C4 model's res5 head needs a Bottleneck ResNet "
                              f"(depth >= 50), not resnet{depth}")
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4"] if c4 else ["res2", "res3", "res4", "res5"]
    result = VerifyResult(pkl=str(pkl_path), config_file=config_file, depth=depth,
                          expected_tensors=0, loaded_tensors=0)
    meta = data.get(AUTHOR, {})
    if meta.get("depth", depth) != depth:
        result.problems.append(f"file records depth {meta['depth']}, source is resnet{depth}")
    prep = meta.get("preprocessing")
    if prep is not None:
        wanted = {"input_format": cfg.INPUT.FORMAT, "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
                  "pixel_std": list(cfg.MODEL.PIXEL_STD)}
        for key, value in wanted.items():
            if key in prep and not _same(prep[key], value):
                result.problems.append(f"pretraining {key} {prep[key]} != config {value}")

    model = build_model(cfg).eval()
    bottom_up = getattr(model.backbone, "bottom_up", model.backbone)
    if not isinstance(bottom_up, ResNet):
        raise ConversionError(f"{config_file}: the backbone is a {type(bottom_up).__name__}, not "
                              "detectron2's ResNet")
    prefix = "backbone.bottom_up." if bottom_up is not model.backbone else "backbone."
    # model prefix -> (ResNet part, its prefix in the file)
    parts = {prefix: (bottom_up, "")}
    if c4:
        parts["roi_heads.res5."] = (model.roi_heads.res5, "res5.")
    expected = {p + k: fp + k for p, (part, fp) in parts.items() for k in part.state_dict()}
    result.expected_tensors = len(expected)

    checkpointer = RecordingCheckpointer(model, save_to_disk=False, log_incompatible=False)
    checkpointer.load(str(pkl_path), checkpointables=[])
    inc = checkpointer.incompatible
    missing = sorted(set(expected) - checkpointer.supplied)
    if missing:
        result.problems.append(f"{len(missing)} backbone tensors not loaded: {missing[:5]}")
    if inc.unexpected_keys:
        result.problems.append(f"{len(inc.unexpected_keys)} file tensors matched nothing: "
                               f"{sorted(inc.unexpected_keys)[:5]}")
    if inc.incorrect_shapes:
        result.problems.append(f"{len(inc.incorrect_shapes)} tensors of the wrong shape: "
                               f"{inc.incorrect_shapes[:3]}")
    unused = sorted(set(file_model) - set(expected.values()))
    if unused:
        result.problems.append(f"{len(unused)} file tensors have no place in the model: {unused[:5]}")

    by_d2_name = {d2_name(k): v for k, v in source_sd.items()}
    model_sd = model.state_dict()
    misloaded, wrong = [], []
    for model_key, file_key in expected.items():
        if model_key in missing:
            continue
        if file_key not in file_model or not torch.equal(
                model_sd[model_key], torch.as_tensor(file_model[file_key])):
            misloaded.append(model_key)
        elif file_key not in by_d2_name or not torch.equal(model_sd[model_key], by_d2_name[file_key]):
            wrong.append(file_key)
        else:
            result.loaded_tensors += 1
    if misloaded:
        result.problems.append(f"{len(misloaded)} model tensors do not hold their file tensor: "
                               f"{misloaded[:5]}")
    if wrong:
        result.problems.append(f"{len(wrong)} file tensors differ from the source: {wrong[:5]}")

    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    reference.load_state_dict(source_sd, strict=False)
    features = create_feature_extractor(
        reference, {"layer1": "res2", "layer2": "res3", "layer3": "res4", "layer4": "res5"})
    features.double().eval()
    for part, _ in parts.values():
        part.double()
    x = torch.randn(batch, 3, input_size, input_size, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ours = bottom_up(x)
        if c4:
            ours["res5"] = model.roi_heads.res5(ours["res4"])
        theirs = features(x)
    for name in ("res2", "res3", "res4", "res5"):
        result.max_abs_diff[name] = float((ours[name] - theirs[name]).abs().max())
    return result


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return len(a) == len(b) and all(abs(float(x) - float(y)) < 1e-6 for x, y in zip(a, b))
