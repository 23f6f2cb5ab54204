"""The training/eval Dataset: decoded image, random crop + flip (or centre crop), box coverages."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torch.utils.data import Dataset

from als_det.data.boxes import ImageRecord
from als_det.data.crops import (
    center_crop_box,
    coverage,
    object_coverage,
    random_resized_crop_params,
)
from als_det.data.images import BadImageError, load_rgb
from als_det.data.pack import PackReader

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed seed for one (seed, epoch, index): crops never depend on worker or arm."""
    return _splitmix64(_splitmix64(_splitmix64(seed & _MASK64) ^ epoch) ^ index)


class ImageNetBoxes(Dataset):
    """`(image, label, coverage, object_coverage, has_box)` per record; knows no label strategy.

    train: `random_resized_crop_params` on a generator seeded from (seed, epoch, index), resized
    crop to `image_size`, horizontal flip with p=0.5 from the same generator. eval: resize the
    shorter side to `val_resize`, centre crop `image_size`. `coverage` is the share of that crop
    covered by the labelled boxes, `object_coverage` the share of the boxes' union inside the
    crop (both 0.0 without boxes; a strategy picks one, see `als_det.targets`). Images that fail
    to decode (truncated data): with `strict` a `BadImageError` naming the file; otherwise a zero
    image with label -1 (a warning names the file once per process) which the trainer masks out
    of loss and metrics and counts.
    Records are stored as flat arrays so forked DataLoader workers share them without copying.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        classes: Sequence[str],
        train: bool,
        image_size: int,
        val_resize: int | None = None,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        seed: int = 0,
        strict: bool = False,
    ) -> None:
        self.classes = list(classes)
        self.train = train
        self.image_size = int(image_size)
        self.val_resize = int(val_resize) if val_resize else round(self.image_size * 256 / 224)
        if not train and self.val_resize < self.image_size:
            raise ValueError(f"val_resize {self.val_resize} < image_size {self.image_size}")
        self.scale = tuple(float(s) for s in scale)
        self.ratio = tuple(float(r) for r in ratio)
        self.seed = int(seed)
        self.strict = strict
        self.epoch = 0
        encoded = [r.path.encode("utf-8") for r in records]
        self._path_bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self._path_offsets = np.concatenate([[0], np.cumsum([len(b) for b in encoded])]).astype(
            np.int64
        )
        self._labels = np.array([r.label for r in records], dtype=np.int64)
        counts = np.array([len(r.boxes) for r in records], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._boxes = (
            np.concatenate([r.boxes for r in records]).astype(np.float32)
            if len(records)
            else np.zeros((0, 4), np.float32)
        )
        packs = sorted({r.pack for r in records if r.pack})
        self._packs = packs
        if packs:  # per record: its pack (-1: a file), offset, length, SHA-1
            which = {p: i for i, p in enumerate(packs)}
            self._pack = np.array([which.get(r.pack, -1) for r in records], dtype=np.int32)
            self._extents = np.array([(r.offset, r.length) for r in records], dtype=np.int64)
            self._sha1 = np.frombuffer(
                b"".join(r.sha1 if r.pack else bytes(20) for r in records), dtype=np.uint8
            ).reshape(-1, 20)
            self._reader = PackReader()
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self._labels)

    def set_epoch(self, epoch: int) -> None:
        """Crops depend only on (seed, epoch, index)."""
        self.epoch = int(epoch)

    def boxes(self, index: int) -> np.ndarray:
        return self._boxes[self._offsets[index] : self._offsets[index + 1]]

    def label(self, index: int) -> int:
        return int(self._labels[index])

    def path(self, index: int) -> str:
        start, end = self._path_offsets[index], self._path_offsets[index + 1]
        return self._path_bytes[start:end].tobytes().decode("utf-8")

    def packed(self, index: int) -> bool:
        return bool(self._packs) and self._pack[index] >= 0

    def read(self, index: int) -> bytes:
        """The image file's bytes: from its pack (checked against its SHA-1, a `DataError` where
        they fail it) for a packed split, else from its file."""
        if not self.packed(index):
            with open(self.path(index), "rb") as f:
                return f.read()
        offset, length = (int(v) for v in self._extents[index])
        pack = self._packs[self._pack[index]]
        return self._reader.read(
            pack, offset, length, self._sha1[index].tobytes(), self.path(index)
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, float, float, bool]:
        path = self.path(index)
        try:
            img = load_rgb(path, self.read(index) if self.packed(index) else None)
        except BadImageError:
            if self.strict:
                raise
            if path not in self._warned:
                self._warned.add(path)
                logger.warning(
                    "undecodable image %s: returned with label -1 (masked by the trainer)", path
                )
            return torch.zeros(3, self.image_size, self.image_size), -1, 0.0, 0.0, False
        width, height = img.size
        size = [self.image_size, self.image_size]
        if self.train:
            top, left, h, w, flip = self.train_crop(index, width, height)
            crop = (left, top, left + w, top + h)
            img = TF.resized_crop(img, top, left, h, w, size, antialias=True)
            if flip:
                img = TF.hflip(img)
        else:
            crop = center_crop_box(width, height, self.val_resize, self.image_size)
            img = TF.center_crop(TF.resize(img, self.val_resize, antialias=True), size)
        cov, obj = self.coverages(index, crop)
        tensor = TF.normalize(TF.to_tensor(img), IMAGENET_MEAN, IMAGENET_STD)
        return tensor, int(self._labels[index]), cov, obj, bool(len(self.boxes(index)))

    def train_crop(self, index: int, width: int, height: int) -> tuple[int, int, int, int, bool]:
        """(top, left, h, w, flip) of `index` this epoch for a `width` x `height` image: every
        decode path (`DATA.DECODE`) draws its crop here, so crops never depend on the path."""
        g = torch.Generator()
        g.manual_seed(sample_seed(self.seed, self.epoch, index))
        top, left, h, w = random_resized_crop_params(width, height, self.scale, self.ratio, g)
        return top, left, h, w, bool(torch.rand(1, generator=g).item() < 0.5)

    def coverages(self, index: int, crop: Sequence[float]) -> tuple[float, float]:
        """(coverage, object coverage) of `crop` (x0, y0, x1, y1); (0.0, 0.0) without boxes."""
        boxes = self.boxes(index)
        if not len(boxes):
            return 0.0, 0.0
        return float(coverage(boxes, crop)), float(object_coverage(boxes, crop))
