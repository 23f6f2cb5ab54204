"""The proof that a converted backbone loads right: `verify` builds the detectron2 model a fine-tune
builds, loads the `.pkl` through the suite's `DetectionCheckpointer`, and compares every backbone
tensor and the res2..res5 outputs with the torchvision source; `convert_verified` publishes a
conversion only once it passes.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from detectron2.modeling import build_model
from detectron2.modeling.backbone import ResNet
from torchvision.models.feature_extraction import create_feature_extractor

from als_det.convert import (
    AUTHOR,
    ConversionError,
    backbone_state_dict,
    d2_name,
    extract_state_dict,
    infer_depth,
    load_checkpoint_file,
    prepare_conversion,
)
from als_det.detection.checkpoint import RecordingCheckpointer
from als_det.detection.config import MODEL_ZOO_PREFIX, DetectionCfgNode, get_detection_cfg
from als_det.io import atomic_pickle_dump
from als_det.weights_io import WeightsFileError, read_detectron2_pickle

DEFAULT_VERIFY_CONFIG = (
    Path(__file__).resolve().parents[2] / "configs" / "detection" / "faster_rcnn_R_50_FPN_1x.yaml"
)
VERIFY_TOLERANCE = 1e-4


@dataclass
class VerifyResult:
    """Outcome of `verify`: `ok` only if every backbone tensor loaded exactly and outputs match."""

    pkl: str
    config_file: str
    depth: int
    expected_tensors: int  # backbone tensors the detectron2 model has
    loaded_tensors: int  # of those, loaded by the checkpointer, equal to source
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # res2..res5 vs torchvision
    problems: list[str] = field(default_factory=list)
    tolerance: float = VERIFY_TOLERANCE

    @property
    def max_diff(self) -> float:
        return max(self.max_abs_diff.values(), default=math.inf)

    @property
    def ok(self) -> bool:
        return (
            not self.problems
            and self.loaded_tensors == self.expected_tensors > 0
            and self.max_diff < self.tolerance
        )

    def summary(self) -> str:
        diffs = ", ".join(f"{k} {v:.3g}" for k, v in self.max_abs_diff.items())
        lines = [
            f"{'OK' if self.ok else 'FAILED'}: {self.pkl} in {Path(self.config_file).name} "
            f"(resnet{self.depth}): loaded {self.loaded_tensors}/{self.expected_tensors} "
            f"backbone tensors; max |d2 - torchvision| = {self.max_diff:.3g} "
            f"(tolerance {self.tolerance:g}; {diffs})"
        ]
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "max_diff": self.max_diff}


class VerificationFailed(ConversionError):
    """`verify` found a converted file that does not reproduce its torchvision source."""

    def __init__(self, result: VerifyResult):
        super().__init__(result.summary())
        self.result = result


def _source_backbone(
    source: Mapping[str, torch.Tensor] | str | os.PathLike, unsafe_load: bool
) -> tuple[dict[str, torch.Tensor], int]:
    """The torchvision source's backbone tensors and its depth (a `.pth` path or a state_dict)."""
    if isinstance(source, (str, os.PathLike)):
        state_dict, name = load_checkpoint_file(source, unsafe_load).state_dict, str(source)
    else:
        (state_dict, _), name = extract_state_dict(source), "<state_dict>"
    depth = infer_depth(state_dict, name)
    return backbone_state_dict(state_dict, depth, name), depth


def _read_conversion(pkl_path: Path) -> dict[str, Any]:
    try:
        data, _ = read_detectron2_pickle(pkl_path)
    except WeightsFileError as err:
        raise ConversionError(str(err)) from err
    if not (isinstance(data, dict) and data.get("__author__") == AUTHOR and "model" in data):
        raise ConversionError(f"{pkl_path}: not an {AUTHOR} detectron2 conversion")
    return data


def _verify_config(config_file: str, depth: int) -> tuple[DetectionCfgNode, bool]:
    """The detection config at the source's depth, and whether it is a C4 model (res5 in the
    head)."""
    cfg = get_detection_cfg(
        config_file,
        [
            "MODEL.RESNETS.DEPTH",
            str(depth),
            "MODEL.RESNETS.RES2_OUT_CHANNELS",
            "64" if depth < 50 else "256",
            "MODEL.WEIGHTS",
            "",
            "MODEL.DEVICE",
            "cpu",
        ],
    )
    c4 = cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeads"
    if c4 and depth < 50:
        raise ConversionError(
            f"{config_file}: a C4 model's res5 head needs a Bottleneck ResNet "
            f"(depth >= 50), not resnet{depth}"
        )
    cfg.MODEL.RESNETS.OUT_FEATURES = (
        ["res2", "res3", "res4"] if c4 else ["res2", "res3", "res4", "res5"]
    )
    return cfg, c4


