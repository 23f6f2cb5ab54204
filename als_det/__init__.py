"""als_det: Adaptive Label Smoothing transfer-learning detection benchmark suite."""

import logging
import warnings

__version__ = "0.1.0"


def _silence_known_warnings() -> None:
    """Silence the known-harmless messages of the pinned libraries, which say nothing a user can
    act on. Run at import (before anything imports detectron2), so once for every entry point
    (pyproject.toml repeats them for pytest, which resets warning filters):

    - detectron2 0.6 decorates helpers with `torch.jit.script` at import, which torch 2.x
      deprecates (a FutureWarning on every start, even `--help`), and uses APIs that numpy and
      setuptools deprecate (DeprecationWarnings from its own modules);
    - its anchor generator calls `torch.meshgrid` without `indexing` (the result is "ij" either
      way);
    - `torch.utils.cpp_extension` says "No CUDA runtime is found" when detectron2's environment
      report imports it on a machine without CUDA.
    """
    warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)
    warnings.filterwarnings("ignore", r"torch\.meshgrid: in an upcoming release", UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"detectron2\.")
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


_silence_known_warnings()
