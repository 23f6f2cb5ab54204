"""Pretraining configuration: fvcore CfgNode defaults, YAML files with `_BASE_`, `KEY VALUE`
overrides.

The same mechanism detectron2 uses, so pretraining and fine-tuning configs read alike.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from fvcore.common.config import CfgNode as FvcoreCfgNode

from als_det.config_files import ConfigError, SafeConfigFiles
from als_det.targets import LabelStrategy


class CN(SafeConfigFiles, FvcoreCfgNode):
    """fvcore's CfgNode (the pretraining config) reading its files safely."""


_C = CN()
_C.SEED = 0
_C.OUTPUT_DIR = "output/pretrain/default"

_C.DATA = CN()
# Root of an ImageNet-style tree (train/<wnid>/*.JPEG, val/..., Annotation/<split>/<wnid>/*.xml).
_C.DATA.ROOT = "datasets/context_bias"
# Make the embedded generated data set at ROOT when ROOT holds no finished generation.
_C.DATA.GENERATE = False
_C.DATA.TRAIN_SPLIT = "train"
_C.DATA.VAL_SPLIT = "val"
# Box source per split. "" = Pascal-VOC XML under ROOT/Annotation/<split>; a path ending in .csv =
# Kaggle LOC_*_solution.csv; any other path = a folder of XMLs (<dir>/<wnid>/<stem>.xml or flat).
_C.DATA.TRAIN_BOXES = ""
_C.DATA.VAL_BOXES = ""
# Flat val folder labels: "" = class folders; else a file with one wnid or class index per line
# (ILSVRC2012_validation_ground_truth.txt style) or LOC_val_solution.csv.
_C.DATA.VAL_LABELS = ""
_C.DATA.IMAGE_SIZE = 64  # training crop / val centre crop size
_C.DATA.VAL_RESIZE = 73  # val: resize shorter side to this, then centre crop IMAGE_SIZE
_C.DATA.CROP_SCALE = (0.08, 1.0)
_C.DATA.CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_C.DATA.NUM_WORKERS = 2
# False: bad files are skipped, counted and reported; True: the first bad file is an error.
_C.DATA.STRICT = False
_C.DATA.CACHE_DIR = ""  # "" = ROOT/.als_det_cache (falls back to OUTPUT_DIR if read-only)
_C.DATA.MAX_PER_CLASS = 0  # 0 = all; >0 keeps the first N images of each class (smoke runs)
# Where images are decoded (docs/architecture.md, "Decode paths"); the same crops on every path.
# workers: PIL in the DataLoader workers | device: workers read bytes, the training device decodes
# (nvJPEG on CUDA) | dali: NVIDIA DALI (the optional `dali` extra)
_C.DATA.DECODE = "workers"

# Generated context-bias data set (als_det.data.generated), used when DATA.GENERATE is True.
_C.DATA.GEN = CN()
_C.DATA.GEN.SEED = 0
_C.DATA.GEN.NUM_CLASSES = 10
_C.DATA.GEN.TRAIN_PER_CLASS = 200
_C.DATA.GEN.VAL_PER_CLASS = 50
_C.DATA.GEN.IMAGE_SIZE = 64
_C.DATA.GEN.CONTEXT_RATE = 0.9
_C.DATA.GEN.MIN_AREA = 0.02
_C.DATA.GEN.MAX_AREA = 0.8
_C.DATA.GEN.NO_BOX_FRACTION = 0.0  # fraction of train images whose XML is withheld
_C.DATA.GEN.DETECTION_TRAIN = 200
_C.DATA.GEN.DETECTION_VAL = 50
_C.DATA.GEN.DETECTION_IMAGE_SIZE = 128

_C.MODEL = CN()
_C.MODEL.ARCH = "resnet18"  # any torchvision ResNet: resnet18/34/50/101/152

_C.LABELS = CN()
_C.LABELS.STRATEGY = "als"  # a name in als_det.strategies.STRATEGIES (docs/als.md)
_C.LABELS.EPSILON = 0.1  # ls
_C.LABELS.E_MIN = 0.0  # als: e = clip((1 - a) ** POWER, E_MIN, E_MAX)
_C.LABELS.E_MAX = 1.0
_C.LABELS.COVERAGE = (
    "crop"  # als, what a is: crop (crop's share on the object) | object (object's share in crop)
)
_C.LABELS.POWER = 1.0  # als
_C.LABELS.NO_BOX = "ls"  # als, images without boxes: ls | hard | skip
_C.LABELS.NO_BOX_EPSILON = 0.1
_C.LABELS.MIX_ALPHA = (
    1.0  # cutmix | mixup: mixing ratio ~ Beta(alpha, alpha) (torchvision's default 1.0)
)

