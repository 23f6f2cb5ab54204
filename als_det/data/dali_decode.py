"""`DATA.DECODE dali`: the `device` path's workers, with NVIDIA DALI decoding the batch.

The DataLoader workers are `EncodedImageNetBoxes`, as on `DATA.DECODE device`: they read each
file's bytes and header and draw the crop with `ImageNetBoxes.train_crop`, so labels, coverage and
object coverage are exactly those of the other paths. `DaliDecoder` feeds the batch's bytes and
crop windows to a DALI pipeline through `fn.external_source`:

  train  `fn.decoders.image_slice` (ROI decode of the crop window: nvJPEG on a GPU, libjpeg-turbo
         on the CPU, chroma upsampled as libjpeg does) -> `fn.resize` to S x S (linear,
         antialiased) -> `fn.crop_mirror_normalize` (the drawn flip, ImageNet mean/std, float32,
         CHW or, for channels_last, HWC)
  val    `fn.decoders.image` -> `fn.resize` (shorter side to `val_resize`, torchvision's sizes)
         -> `fn.slice` (the centre crop, torchvision's offsets) -> `fn.crop_mirror_normalize`

DALI's own random-crop operators do not return their window, so they cannot serve ALS. DALI's
handling of EXIF orientation differs between versions (1.x's decoders disregard it), so a JPEG
with an orientation other than 1 is decoded by the `device` path's code (torchvision, on the same
device) and counted (`decode_not_dali_exif`). One
undecodable file fails a DALI run: that batch's JPEGs then go through the `device` path's code one
by one (undecodable ones become label -1, or `BadImageError` with `strict`), counted
(`decode_not_dali_refused`). Non-JPEG and CMYK files take the `device` path's counted CPU route.
DALI is imported when a `DaliDecoder` is built, never at module import.
"""

from __future__ import annotations

import importlib.util
import logging
from collections import Counter

import numpy as np
import torch

from als_det.data.crops import resize_center_crop
from als_det.data.device_decode import FALLBACK_NAMES, GEOMETRY, ON_DEVICE, DeviceDecoder
from als_det.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, ImageNetBoxes

logger = logging.getLogger(__name__)

NOT_DALI_EXIF = "decode_not_dali_exif"
NOT_DALI_REFUSED = "decode_not_dali_refused"
DALI_FALLBACK_NAMES = (*FALLBACK_NAMES, NOT_DALI_EXIF, NOT_DALI_REFUSED)
INSTALL_HINT = "pip install -e '.[dali]'"


def require_dali() -> None:
    """A clear error where NVIDIA DALI is not installed (looked up, not imported)."""
    if (
        importlib.util.find_spec("nvidia") is None
        or importlib.util.find_spec("nvidia.dali") is None
    ):
        raise ValueError(
            "DATA.DECODE dali needs NVIDIA DALI, which is not installed: install the optional "
            f"extra, {INSTALL_HINT} (nvidia-dali for CUDA 12; see docs/architecture.md, "
            "'Decode paths'), or use DATA.DECODE device"
        )


