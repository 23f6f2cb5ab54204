"""Detection configs: detectron2's `get_cfg()` + a YAML file + `KEY VALUE` overrides, with model-zoo
bases.

Our YAML files inherit detectron2's own model-zoo configs through `_BASE_: "model_zoo://<path>"`
(path relative to detectron2's `model_zoo/configs/`), so the zoo's schedules are used verbatim
instead of copied. Every file of a chain is read by `als_det.config.read_config_file`
(`yaml.safe_load`: no config file can run code, though detectron2's `merge_from_file` would allow
`yaml.unsafe_load`), which joins a relative `_BASE_` to the including file's folder, so the prefix
arrives at `resolve_config_path` embedded in that joined path and is resolved with
`detectron2.model_zoo.get_config_file`. One zoo file holds a tagged value, `Base-RetinaNet.yaml`'s
anchor sizes (`!!python/object/apply:eval` of a fixed expression): zoo files are read with
`ZooLoader`, which replaces that known expression by its value and refuses any other.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import yaml
from detectron2 import model_zoo
from detectron2.config import CfgNode, get_cfg

from als_det.config import check_ranges, flatten_config, merge_config, numbers
from als_det.config_files import SafeConfigFiles

MODEL_ZOO_PREFIX = "model_zoo://"
ZOO_DIR = os.path.realpath(os.path.join(os.path.dirname(model_zoo.__file__), "configs"))
EVAL_TAG = "tag:yaml.org,2002:python/object/apply:eval"
# Every `!!python/object/apply:eval` expression of detectron2's model-zoo configs, with its value.
ZOO_EXPRESSIONS = {
    "[[x, x * 2**(1.0/3), x * 2**(2.0/3) ] for x in [32, 64, 128, 256, 512 ]]": [
        [x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [32, 64, 128, 256, 512]
    ],
}


class ZooLoader(yaml.SafeLoader):
    """yaml's SafeLoader that reads the zoo's known `eval` expressions (`ZOO_EXPRESSIONS`) as
    their values, evaluating nothing."""


def _known_expression(loader: ZooLoader, node: yaml.Node) -> object:
    expression = loader.construct_sequence(node)
    if len(expression) != 1 or expression[0] not in ZOO_EXPRESSIONS:
        raise yaml.constructor.ConstructorError(
            None, None, f"unknown eval expression {expression!r}", node.start_mark
        )
    return ZOO_EXPRESSIONS[expression[0]]


ZooLoader.add_constructor(EVAL_TAG, _known_expression)


def resolve_config_path(filename: str) -> str:
    """Map `[any/folder/]model_zoo://X.yaml` to detectron2's installed zoo file; other paths
    pass."""
    _, sep, zoo_path = filename.partition(MODEL_ZOO_PREFIX)
    if not sep:
        return filename
    try:
        return model_zoo.get_config_file(zoo_path)
    except RuntimeError as err:
        raise FileNotFoundError(
            f"config base {MODEL_ZOO_PREFIX}{zoo_path} (from {filename!r}) is not in detectron2's "
            f"model zoo: {err}"
        ) from err


class DetectionCfgNode(SafeConfigFiles, CfgNode):
    """detectron2's CfgNode reading its files safely, whose `_BASE_` may name a model-zoo config as
    `model_zoo://<path>`."""

    @classmethod
    def resolve_config_path(cls, filename: str) -> str:
        return resolve_config_path(filename)

    @classmethod
    def yaml_loader(cls, filename: str) -> type[yaml.SafeLoader]:
        """`ZooLoader` for detectron2's model-zoo files, yaml's SafeLoader for every other file."""
        inside = os.path.commonpath([ZOO_DIR, os.path.realpath(filename)]) == ZOO_DIR
        return ZooLoader if inside else yaml.SafeLoader


def get_detection_cfg(
    config_file: str | None = None, opts: Sequence[str] | None = None
) -> DetectionCfgNode:
    """detectron2's defaults, then `config_file` (a path or `model_zoo://...`), then `opts`.

    Unknown keys in the file or in `opts` raise a ConfigError naming the key; an option among
    `opts` a ConfigError saying where options go. The result is not frozen: callers set run-time
    keys (MODEL.DEVICE, OUTPUT_DIR, ...) then freeze.
    """
    cfg = DetectionCfgNode(get_cfg())
    merge_config(cfg, resolve_config_path(str(config_file)) if config_file else None, opts)
    validate_detection_cfg(cfg)
    return cfg


INF = math.inf
# key -> (lowest, highest, lowest allowed itself?) for the numeric keys a user sets (each number of
# a list key), as `als_det.config` checks pretraining's
RANGES: dict[str, tuple[float, float, bool]] = {
    "SOLVER.BASE_LR": (0, INF, False),
    "SOLVER.MAX_ITER": (1, INF, True),
    "SOLVER.IMS_PER_BATCH": (1, INF, True),
    "SOLVER.MOMENTUM": (0, 1, True),
    "SOLVER.WEIGHT_DECAY": (0, INF, True),
    "SOLVER.WEIGHT_DECAY_NORM": (0, INF, True),
    "SOLVER.BIAS_LR_FACTOR": (0, INF, True),
    "SOLVER.GAMMA": (0, 1, False),
    "SOLVER.STEPS": (1, INF, True),
    "SOLVER.WARMUP_FACTOR": (0, 1, True),
    "SOLVER.WARMUP_ITERS": (0, INF, True),
    "SOLVER.CHECKPOINT_PERIOD": (1, INF, True),
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": (0, INF, False),
    "TEST.EVAL_PERIOD": (0, INF, True),
    "TEST.DETECTIONS_PER_IMAGE": (1, INF, True),
    "INPUT.MIN_SIZE_TRAIN": (0, INF, False),
    "INPUT.MAX_SIZE_TRAIN": (0, INF, False),
    "INPUT.MIN_SIZE_TEST": (0, INF, True),  # 0: no resizing
    "INPUT.MAX_SIZE_TEST": (0, INF, False),
    "DATALOADER.NUM_WORKERS": (0, INF, True),
    "MODEL.PIXEL_STD": (0, INF, False),
    "MODEL.ANCHOR_GENERATOR.SIZES": (0, INF, False),
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": (0, INF, False),
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE": (1, INF, True),
    "MODEL.RPN.POSITIVE_FRACTION": (0, 1, False),
    "MODEL.RPN.NMS_THRESH": (0, 1, True),
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": (1, INF, True),
    "MODEL.RPN.PRE_NMS_TOPK_TEST": (1, INF, True),
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": (1, INF, True),
    "MODEL.RPN.POST_NMS_TOPK_TEST": (1, INF, True),
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": (1, INF, True),
    "MODEL.ROI_HEADS.POSITIVE_FRACTION": (0, 1, False),
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": (0, 1, True),
    "MODEL.ROI_HEADS.NMS_THRESH_TEST": (0, 1, True),
    "MODEL.RETINANET.SCORE_THRESH_TEST": (0, 1, True),
    "MODEL.RETINANET.NMS_THRESH_TEST": (0, 1, True),
    "MODEL.RETINANET.TOPK_CANDIDATES_TEST": (1, INF, True),
}


def validate_detection_cfg(cfg: CfgNode) -> None:
    """Refuse, before anything is built, values that would fail (or silently mislead) only once
    training runs: a NaN or infinite number anywhere, a number outside its range (`RANGES`), LR
    steps that do not increase."""
    flat = flatten_config(cfg)
    for key, value in flat.items():
        if any(isinstance(x, float) and not math.isfinite(x) for x in numbers(value)):
            raise ValueError(f"{key} must be a finite number, got {value}")
    check_ranges(flat, RANGES)
    steps = list(cfg.SOLVER.STEPS)
    if steps != sorted(set(steps)):
        raise ValueError(f"SOLVER.STEPS must be increasing iterations, got {tuple(steps)}")
