"""detectron2's `DetectionCheckpointer`, reading files safely, recording what they supplied and
writing checkpoints atomically.

Every weight file the suite hands to detectron2 (MODEL.WEIGHTS, `--resume`, `--eval-only`,
`convert_to_d2.py --verify`) goes through `RecordingCheckpointer`:
- `_load_file` reads `.pkl` files with `read_detectron2_pickle` (numpy arrays and plain values
  only) and everything else with `read_torch_file` (`weights_only=True`); `unsafe_load=True`
  allows full unpickling of a trusted file. It then interprets the data as detectron2 does.
- `_load_file` also records `tensors_sha256` (`als_det.convert.tensors_digest`) of a `.pkl`'s
  tensors as read, for the check against the digest its conversion recorded.
- `_load_model` records the model keys the *file* supplied (after detectron2's name matching)
  and the incompatible keys detectron2 would only log. `FrozenBatchNorm2d` fills running
  statistics a file lacks with 0/1 and reports nothing missing, so only `supplied` tells.
- `save` writes through `als_det.io` (detectron2's is a plain write that a kill or a full disk
  leaves half-written).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from als_det.convert import tensors_digest
from als_det.io import atomic_torch_save, atomic_write_text
from als_det.weights_io import read_detectron2_pickle, read_torch_file

logger = logging.getLogger(__name__)


class RecordingCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer with safe file reading; after `load`: `incompatible` (detectron2's
    record), `supplied` (model keys the file filled), `unsafe_used`, `author` and, for a `.pkl`,
    `tensors_sha256`."""

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        unsafe_load: bool = False,
        log_incompatible: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, save_dir, **kwargs)
        self.unsafe_load = unsafe_load
        self.log_incompatible = log_incompatible
        self.unsafe_used = False
        self.incompatible: Any = None
        self.supplied: set[str] = set()
        self.author: str | None = None
        self.tensors_sha256: str | None = None

    def save(self, name: str, **kwargs: Any) -> None:
        """fvcore's `Checkpointer.save`, written atomically (`als_det.io`): a checkpoint, and the
        `last_checkpoint` record naming it, is the old file or the whole new one, never part of
        one (a full disk is a `DiskFullError` naming the file, and leaves no partial file)."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        path = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info("Saving checkpoint to %s", path)
        atomic_torch_save(path, data)
        self.tag_last_checkpoint(os.path.basename(path))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)

    def _load_file(self, filename: str) -> dict[str, Any]:
        """detectron2's interpretation of each format (see `DetectionCheckpointer._load_file`),
        with the file read by the restricted readers of `als_det.weights_io`."""
        if filename.endswith(".pkl"):
            data, self.unsafe_used = read_detectron2_pickle(filename, self.unsafe_load)
            if not isinstance(data, dict):
                raise TypeError(f"{filename} holds a {type(data).__name__}, not a dict of weights")
            if "model" in data and "__author__" in data:  # detectron2 model-zoo format
                self.logger.info("Reading a file from '%s'", data["__author__"])
                self.tensors_sha256 = tensors_digest(data["model"])  # before detectron2 edits it
            else:  # a Caffe2 / Detectron1 model-zoo file: blobs by Caffe2 name
                data = {
                    k: v for k, v in data.get("blobs", data).items() if not k.endswith("_momentum")
                }
                data = {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        else:
            data, self.unsafe_used = read_torch_file(filename, self.unsafe_load)
            if filename.endswith(".pyth"):  # pycls
                data = {
                    "model": {
                        k: v
                        for k, v in data["model_state"].items()
                        if not k.endswith("num_batches_tracked")
                    },
                    "__author__": "pycls",
                    "matching_heuristics": True,
                }
            elif "model" not in data:
                data = {"model": data}
        self.author = data.get("__author__")
        return data

    def _load_model(self, checkpoint: Any) -> Any:
        def record(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
            self.supplied = set(state_dict)

        handle = self.model.register_load_state_dict_pre_hook(record)
        try:
            self.incompatible = super()._load_model(checkpoint)
        finally:
            handle.remove()
        return self.incompatible

    def _log_incompatible_keys(self, incompatible: Any) -> None:
        if self.log_incompatible:
            super()._log_incompatible_keys(incompatible)
