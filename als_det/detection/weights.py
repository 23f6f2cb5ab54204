"""Strict loading of a pretrained backbone into a detectron2 model.

detectron2 loads `MODEL.WEIGHTS` leniently: keys it cannot match are logged and left at their
random initialisation, and `FrozenBatchNorm2d` fills missing running statistics with 0/1. For a
transfer experiment that silently measures a random backbone, so here every backbone (bottom-up)
parameter and buffer must come from the file itself, and the file's recorded preprocessing (from
`als_det.convert`, key `"als_det"`) must match the config. The file is read without full
unpickling (`als_det.detection.checkpoint`) unless the caller passes `unsafe_load`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from detectron2.config import CfgNode
from detectron2.utils.file_io import PathManager
from torch import nn

from als_det.detection.checkpoint import RecordingCheckpointer
from als_det.io import sha256_file
from als_det.weights_io import UnsafeFileError

logger = logging.getLogger(__name__)

CONVERT_HINT = (
    "A torchvision or als_det pretraining .pth must be converted first: "
    "python tools/convert_to_d2.py CHECKPOINT.pth pretrained/NAME.pkl --verify"
)


class WeightsError(ValueError):
    """MODEL.WEIGHTS cannot be used as asked; the message names the file and the fix."""


@dataclass
class BackboneLoad:
    """Where the backbone came from and how much of it the file supplied."""

    path: str
    sha256: str | None
    backbone_tensors: int
    loaded_tensors: int
    metadata: dict[str, Any] | None = None  # the file's "als_det" record (from als_det.convert)
    missing: list[str] = field(default_factory=list)
    # When the file is a checkpoint of an als_det fine-tuning run: that run's backbone record.
    finetuned_from: dict[str, Any] | None = None
    iteration: int | None = None
    # ... and how it was fine-tuned (`als_det.detection.results.training_record`), when recorded.
    training: dict[str, Any] | None = None
    unsafe_load: bool = False  # reading the file needed full unpickling (--unsafe-load)
    # The tensors differ from the digest the conversion recorded (--allow-modified-weights); None
    # when the file records none.
    tensors_modified: bool | None = None

    def provenance(self) -> dict[str, Any]:
        """The `backbone` entry of results.json: the pretrained file, its label strategy and
        pretraining config; for a fine-tuned checkpoint, that run's record plus the checkpoint."""
        if self.finetuned_from:
            return {
                **self.finetuned_from,
                "checkpoint": self.path,
                "checkpoint_sha256": self.sha256,
                "checkpoint_iteration": self.iteration,
                "checkpoint_unsafe_load": self.unsafe_load,
            }
        meta = self.metadata or {}
        return {
            "path": self.path,
            "sha256": self.sha256,
            "unsafe_load": self.unsafe_load,
            "label_strategy": meta.get("label_strategy"),
            "pretrain_config": meta.get("pretrain_config"),
            "source": meta.get("source"),
            "source_sha256": meta.get("source_sha256"),
            "source_unsafe_load": meta.get("unsafe_load"),
            "depth": meta.get("depth"),
            "preprocessing": meta.get("preprocessing"),
            "pretrain_seed": meta.get("pretrain_seed"),
            "pretrain_epoch": meta.get("pretrain_epoch"),
            "backbone_tensors": self.backbone_tensors,
            "loaded_tensors": self.loaded_tensors,
            "tensors_sha256": meta.get("tensors_sha256"),
            "tensors_modified": self.tensors_modified,
        }


def backbone_prefixes(model: nn.Module) -> list[str]:
    """State-dict prefixes of the pretrained part: the FPN's bottom-up ResNet (or the backbone
    itself when there is no FPN) and, for C4 models, the res5 stage inside the ROI heads."""
    prefixes = ["backbone.bottom_up."] if hasattr(model.backbone, "bottom_up") else ["backbone."]
    if hasattr(getattr(model, "roi_heads", None), "res5"):
        prefixes.append("roi_heads.res5.")
    return prefixes