def _check_metadata(result: VerifyResult, meta: dict[str, Any], cfg: DetectionCfgNode) -> None:
    """The file's recorded depth and preprocessing against the source and the config."""
    if meta.get("depth", result.depth) != result.depth:
        result.problems.append(
            f"file records depth {meta['depth']}, source is resnet{result.depth}"
        )
    prep = meta.get("preprocessing")
    if prep is None:
        return
    wanted = {
        "input_format": cfg.INPUT.FORMAT,
        "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
        "pixel_std": list(cfg.MODEL.PIXEL_STD),
    }
    for key, value in wanted.items():
        if key in prep and not _same(prep[key], value):
            result.problems.append(f"pretraining {key} {prep[key]} != config {value}")


def _backbone_parts(
    model: torch.nn.Module, c4: bool, config_file: str
) -> tuple[ResNet, dict[str, tuple[torch.nn.Module, str]]]:
    """The model's ResNet and its parts: model key prefix -> (module, its key prefix in the
    file)."""
    bottom_up = getattr(model.backbone, "bottom_up", model.backbone)
    if not isinstance(bottom_up, ResNet):
        raise ConversionError(
            f"{config_file}: the backbone is a {type(bottom_up).__name__}, not detectron2's ResNet"
        )
    parts = {
        "backbone.bottom_up." if bottom_up is not model.backbone else "backbone.": (bottom_up, "")
    }
    if c4:
        parts["roi_heads.res5."] = (model.roi_heads.res5, "res5.")
    return bottom_up, parts


def _check_loading(
    result: VerifyResult,
    checkpointer: RecordingCheckpointer,
    expected: dict[str, str],
    file_model: dict[str, np.ndarray],
    source_sd: dict[str, torch.Tensor],
) -> None:
    """Every backbone tensor loaded from the file, holding exactly its source tensor."""
    inc = checkpointer.incompatible
    missing = sorted(set(expected) - checkpointer.supplied)
    if missing:
        result.problems.append(f"{len(missing)} backbone tensors not loaded: {missing[:5]}")
    if inc.unexpected_keys:
        result.problems.append(
            f"{len(inc.unexpected_keys)} file tensors matched nothing: "
            f"{sorted(inc.unexpected_keys)[:5]}"
        )
    if inc.incorrect_shapes:
        result.problems.append(
            f"{len(inc.incorrect_shapes)} tensors of the wrong shape: {inc.incorrect_shapes[:3]}"
        )
    unused = sorted(set(file_model) - set(expected.values()))
    if unused:
        result.problems.append(
            f"{len(unused)} file tensors have no place in the model: {unused[:5]}"
        )
    by_d2_name = {d2_name(k): v for k, v in source_sd.items()}
    model_sd = checkpointer.model.state_dict()
    misloaded, wrong = [], []
    for model_key, file_key in expected.items():
        if model_key in missing:
            continue
        if file_key not in file_model or not torch.equal(
            model_sd[model_key], torch.as_tensor(file_model[file_key])
        ):
            misloaded.append(model_key)
        elif file_key not in by_d2_name or not torch.equal(
            model_sd[model_key], by_d2_name[file_key]
        ):
            wrong.append(file_key)
        else:
            result.loaded_tensors += 1
    if misloaded:
        result.problems.append(
            f"{len(misloaded)} model tensors do not hold their file tensor: {misloaded[:5]}"
        )
    if wrong:
        result.problems.append(f"{len(wrong)} file tensors differ from the source: {wrong[:5]}")


