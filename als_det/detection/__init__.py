"""detectron2 side of als_det: detection configs and (helper modules) fine-tuning.

The only code that imports detectron2 (`detection.verify` proves and publishes the conversions
of `als_det.convert`, which knows torchvision only).
"""

from als_det.detection.config import DetectionCfgNode, get_detection_cfg

__all__ = ["DetectionCfgNode", "get_detection_cfg"]