def backbone_keys(model: nn.Module) -> list[str]:
    """Every backbone parameter and buffer name, except BN's `num_batches_tracked` counters."""
    prefixes = tuple(backbone_prefixes(model))
    return [
        k
        for k in model.state_dict()
        if k.startswith(prefixes) and not k.endswith("num_batches_tracked")
    ]


def check_preprocessing(cfg: CfgNode, metadata: dict[str, Any] | None, path: str) -> None:
    """Refuse a backbone pretrained on other input than the config feeds it (channel order,
    normalisation, depth). Files without an `als_det` record cannot be checked: logged."""
    if not metadata or "preprocessing" not in metadata:
        logger.warning(
            "%s records no preprocessing (not written by als_det.convert): cannot check "
            "that INPUT.FORMAT / MODEL.PIXEL_MEAN / MODEL.PIXEL_STD match it",
            path,
        )
        return
    pre = metadata["preprocessing"]
    problems = []
    if pre.get("input_format") != cfg.INPUT.FORMAT:
        problems.append(
            f"input_format {pre.get('input_format')!r} vs INPUT.FORMAT {cfg.INPUT.FORMAT!r}"
        )
    for key, cfg_key in (("pixel_mean", "PIXEL_MEAN"), ("pixel_std", "PIXEL_STD")):
        ours = list(getattr(cfg.MODEL, cfg_key))
        if pre.get(key) is None or not np.allclose(pre[key], ours, rtol=0, atol=1e-3):
            problems.append(f"{key} {pre.get(key)} vs MODEL.{cfg_key} {ours}")
    depth = metadata.get("depth")
    if depth is not None and int(depth) != cfg.MODEL.RESNETS.DEPTH:
        problems.append(f"depth {depth} vs MODEL.RESNETS.DEPTH {cfg.MODEL.RESNETS.DEPTH}")
    if problems:
        raise WeightsError(
            f"{path} was pretrained with different preprocessing than the config: "
            + "; ".join(problems)
        )


def _unfilled_backbone_keys(
    checkpointer: RecordingCheckpointer, keys: list[str], path: str
) -> list[str]:
    """The backbone keys the file did not supply. Caffe2-format files without any BN statistics
    (MSRA's AffineChannel ResNets: statistics folded into scale and bias) are the one case where
    FrozenBatchNorm2d's filled-in identity statistics are what the file means."""
    missing = [k for k in keys if k not in checkpointer.supplied]
    stats = ("running_mean", "running_var")
    if checkpointer.author == "Caffe2" and not any(
        k.endswith(stats) for k in checkpointer.supplied
    ):
        folded = [k for k in missing if k.endswith(stats)]
        if folded:
            logger.info(
                "%s: a Caffe2-format file without BN statistics (AffineChannel): %d "
                "running_mean/running_var buffers keep the identity values 0/1",
                path,
                len(folded),
            )
        missing = [k for k in missing if k not in folded]
    return missing


def check_tensors_digest(
    metadata: dict[str, Any] | None, actual: str | None, path: str, allow_modified: bool
) -> bool | None:
    """Whether a converted file's tensors differ from the digest its conversion recorded (None:
    it records none). A difference is a WeightsError unless `allow_modified`."""
    recorded = (metadata or {}).get("tensors_sha256")
    if recorded is None or actual is None:
        if metadata is not None:
            logger.warning(
                "%s records no digest of its tensors (converted before als_det recorded one): "
                "cannot check that they are the converted ones",
                path,
            )
        return None
    if actual == recorded:
        return False
    msg = (
        f"{path}: its tensors are not the ones its conversion wrote (sha256 {actual[:12]}..., "
        f"recorded {recorded[:12]}...): the file was altered after conversion"
    )
    if not allow_modified:
        raise WeightsError(
            f"{msg}. Convert the pretraining checkpoint again, or pass --allow-modified-weights "
            "to fine-tune it as it is (recorded in results.json)"
        )
    logger.warning("%s; using it as it is (--allow-modified-weights)", msg)
    return True