_C.SOLVER = CN()
_C.SOLVER.EPOCHS = 90
_C.SOLVER.BATCH_SIZE = 32  # per process
_C.SOLVER.BASE_LR = 0.1  # for REFERENCE_BATCH images; scaled linearly with the global batch
_C.SOLVER.REFERENCE_BATCH = 256
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.NESTEROV = False
_C.SOLVER.WEIGHT_DECAY = 1e-4
_C.SOLVER.WARMUP_EPOCHS = 5
_C.SOLVER.SCHEDULE = "cosine"  # cosine | step
_C.SOLVER.STEPS = (30, 60, 80)  # epochs, for "step"
_C.SOLVER.GAMMA = 0.1

_C.TRAIN = CN()
# none | bf16 | fp16. bf16: autocast on GPU and CPU; fp16 (autocast + GradScaler): GPU only, an
# error on the CPU. Loss and metrics are computed in float32 either way.
_C.TRAIN.AMP = "none"
_C.TRAIN.CHANNELS_LAST = True  # channels_last memory format for model and images (GPU and CPU)
_C.TRAIN.COMPILE = False  # torch.compile the model (inductor; on the CPU it needs a C compiler)
_C.TRAIN.EVAL_PERIOD = 1  # epochs
# iterations between log lines with images/s, data-wait share, ETA, peak memory (0 = none)
_C.TRAIN.LOG_PERIOD = 50
_C.TRAIN.MAX_ITERS_PER_EPOCH = 0  # 0 = full epoch; >0 truncates (smoke runs)
_C.TRAIN.DETERMINISTIC = False
_C.TRAIN.DEVICE = "auto"  # auto (GPU when available) | cpu | cuda


def get_cfg() -> CN:
    """A fresh copy of the pretraining defaults."""
    return _C.clone()


def check_overrides(opts: Sequence[str]) -> None:
    """Trailing `KEY VALUE` overrides come in pairs and after every option: an option among them
    (`... OUTPUT_DIR x --dataset ...`) would otherwise be read as a config key."""
    flags = [o for o in opts if o.startswith("--")]
    if flags:
        raise ConfigError(
            f"{flags[0]} comes after the config overrides (KEY VALUE pairs), where it would "
            f"be read as a config key; put options before them: {sys.argv[0]} "
            f"{flags[0]} ... --config-file FILE KEY VALUE ..."
        )
    if len(opts) % 2:
        raise ConfigError(f"config overrides come in KEY VALUE pairs, got {list(opts)}")


def merge_config(cfg: Any, path: str | None, opts: Sequence[str] | None) -> None:
    """`cfg.merge_from_file(path)`, then the checked overrides; yacs' errors for an unknown key or
    a value of the wrong type become a one-line ConfigError naming the file or the overrides."""
    opts = list(opts or [])
    check_overrides(opts)
    if not isinstance(cfg, SafeConfigFiles):
        raise TypeError(f"{type(cfg).__name__} does not read its files safely (SafeConfigFiles)")
    for where, merge, arg in (
        (path, lambda f: cfg.merge_from_file(f, allow_unsafe=False), path),
        ("config overrides", cfg.merge_from_list, opts),
    ):
        try:
            if arg:
                merge(arg)
        except ConfigError:
            raise
        except (KeyError, AssertionError, ValueError) as err:
            raise ConfigError(f"{where}: {_one_line(err)}") from err


_TYPE_MISMATCH = re.compile(
    r"Type mismatch \(<class '([\w.]+)'> vs\. <class '([\w.]+)'>\) with values \((.*) vs\. "
    r"(.*)\) for config key: (\S+)$",
    re.S,
)


def _one_line(err: Exception) -> str:
    """yacs' message, without its quotes, and a type mismatch without the sections it prints
    whole (a value given where the defaults have a section of keys, or the reverse)."""
    text = str(err).strip("'")
    found = _TYPE_MISMATCH.match(text)
    if not found:
        return text
    want, got, _, value, key = found.groups()

    def kind(name: str) -> str:
        name = name.rsplit(".", 1)[-1]
        return "a section of keys" if name in ("CfgNode", "CN", "DetectionCfgNode") else name

    shown = "" if "\n" in value else f" ({value})"
    return f"{key} must be {kind(want)}, got {kind(got)}{shown}"


def load_config(path: str | None = None, opts: Sequence[str] | None = None) -> CN:
    """Defaults, then `path` (with `_BASE_` inheritance), then `KEY VALUE` overrides; frozen."""
    cfg = get_cfg()
    merge_config(cfg, path, opts)
    validate(cfg)
    cfg.freeze()
    return cfg