class DaliDecoder(DeviceDecoder):
    """A collated `EncodedImageNetBoxes` batch (at most `batch_size` samples) to `ImageNetBoxes`'
    batch, decoded by a DALI pipeline on `device` (`mixed` decode on CUDA, `cpu` on the CPU) with
    `num_threads` host threads."""

    names = DALI_FALLBACK_NAMES

    def __init__(
        self,
        base: ImageNetBoxes,
        device: torch.device,
        channels_last: bool = False,
        counts: Counter | None = None,
        batch_size: int = 256,
        num_threads: int = 1,
    ) -> None:
        require_dali()
        super().__init__(base, device, channels_last, counts)
        self.batch_size, self.num_threads = int(batch_size), max(1, int(num_threads))
        self._pipe = self._build()

    def _build(self):
        from nvidia.dali import fn, types
        from nvidia.dali.pipeline import Pipeline

        gpu = self.device.type == "cuda"
        device_id = None
        if gpu:
            device_id = self.device.index if self.device.index is not None else 0
        pipe = Pipeline(
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            device_id=device_id,
            exec_async=False,
            exec_pipelined=False,
            prefetch_queue_depth=1,
        )
        size = self.base.image_size
        decode = dict(
            device="mixed" if gpu else "cpu", output_type=types.RGB, jpeg_fancy_upsampling=True
        )
        resize = dict(interp_type=types.INTERP_LINEAR, antialias=True)
        with pipe:
            data = fn.external_source(name="data", dtype=types.UINT8, ndim=1)
            if self.base.train:
                anchor = fn.external_source(name="anchor", dtype=types.INT32, ndim=1)
                shape = fn.external_source(name="shape", dtype=types.INT32, ndim=1)
                mirror = fn.external_source(name="mirror", dtype=types.INT32, ndim=0)
                images = fn.decoders.image_slice(data, anchor, shape, **decode)  # x, y; w, h
                images = fn.resize(images, resize_x=size, resize_y=size, **resize)
            else:
                resize_x = fn.external_source(name="resize_x", dtype=types.FLOAT, ndim=0)
                resize_y = fn.external_source(name="resize_y", dtype=types.FLOAT, ndim=0)
                anchor = fn.external_source(name="anchor", dtype=types.INT32, ndim=1)
                images = fn.decoders.image(data, **decode)
                images = fn.resize(images, resize_x=resize_x, resize_y=resize_y, **resize)
                images = fn.slice(images, start=anchor, shape=[size, size], axis_names="WH")
                mirror = 0
            images = fn.crop_mirror_normalize(
                images,
                mirror=mirror,
                mean=[255 * m for m in IMAGENET_MEAN],
                std=[255 * s for s in IMAGENET_STD],
                dtype=types.FLOAT,
                output_layout="HWC" if self.channels_last else "CHW",
            )
            pipe.set_outputs(images)
        pipe.build()
        return pipe

    def _inputs(self, data: list[torch.Tensor], rows: list[list[int]]) -> dict[str, list]:
        """The external sources' batches for `rows`, in the layout of `_build`."""
        feed: dict[str, list] = {"data": [d.numpy() for d in data]}
        size = self.base.image_size
        for row in rows:
            g = dict(zip(GEOMETRY, row))
            if self.base.train:
                feed.setdefault("anchor", []).append(np.array([g["left"], g["top"]], np.int32))
                feed.setdefault("shape", []).append(np.array([g["w"], g["h"]], np.int32))
                feed.setdefault("mirror", []).append(np.array(g["flip"], np.int32))
                continue
            new_w, new_h, top, left = resize_center_crop(
                g["width"], g["height"], self.base.val_resize, size
            )
            feed.setdefault("resize_x", []).append(np.array(new_w, np.float32))
            feed.setdefault("resize_y", []).append(np.array(new_h, np.float32))
            feed.setdefault("anchor", []).append(np.array([left, top], np.int32))
        return feed

    def _pipeline(
        self, data: list[torch.Tensor], rows: list[list[int]], images: torch.Tensor
    ) -> list[int]:
        mine, rest = [], []
        for k, row in enumerate(rows):
            g = dict(zip(GEOMETRY, row))
            if g["route"] != ON_DEVICE:
                rest.append(k)
            elif g["orientation"] != 1:
                self.counts[NOT_DALI_EXIF] += 1
                rest.append(k)
            else:
                mine.append(k)
        if not mine:
            return rest
        if len(mine) > self.batch_size:
            raise ValueError(f"a batch of {len(mine)} images exceeds DALI's {self.batch_size}")
        try:
            out = self._run([data[k] for k in mine], [rows[k] for k in mine])
        except RuntimeError as exc:
            logger.warning(
                "DALI refused a batch (%s); decoding its %d JPEGs one by one instead",
                " ".join(str(exc).split())[:300] or type(exc).__name__,
                len(mine),
            )
            self.counts[NOT_DALI_REFUSED] += len(mine)
            self._pipe = self._build()  # a pipeline that raised is not reused
            return sorted(rest + mine)
        images[mine] = out.permute(0, 3, 1, 2) if self.channels_last else out
        return rest

    def _run(self, data: list[torch.Tensor], rows: list[list[int]]) -> torch.Tensor:
        """The pipeline's output for these samples as one float32 tensor on the device."""
        from nvidia.dali.plugin.pytorch import feed_ndarray

        for name, batch in self._inputs(data, rows).items():
            self._pipe.feed_input(name, batch)
        (out,) = self._pipe.run()
        tensor = out.as_tensor()
        target = torch.empty(tuple(tensor.shape()), dtype=torch.float32, device=self.device)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        feed_ndarray(tensor, target, cuda_stream=stream)
        return target
