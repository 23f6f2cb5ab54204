"""What the forkserver of `als_det.experiment.warm_start` imports once for every stage it starts:
the libraries the tools import (tools/*.py, and what their modules import on first use), and the
code revision of what it loaded."""

import detectron2.engine  # noqa: F401
import detectron2.evaluation  # noqa: F401
import matplotlib.pyplot  # noqa: F401
import torch  # noqa: F401
import torch.utils.tensorboard  # noqa: F401
import torchvision  # noqa: F401

import als_det.analysis.evaluate  # noqa: F401
import als_det.analysis.transfer  # noqa: F401
import als_det.convert  # noqa: F401
import als_det.data.generated  # noqa: F401
import als_det.detection.trainer  # noqa: F401
import als_det.detection.verify  # noqa: F401
import als_det.engine.trainer  # noqa: F401
import als_det.evaluation  # noqa: F401
import als_det.report.compare_output  # noqa: F401
import als_det.report.transfer  # noqa: F401
from als_det.revision import code_revision

code_revision()
