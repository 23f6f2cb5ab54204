"""Reading weight files that may come from anyone, without running code from them.

Three readers, one per format the suite accepts:
- `read_torch_file`: a `.pth`/`.pt` through `torch.load(..., weights_only=True)` (tensors and plain
  Python values: the suite's own checkpoints, torchvision/timm releases, detectron2 checkpoints).
  A file that needs full unpickling (a pickled `argparse.Namespace`, or a crafted file) is refused
  unless the caller opts in with `unsafe_load=True` (`--unsafe-load`) for a file it trusts.
- `read_detectron2_pickle`: a detectron2 `.pkl` (converted backbones, model-zoo files) through an
  unpickler that builds only dicts, lists, tuples, strings, bytes, numbers and numpy arrays,
  dtypes and scalars; the same opt-in allows full unpickling.
Both return `(object, unsafe_used)` so that callers can record the opt-in in their provenance.
"""

from __future__ import annotations

import _codecs
import importlib
import logging
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
UNSAFE_HINT = (
    "Full unpickling can run arbitrary code; if you trust this file (you or a "
    "colleague wrote it), pass --unsafe-load (unsafe_load=True from Python)"
)


class WeightsFileError(ValueError):
    """A weight file that cannot be read; the message names the file."""


class UnsafeFileError(WeightsFileError):
    """A weight file that only full unpickling could read, refused without `unsafe_load`; the
    message advises `--unsafe-load`, `refusal` is the message without that advice (for callers
    that offer no such option)."""

    def __init__(self, path: str | os.PathLike, detail: str) -> None:
        self.refusal = f"{path}: refused: {detail}"
        super().__init__(f"{self.refusal}. {UNSAFE_HINT}")


def strip_wrapper_prefixes(key: str) -> str:
    """`module._orig_mod.layer1.0.conv1.weight` -> `layer1.0.conv1.weight`."""
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


# ----------------------------------------------------------------------------- torch files
def read_torch_file(
    path: str | os.PathLike, unsafe_load: bool = False, map_location: str | torch.device = "cpu"
) -> tuple[Any, bool]:
    """`torch.load(path, weights_only=True)`; with `unsafe_load`, a file that the weights-only
    reader refuses is read with full unpickling instead (logged). Returns (object, unsafe_used)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"{path}: no such file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True), False
    except pickle.UnpicklingError as err:
        reason = _weights_only_reason(str(err))
        if not _is_pickle_based(path):
            raise WeightsFileError(f"{path}: not a readable torch checkpoint ({reason})") from err
        if not unsafe_load:
            raise UnsafeFileError(
                path, f"torch's weights-only reader cannot load it ({reason})"
            ) from err
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as err:
        raise WeightsFileError(
            f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err})"
        ) from err
    logger.warning(
        "%s: loading with full unpickling (--unsafe-load; the weights-only reader refused it: %s)",
        path,
        reason,
    )
    try:
        return torch.load(path, map_location=map_location, weights_only=False), True
    except Exception as err:  # full unpickling can raise anything the file's objects raise
        raise WeightsFileError(
            f"{path}: not a readable torch checkpoint even with full "
            f"unpickling ({type(err).__name__}: {err})"
        ) from err


def _is_pickle_based(path: Path) -> bool:
    """A torch zip archive or a pickle stream (protocol 2+ starts with PROTO): files that the
    weights-only reader may refuse for their content rather than for being something else."""
    with open(path, "rb") as f:
        if zipfile.is_zipfile(f):
            return True
        f.seek(0)
        return f.read(1) == pickle.PROTO


def _weights_only_reason(message: str) -> str:
    """The useful line of torch's weights-only error, e.g. "it references argparse.Namespace"
    (an allowed-list miss) or "it references posix.system" (a blocked module), else the
    unpickler's own line without torch's advice around it."""
    found = re.search(r"GLOBAL (\S+)", message)
    if found:
        return f"it references {found.group(1)}, which only full unpickling can create"
    message = message.split("\n\nCheck the documentation", 1)[0]
    detail = re.split(r"WeightsUnpickler error:|\n\n", message)[-1].strip().splitlines()
    return detail[0].strip() if detail else message


# ----------------------------------------------------------------------------- detectron2 .pkl
def _numpy_callable(name: str, *modules: str) -> Any:
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy provides no {name} in {modules}")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What Python's protocol-2 pickles call to rebuild `bytes`: `_codecs.encode(s, 'latin1')`."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return _codecs.encode(text, "latin1")


_NUMPY_CORE = ("numpy._core", "numpy.core")  # numpy 2 pickles name the first, numpy 1 the second
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}
for _core in _NUMPY_CORE:
    for _module, _name in (
        ("multiarray", "_reconstruct"),
        ("multiarray", "scalar"),
        ("numeric", "_frombuffer"),
    ):
        _ALLOWED_GLOBALS[(f"{_core}.{_module}", _name)] = _numpy_callable(
            _name, *(f"{c}.{_module}" for c in _NUMPY_CORE)
        )


class _RefusedGlobal(pickle.UnpicklingError):
    """The pickle asks for a callable outside `_ALLOWED_GLOBALS`."""


class _WeightsUnpickler(pickle.Unpickler):
    """Builds only containers, strings, bytes, numbers and numpy arrays/dtypes/scalars: the
    globals a pickled numpy array references (protocols 0-5, numpy 1 and 2) and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(
                f"it references {module}.{name}, which a detectron2 weights file never needs"
            ) from None


def read_detectron2_pickle(path: str | os.PathLike, unsafe_load: bool = False) -> tuple[Any, bool]:
    """A detectron2 `.pkl` (latin1 strings, as detectron2 reads them) through `_WeightsUnpickler`;
    with `unsafe_load`, a refused file is read with full unpickling (logged).
    Returns (object, unsafe_used)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            return _WeightsUnpickler(f, encoding="latin1").load(), False
    except _RefusedGlobal as err:
        if not unsafe_load:
            raise UnsafeFileError(path, str(err)) from err
        reason = err
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
        OSError,
    ) as err:
        raise WeightsFileError(
            f"{path}: not a readable pickle ({type(err).__name__}: {err})"
        ) from err
    logger.warning(
        "%s: loading with full unpickling (--unsafe-load; the restricted reader refused it: %s)",
        path,
        reason,
    )
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1"), True
    except Exception as err:  # full unpickling can raise anything the file's objects raise
        raise WeightsFileError(
            f"{path}: not a readable pickle even with full unpickling ({type(err).__name__}: {err})"
        ) from err
