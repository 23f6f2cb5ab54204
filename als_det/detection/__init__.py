"""detectron2 side of als_det: detection configs and (helper modules) fine-tuning.

Together with `als_det.convert` (which calls `detection.verify`), the only code that imports
detectron2.
"""

from als_det.detection.config import DetectionCfgNode, get_detection_cfg

__all__ = ["DetectionCfgNode", "get_detection_cfg"]