def validate(cfg: CN) -> None:
    """Reject values that would otherwise fail hours into a run."""
    LabelStrategy.from_cfg(cfg.LABELS)  # the LABELS keys are checked where they are defined
    if cfg.SOLVER.SCHEDULE not in ("cosine", "step"):
        raise ValueError(f"SOLVER.SCHEDULE must be cosine or step, got {cfg.SOLVER.SCHEDULE!r}")
    if cfg.TRAIN.AMP not in ("none", "bf16", "fp16"):
        raise ValueError(f"TRAIN.AMP must be none, bf16 or fp16, got {cfg.TRAIN.AMP!r}")
    if cfg.DATA.DECODE not in ("workers", "device", "dali"):
        raise ValueError(f"DATA.DECODE must be workers, device or dali, got {cfg.DATA.DECODE!r}")
    if cfg.TRAIN.DEVICE not in ("auto", "cpu", "cuda"):
        raise ValueError(f"TRAIN.DEVICE must be auto, cpu or cuda, got {cfg.TRAIN.DEVICE!r}")
    if not cfg.MODEL.ARCH.startswith("resnet"):
        raise ValueError(f"MODEL.ARCH must be a torchvision ResNet, got {cfg.MODEL.ARCH!r}")
    validate_ranges(cfg)


# ----------------------------------------------------------------------------- flat configs
# Every key defines the experiment (data, crops, sizes, batch, epochs, solver, schedule, labels,
# seed, precision, ...) except these, which only say where and how fast it runs.
RUNTIME_KEYS = frozenset(
    {
        "OUTPUT_DIR",
        "DATA.NUM_WORKERS",
        "DATA.CACHE_DIR",
        "DATA.STRICT",
        "DATA.DECODE",
        "TRAIN.DEVICE",
        "TRAIN.EVAL_PERIOD",
        "TRAIN.LOG_PERIOD",
        "TRAIN.COMPILE",
        "TRAIN.CHANNELS_LAST",
        "TRAIN.DETERMINISTIC",
    }
)


