"""Detection configs: detectron2's `get_cfg()` + a YAML file + `KEY VALUE` overrides, with model-zoo
bases.

Our YAML files inherit detectron2's own model-zoo configs through `_BASE_: "model_zoo://<path>"`
(path relative to detectron2's `model_zoo/configs/`), so the zoo's schedules are used verbatim
instead of copied. fvcore joins a relative `_BASE_` to the including file's folder and calls
`cls.load_yaml_with_base` on the result (recursively, list bases included), so the prefix arrives
here embedded in that joined path and is resolved with `detectron2.model_zoo.get_config_file`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from detectron2 import model_zoo
from detectron2.config import CfgNode, get_cfg

from als_det.config import merge_config

MODEL_ZOO_PREFIX = "model_zoo://"


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


class DetectionCfgNode(CfgNode):
    """detectron2's CfgNode whose `_BASE_` may name a model-zoo config as `model_zoo://<path>`."""

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False) -> dict[str, Any]:
        return super().load_yaml_with_base(resolve_config_path(filename), allow_unsafe=allow_unsafe)


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
    return cfg
