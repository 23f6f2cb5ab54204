"""`DATA.DECODE device`: DataLoader workers read each file's bytes and header and draw the crop;
the training device decodes, crops, resizes, flips and normalises the batch.

Workers (`EncodedImageNetBoxes`) never decode pixels: they read the file (`ImageNetBoxes.read`:
from its pack for a packed split), parse its header (size, format, colour mode, EXIF orientation)
and draw the crop through `ImageNetBoxes.train_crop` with the (EXIF-applied) header size, so
crops, coverage and object coverage are exactly those of the `workers` path. `DeviceDecoder`
then decodes the batch's JPEGs with one `torchvision.io.decode_jpeg` call on the device (nvJPEG
on CUDA, libjpeg-turbo on the CPU), applies each image's EXIF orientation, and on the same device
crops, resizes (bilinear, antialiased, from uint8 as PIL does), flips, normalises, casts to
float32 and applies channels_last. The validation split resizes the shorter side and
centre-crops, as `ImageNetBoxes`.

Files nvJPEG cannot take go through the CPU one image at a time and are counted
(`FALLBACK_NAMES`): a non-JPEG file with a JPEG name (ImageNet holds PNGs named .JPEG), a CMYK
JPEG, and a JPEG the device's decoder refused, decoded with `torchvision.io.decode_image` into RGB
and moved to the device. Greyscale JPEGs are expanded to RGB
by the decoder itself. An unreadable file is handled as on the `workers` path: a zero image with
label -1 (counted by the trainer as a bad image, one warning per file), or with `strict` a
`BadImageError`.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections import Counter
from collections.abc import Iterator

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from als_det.data.annotations import DataError
from als_det.data.crops import center_crop_box
from als_det.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, ImageNetBoxes
from als_det.data.images import TRANSPOSING_ORIENTATIONS, BadImageError, orientation_of

logger = logging.getLogger(__name__)

# How a sample reaches its pixels (the `route` column of the geometry).
ON_DEVICE, CPU_NOT_JPEG, CPU_CMYK, UNREADABLE = 0, 1, 2, 3
# The counted CPU fallbacks (the names metrics.jsonl and run.json use): by route, and JPEGs the
# device's decoder refused.
FALLBACKS = {CPU_NOT_JPEG: "decode_cpu_not_jpeg", CPU_CMYK: "decode_cpu_cmyk"}
DEVICE_REFUSED = "decode_cpu_device_refused"
FALLBACK_NAMES = (*FALLBACKS.values(), DEVICE_REFUSED)
# columns of one sample's geometry row
GEOMETRY = ("index", "top", "left", "h", "w", "flip", "height", "width", "orientation", "route")


def read_header(data: bytes) -> tuple[str, str, int, int, int]:
    """(format, mode, width, height, EXIF orientation) from a file's header, without decoding the
    pixels; width and height as displayed (EXIF orientation applied)."""
    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
        orientation = orientation_of(img)
        fmt, mode = img.format or "", img.mode
    if orientation in TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    if width <= 0 or height <= 0:
        raise ValueError(f"invalid image size {width}x{height}")
    return fmt, mode, width, height, orientation


def apply_orientation(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """A decoded (C, H, W) image as displayed under its EXIF `orientation` (PIL's
    `ImageOps.exif_transpose`), on whatever device it is."""
    if orientation in (5, 6, 7, 8):
        img = img.transpose(-2, -1)
        # after transposing, 5 is done; 6 (rotate 90 cw) and 7 flip columns, 7 and 8 rows
        orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]
    if orientation == 2:
        return img.flip(-1)
    if orientation == 3:
        return img.flip(-2, -1)
    if orientation == 4:
        return img.flip(-2)
    return img


class EncodedImageNetBoxes(Dataset):
    """A worker's side of `DATA.DECODE device`: `(bytes, label, coverage, object_coverage, has_box,
    geometry)` for each sample of `base`, whose epoch, seed and crop settings it follows."""

    def __init__(self, base: ImageNetBoxes) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, float, float, bool, list[int]]:
        base, path = self.base, self.base.path(index)
        try:
            raw = base.read(index)
            fmt, mode, width, height, orientation = read_header(raw)
        except DataError:
            raise  # packed bytes that fail their SHA-1: an error, never a wrong or masked image
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            if base.strict:
                raise BadImageError(path, f"unreadable image header ({exc})") from exc
            return (
                torch.zeros(0, dtype=torch.uint8),
                -1,
                0.0,
                0.0,
                False,
                [index] + [0] * 8 + [UNREADABLE],
            )
        route = CPU_NOT_JPEG if fmt != "JPEG" else CPU_CMYK if mode == "CMYK" else ON_DEVICE
        if base.train:
            top, left, h, w, flip = base.train_crop(index, width, height)
            crop = (left, top, left + w, top + h)
        else:
            top = left = h = w = flip = 0
            crop = center_crop_box(width, height, base.val_resize, base.image_size)
        cov, obj = base.coverages(index, crop)
        data = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).copy())
        geometry = [index, top, left, h, w, int(flip), height, width, orientation, route]
        return data, base.label(index), cov, obj, bool(len(base.boxes(index))), geometry

    @staticmethod
    def collate(items) -> tuple[torch.Tensor, ...]:
        """One flat byte tensor per batch (one shared-memory handle, not one per image)."""
        data, labels, cov, obj, has_box, geometry = zip(*items)
        return (
            torch.cat(data),
            torch.tensor([len(d) for d in data], dtype=torch.int64),
            torch.tensor(labels, dtype=torch.int64),
            torch.tensor(cov, dtype=torch.float64),
            torch.tensor(obj, dtype=torch.float64),
            torch.tensor(has_box),
            torch.tensor(geometry, dtype=torch.int64),
        )


class DeviceDecoder:
    """The device's side of `DATA.DECODE device`: a collated `EncodedImageNetBoxes` batch to
    `ImageNetBoxes`' batch `(images, labels, coverage, object_coverage, has_box)`, images on
    `device`. `counts` accumulates the CPU fallbacks (`names`) until `take_counts`."""

    names = FALLBACK_NAMES

    def __init__(
        self,
        base: ImageNetBoxes,
        device: torch.device,
        channels_last: bool = False,
        counts: Counter | None = None,
    ) -> None:
        self.base, self.device, self.channels_last = base, torch.device(device), channels_last
        self.counts = Counter() if counts is None else counts
        self._warned: set[str] = set()
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1) * 255
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1) * 255

    def take_counts(self) -> dict[str, int]:
        """The fallback counts since the last call (every name, zeros included); resets them."""
        out = {name: int(self.counts.get(name, 0)) for name in self.names}
        self.counts.clear()
        return out

    def __call__(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        flat, lengths, labels, cov, obj, has_box, geometry = batch
        labels, cov, obj, has_box = labels.clone(), cov.clone(), obj.clone(), has_box.clone()
        rows = geometry.tolist()
        data = list(torch.split(flat, lengths.tolist()))
        size = self.base.image_size
        images = torch.empty(len(rows), 3, size, size, device=self.device)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        rest = self._pipeline(data, rows, images)
        if rest:
            crops = self._crops([data[k] for k in rest], [rows[k] for k in rest])
            for k, crop in zip(rest, crops):
                if crop is None:
                    labels[k], cov[k], obj[k], has_box[k] = -1, 0.0, 0.0, False
            zero = torch.zeros(3, size, size, dtype=torch.uint8, device=self.device)
            stacked = torch.stack([zero if c is None else c for c in crops])
            images[rest] = (stacked.float() - self._mean) / self._std
        return images, labels, cov, obj, has_box

    def _pipeline(
        self, data: list[torch.Tensor], rows: list[list[int]], images: torch.Tensor
    ) -> list[int]:
        """Where a subclass decodes samples of the batch its own way: fills their rows of
        `images` (normalised) and returns the positions left to `_crops` (here: all)."""
        return list(range(len(rows)))

    def _crops(self, data: list[torch.Tensor], rows: list[list[int]]) -> list[torch.Tensor | None]:
        """Each sample's uint8 (3, S, S) crop on the device, or None where undecodable."""
        size = [self.base.image_size] * 2
        out: list[torch.Tensor | None] = []
        for img, row in zip(self._decode(data, rows), rows):
            g = dict(zip(GEOMETRY, row))
            if img is None:
                out.append(None)
                continue
            img = apply_orientation(img, g["orientation"])
            if tuple(img.shape[1:]) != (g["height"], g["width"]):
                raise ValueError(
                    f"{self.base.path(g['index'])}: decoded size {tuple(img.shape[1:])} differs "
                    f"from its header size {(g['height'], g['width'])}"
                )
            if self.base.train:
                img = TF.resized_crop(
                    img, g["top"], g["left"], g["h"], g["w"], size, antialias=True
                )
                if g["flip"]:
                    img = TF.horizontal_flip(img)
            else:
                img = TF.center_crop(TF.resize(img, [self.base.val_resize], antialias=True), size)
            out.append(img)
        return out

    def _decode(self, data: list[torch.Tensor], rows: list[list[int]]) -> list[torch.Tensor | None]:
        """Every sample's RGB uint8 (C, H, W) on the device as stored (before EXIF orientation),
        or None where unreadable."""
        routes = [row[-1] for row in rows]
        out: list[torch.Tensor | None] = [None] * len(data)
        batch = [k for k, r in enumerate(routes) if r == ON_DEVICE]
        if batch:
            try:
                for k, img in zip(batch, _decode_jpeg([data[k] for k in batch], self.device)):
                    out[k] = img
            except RuntimeError:  # one file fails the whole call: decode them one by one
                for k in batch:
                    out[k] = self._one(data[k], rows[k])
        for k, route in enumerate(routes):
            if route in FALLBACKS:
                self.counts[FALLBACKS[route]] += 1
                out[k] = self._on_cpu(data[k], rows[k])
            elif route == UNREADABLE:
                self._bad(rows[k], "unreadable image header")
        return out

    def _one(self, data: torch.Tensor, row: list[int]) -> torch.Tensor | None:
        """One JPEG on the device. A GPU's refusal (nvJPEG lacks JPEG variants that libjpeg-turbo
        reads) sends it through the CPU, counted; on the CPU the refusal is final."""
        try:
            return _decode_jpeg([data], self.device)[0]
        except RuntimeError as exc:
            if self.device.type == "cpu":
                self._bad(row, f"cannot decode image ({exc})")
                return None
            self.counts[DEVICE_REFUSED] += 1
            return self._on_cpu(data, row)

    def _on_cpu(self, data: torch.Tensor, row: list[int]) -> torch.Tensor | None:
        try:
            return _decode_on_cpu(data).to(self.device, non_blocking=True)
        except RuntimeError as exc:
            self._bad(row, f"cannot decode image ({exc})")
            return None

    def _bad(self, row: list[int], reason: str) -> None:
        path = self.base.path(row[0])
        if self.base.strict:
            raise BadImageError(path, reason)
        if path not in self._warned:
            self._warned.add(path)
            logger.warning(
                "undecodable image %s: returned with label -1 (masked by the trainer)", path
            )


def _decode_jpeg(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """One batched JPEG decode into RGB (greyscale expanded) on `device`. torchvision 0.29
    deprecates its image decoders in favour of TorchCodec; this is the one call to change."""
    if device.type == "cuda":
        # nvJPEG's hardware decoder writes its output before the work already queued on the
        # caller's stream has run, into blocks the caching allocator recycled from that work
        # (pytorch/vision#9606, meta-pytorch/torchcodec#1634): on an H200 the training step read
        # overwritten activations and its loss became NaN within 6 steps. Wait for that work first;
        # decode_jpeg blocks the host until the decode is done in any case.
        torch.cuda.current_stream(device).synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def _decode_on_cpu(data: torch.Tensor) -> torch.Tensor:
    """Any format torchvision reads (PNG, CMYK JPEG, ...) as RGB on the CPU."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_image(data, mode=ImageReadMode.RGB)


class DeviceDecodedLoader:
    """A DataLoader of `EncodedImageNetBoxes` batches that yields `ImageNetBoxes`' batches with the
    images decoded on the decoder's device."""

    def __init__(self, loader: DataLoader, decoder: DeviceDecoder) -> None:
        self.loader, self.decoder = loader, decoder

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        for batch in self.loader:
            yield self.decoder(batch)