def flatten_config(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A (nested) config as {"SECTION.KEY": value}, tuples as lists."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, Mapping):
            out.update(flatten_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, (list, tuple)) else value
    return out


def saved_config(saved_yaml: str) -> dict[str, Any]:
    """A config saved as YAML (a checkpoint's, a converted backbone's `pretrain_config`), flattened
    over the current defaults: a key the saved config lacks had its default then."""
    flat = flatten_config(get_cfg())
    flat.update(flatten_config(CN.load_cfg(saved_yaml)))
    return flat


# ----------------------------------------------------------------------------- value ranges


# key -> (lowest, highest, lowest allowed itself?) for every numeric key with a valid range
_RANGES: dict[str, tuple[float, float, bool]] = {
    "SEED": (0, 2**32 - 1, True),
    "DATA.IMAGE_SIZE": (0, math.inf, False),
    "DATA.VAL_RESIZE": (0, math.inf, False),
    "DATA.NUM_WORKERS": (0, math.inf, True),
    "DATA.MAX_PER_CLASS": (0, math.inf, True),
    "DATA.GEN.SEED": (0, 2**32 - 1, True),
    "DATA.GEN.NUM_CLASSES": (2, math.inf, True),
    "DATA.GEN.TRAIN_PER_CLASS": (1, math.inf, True),
    "DATA.GEN.VAL_PER_CLASS": (1, math.inf, True),
    "DATA.GEN.IMAGE_SIZE": (0, math.inf, False),
    "DATA.GEN.CONTEXT_RATE": (0, 1, True),
    "DATA.GEN.MIN_AREA": (0, 1, False),
    "DATA.GEN.MAX_AREA": (0, 1, False),
    "DATA.GEN.NO_BOX_FRACTION": (0, 1, True),
    "DATA.GEN.DETECTION_TRAIN": (1, math.inf, True),
    "DATA.GEN.DETECTION_VAL": (1, math.inf, True),
    "DATA.GEN.DETECTION_IMAGE_SIZE": (0, math.inf, False),
    "SOLVER.EPOCHS": (1, math.inf, True),
    "SOLVER.BATCH_SIZE": (1, math.inf, True),
    "SOLVER.BASE_LR": (0, math.inf, False),
    "SOLVER.REFERENCE_BATCH": (0, math.inf, False),
    "SOLVER.MOMENTUM": (0, 1, True),
    "SOLVER.WEIGHT_DECAY": (0, math.inf, True),
    "SOLVER.WARMUP_EPOCHS": (0, math.inf, True),
    "SOLVER.GAMMA": (0, 1, False),
    "TRAIN.EVAL_PERIOD": (1, math.inf, True),
    "TRAIN.LOG_PERIOD": (0, math.inf, True),
    "TRAIN.MAX_ITERS_PER_EPOCH": (0, math.inf, True),
}


def numbers(value: object) -> list:
    """The numbers in a value: itself, or those of a (nested) list or tuple."""
    if isinstance(value, (list, tuple)):
        return [x for item in value for x in numbers(item)]
    return [value]


def check_ranges(values: dict[str, object], ranges: dict[str, tuple[float, float, bool]]) -> None:
    """Each `ranges` key's value (a number, or each number of a nested list) within (low, high,
    low allowed?); NaN and infinity never are. A ValueError names the first that is not."""
    for key, (low, high, low_ok) in ranges.items():
        value = values[key]
        for x in numbers(value):
            if (
                not (low <= x <= high)
                or (x == low and not low_ok)
                or (math.isinf(high) and math.isinf(x))
            ):
                bound = f"{'>=' if low_ok else '>'} {low}" + (
                    f" and <= {high}" if math.isfinite(high) else ""
                )
                raise ValueError(f"{key} must be {bound}, got {value}")


def validate_ranges(cfg: CN) -> None:
    """Every numeric key inside its valid range, and the keys that constrain each other
    consistent."""
    flat = flatten_config(cfg)
    check_ranges(flat, _RANGES)
    for key in ("DATA.CROP_SCALE", "DATA.CROP_RATIO"):
        pair = flat[key]
        if (
            len(pair) != 2
            or not 0 < pair[0] <= pair[1]
            or (key == "DATA.CROP_SCALE" and pair[1] > 1)
        ):
            limit = "0 < LOW <= HIGH <= 1" if key == "DATA.CROP_SCALE" else "0 < LOW <= HIGH"
            raise ValueError(f"{key} must be (LOW, HIGH) with {limit}, got {tuple(pair)}")
    if cfg.DATA.VAL_RESIZE < cfg.DATA.IMAGE_SIZE:
        raise ValueError(
            f"DATA.VAL_RESIZE ({cfg.DATA.VAL_RESIZE}) must be >= DATA.IMAGE_SIZE "
            f"({cfg.DATA.IMAGE_SIZE}): val images are resized, then centre-cropped"
        )
    if cfg.DATA.GEN.MIN_AREA > cfg.DATA.GEN.MAX_AREA:
        raise ValueError("DATA.GEN needs MIN_AREA <= MAX_AREA")
    if cfg.SOLVER.WARMUP_EPOCHS and cfg.SOLVER.WARMUP_EPOCHS >= cfg.SOLVER.EPOCHS:
        raise ValueError(
            f"SOLVER.WARMUP_EPOCHS ({cfg.SOLVER.WARMUP_EPOCHS}) must be less than "
            f"SOLVER.EPOCHS ({cfg.SOLVER.EPOCHS}); for a short run set SOLVER.WARMUP_EPOCHS 0"
        )
    steps = list(cfg.SOLVER.STEPS)
    if cfg.SOLVER.SCHEDULE == "step" and (
        steps != sorted(set(steps)) or not all(0 < s < cfg.SOLVER.EPOCHS for s in steps)
    ):
        raise ValueError(
            f"SOLVER.STEPS must be increasing epochs between 0 and SOLVER.EPOCHS "
            f"({cfg.SOLVER.EPOCHS}), exclusive, got {tuple(steps)}"
        )


# A resume (pretraining or fine-tuning) whose experiment keys differ from its checkpoint's.
ALLOW_FLAG = "--allow-config-change"


class ResumeError(ValueError):
    """A resume that would silently continue a different experiment; the message lists why."""


def changed_experiment(path: str, diffs: Mapping[str, tuple[Any, Any]], record: str) -> ResumeError:
    """The refusal of a resume whose experiment differs from the checkpoint's, listing each
    difference; `record`: the file an allowed change is recorded in."""
    lines = "\n".join(
        f"  {k}: {json.dumps(a)} (checkpoint) -> {json.dumps(b)} (now)"
        for k, (a, b) in diffs.items()
    )
    return ResumeError(
        f"cannot resume {path}: this config describes a different experiment than the "
        f"checkpoint's ({len(diffs)} difference{'s' if len(diffs) > 1 else ''}):\n{lines}\n"
        f"Resume with the checkpoint's settings, start a fresh run (without --resume), or pass "
        f"{ALLOW_FLAG} to continue with the new settings on purpose (recorded in {record})."
    )