def load_backbone_weights(
    model: nn.Module,
    cfg: CfgNode,
    allow_random_backbone: bool = False,
    path: str | None = None,
    unsafe_load: bool = False,
    allow_modified: bool = False,
) -> BackboneLoad:
    """Load `path` (default `cfg.MODEL.WEIGHTS`) into `model` through detectron2's checkpointer,
    then refuse (WeightsError) unless every backbone tensor came from the file, a converted
    file's tensors match the digest its conversion recorded (unless `allow_modified`) and its
    recorded preprocessing matches `cfg`. `allow_random_backbone` is the only way to train without
    them. `unsafe_load` allows full unpickling of a trusted file that needs it (recorded)."""
    path = cfg.MODEL.WEIGHTS if path is None else path
    keys = backbone_keys(model)
    if not path:
        if not allow_random_backbone:
            raise WeightsError(
                "MODEL.WEIGHTS is empty: the backbone would be random. Give a "
                "pretrained .pkl, or pass --allow-random-backbone to train from "
                "scratch on purpose"
            )
        logger.warning(
            "No MODEL.WEIGHTS and --allow-random-backbone: all %d backbone tensors "
            "are randomly initialised",
            len(keys),
        )
        return BackboneLoad(
            path="", sha256=None, backbone_tensors=len(keys), loaded_tensors=0, missing=keys
        )

    local = PathManager.get_local_path(path)
    checkpointer = RecordingCheckpointer(model, unsafe_load=unsafe_load)
    try:
        extra = checkpointer.load(local, checkpointables=[])
    except UnsafeFileError as e:
        raise WeightsError(str(e)) from e
    except Exception as e:  # any reader failure: name the file and say what is expected
        raise WeightsError(
            f"cannot read {path} as detectron2 weights ({type(e).__name__}: {e}). "
            f"Expected a .pkl from tools/convert_to_d2.py or a detectron2 .pth "
            f"checkpoint. {CONVERT_HINT}"
        ) from e
    modified = check_tensors_digest(
        extra.get("als_det"), checkpointer.tensors_sha256, path, allow_modified
    )
    inc = checkpointer.incompatible
    missing = _unfilled_backbone_keys(checkpointer, keys, path)
    trainer_state = extra.get("trainer") or {}
    finetuned_from = trainer_state.get("als_det_backbone") or None
    metadata = extra.get("als_det") or finetuned_from
    report = BackboneLoad(
        path=path,
        sha256=sha256_file(local),
        backbone_tensors=len(keys),
        loaded_tensors=len(keys) - len(missing),
        metadata=extra.get("als_det"),
        missing=missing,
        finetuned_from=finetuned_from,
        iteration=extra.get("iteration"),
        training=trainer_state.get("als_det_training"),
        unsafe_load=checkpointer.unsafe_used,
        tensors_modified=modified,
    )
    logger.info(
        "Backbone: %d of %d tensors loaded from %s (%d unexpected keys in the file ignored)",
        report.loaded_tensors,
        len(keys),
        path,
        len(inc.unexpected_keys),
    )
    if missing:
        shapes = [
            f"{k}: file {a} vs model {b}" for k, a, b in inc.incorrect_shapes if k in set(missing)
        ]
        msg = (
            f"{path} supplies only {report.loaded_tensors} of {len(keys)} backbone tensors; "
            f"missing or mis-shaped: {missing[:5]}{' ...' if len(missing) > 5 else ''}"
            + (f" (shape mismatches: {shapes[:3]})" if shapes else "")
        )
        if not allow_random_backbone:
            raise WeightsError(
                msg + ". Refusing to fine-tune a partly random backbone; check "
                f"MODEL.RESNETS.DEPTH and the file. {CONVERT_HINT} "
                "(--allow-random-backbone overrides)"
            )
        logger.warning(msg + "; training anyway (--allow-random-backbone)")
    check_preprocessing(cfg, metadata, path)
    return report