def _compare_outputs(
    result: VerifyResult,
    model: torch.nn.Module,
    bottom_up: ResNet,
    c4: bool,
    source_sd: dict[str, torch.Tensor],
    x: torch.Tensor,
) -> None:
    """res2..res5 of the loaded model against torchvision's layer1..layer4, in float64."""
    reference = getattr(torchvision.models, f"resnet{result.depth}")(weights=None)
    reference.load_state_dict(source_sd, strict=False)
    features = create_feature_extractor(
        reference, {"layer1": "res2", "layer2": "res3", "layer3": "res4", "layer4": "res5"}
    )
    features.double().eval()
    bottom_up.double()
    if c4:
        model.roi_heads.res5.double()
    with torch.no_grad():
        ours = bottom_up(x)
        if c4:
            ours["res5"] = model.roi_heads.res5(ours["res4"])
        theirs = features(x)
    for name in ("res2", "res3", "res4", "res5"):
        result.max_abs_diff[name] = float((ours[name] - theirs[name]).abs().max())


def verify(
    pkl_path: str | os.PathLike,
    state_dict_or_input: Mapping[str, torch.Tensor] | str | os.PathLike,
    config_file: str | os.PathLike | None = None,
    input_size: int = 224,
    batch: int = 2,
    seed: int = 0,
    unsafe_load: bool = False,
) -> VerifyResult:
    """Load `pkl_path` into a detectron2 model the way a fine-tune does and compare with
    torchvision.

    Builds the whole detectron2 model from `config_file` (default: our R50-FPN 1x config, depth and
    RES2_OUT_CHANNELS set from the source), loads the file through `DetectionCheckpointer`, then
    checks that (1) no backbone tensor is missing, misshapen or left over, (2) every backbone tensor
    equals its torchvision source exactly, (3) res2..res5 on random input match torchvision's
    layer1..layer4 (eval mode, float64) within `VERIFY_TOLERANCE`. Both files are read without
    full unpickling (`unsafe_load` allows it for a trusted source `.pth` that needs it).
    """
    pkl_path = Path(pkl_path)
    config_file = str(config_file or DEFAULT_VERIFY_CONFIG)
    if not (config_file.startswith(MODEL_ZOO_PREFIX) or Path(config_file).is_file()):
        raise ConversionError(f"{config_file}: no such detection config")
    if not pkl_path.is_file():
        raise ConversionError(f"{pkl_path}: no such file")
    source_sd, depth = _source_backbone(state_dict_or_input, unsafe_load)
    data = _read_conversion(pkl_path)
    cfg, c4 = _verify_config(config_file, depth)
    result = VerifyResult(
        pkl=str(pkl_path),
        config_file=config_file,
        depth=depth,
        expected_tensors=0,
        loaded_tensors=0,
    )
    _check_metadata(result, data.get(AUTHOR, {}), cfg)
    model = build_model(cfg).eval()
    bottom_up, parts = _backbone_parts(model, c4, config_file)
    expected = {p + k: fp + k for p, (part, fp) in parts.items() for k in part.state_dict()}
    result.expected_tensors = len(expected)
    checkpointer = RecordingCheckpointer(model, save_to_disk=False, log_incompatible=False)
    checkpointer.load(str(pkl_path), checkpointables=[])
    _check_loading(result, checkpointer, expected, data["model"], source_sd)
    x = torch.randn(
        batch,
        3,
        input_size,
        input_size,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(seed),
    )
    _compare_outputs(result, model, bottom_up, c4, source_sd, x)
    return result


def convert_verified(
    input: str | os.PathLike,
    output: str | os.PathLike,
    force: bool = False,
    *,
    config_file: str | os.PathLike | None = None,
    input_size: int = 224,
    unsafe_load: bool = False,
) -> dict[str, Any]:
    """`als_det.convert.convert_file`, proven before it is published: the file is written beside
    `output` under a temporary name, verified (`verify`, an `input_size`-pixel input in
    `config_file`'s model), and moved into place only if it passes; otherwise a
    `VerificationFailed` is raised and nothing is written. Returns the conversion's result with
    "verify": the VerifyResult as a dict."""
    conversion = prepare_conversion(input, output, force, unsafe_load)
    output = conversion.output
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{output.stem}.", suffix=".verify.pkl", dir=output.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        atomic_pickle_dump(tmp, conversion.content)
        checked = verify(
            tmp, conversion.source_state_dict, config_file=config_file, input_size=input_size
        )
        checked.pkl = str(output)  # report the destination, not the temporary name
        if not checked.ok:
            raise VerificationFailed(checked)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return {**conversion.result(), "verify": checked.to_dict()}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return len(a) == len(b) and all(abs(float(x) - float(y)) < 1e-6 for x, y in zip(a, b))
