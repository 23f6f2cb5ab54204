"""Shared fixtures. Real-data fixtures live in ../shared/data beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision
from tiny_runs import TORCHVISION_PRE

from als_det.convert import convert_file

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ALS_DET_SHARED_DATA", REPO.parent / "shared" / "data"))

# pytest-xdist (`make test` runs `-n 2`): each worker, and every process its tests start, runs on
# its own share of the CPUs (its affinity, which the local launcher reads as its CPU budget) with
# a thread per core of that share, two at most. A worker sets OMP_NUM_THREADS itself: the value it
# inherits is the controller's, for all the CPUs. Processes with more threads than their cores,
# on cores the other worker uses, made the tests that start them 2-4x slower (docs/benchmarks.md).
# With more workers than CPUs (`make test TEST_WORKERS=3` here), or without affinities (macOS),
# the workers share the CPUs and only the thread count is set.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_AFFINITY = hasattr(os, "sched_setaffinity")
_CPUS = sorted(os.sched_getaffinity(0)) if _AFFINITY else list(range(os.cpu_count() or 1))
_SHARE = _CPUS[int((_WORKER or "gw0").removeprefix("gw")) :: _WORKERS]
if _AFFINITY and len(_CPUS) >= _WORKERS > 1:
    os.sched_setaffinity(0, _SHARE)
_THREADS = max(1, min(2, len(_SHARE)))
if _WORKER is None:
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
else:
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
torch.set_num_threads(_THREADS)


def _shared(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.is_dir():
        reason = f"real-data fixture {path} is absent (see ../shared/data/README.md)"
        if os.environ.get("ALS_DET_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(reason + "; CI requires it (ALS_DET_REQUIRE_SHARED_DATA=1)")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def tiny_imagenet() -> Path:
    """../shared/data/tiny-imagenet-10: real ImageNet photos with Pascal-VOC boxes."""
    return _shared("tiny-imagenet-10")


@pytest.fixture(scope="session")
def tiny_imagenet_transfer() -> Path:
    """../shared/data/tiny-imagenet-transfer: 20 other Tiny-ImageNet classes (a downstream set)."""
    return _shared("tiny-imagenet-transfer")


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    """../shared/data/coco-mini: real COCO 2017 images in the official layout."""
    return _shared("coco-mini")


@pytest.fixture(scope="module")
def resnet18_pth(tmp_path_factory) -> Path:
    """A random torchvision ResNet-18 saved like an als_det pretraining checkpoint."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pre") / "resnet18.pth"
    torch.save(
        {
            "model": torchvision.models.resnet18(num_classes=10).state_dict(),
            "arch": "resnet18",
            "label_strategy": {"name": "als", "epsilon": 0.1},
            "preprocessing": TORCHVISION_PRE,
            "seed": 3,
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def resnet18_pkl(resnet18_pth) -> Path:
    """resnet18_pth converted to detectron2's `.pkl` (unverified)."""
    out = resnet18_pth.with_suffix(".pkl")
    convert_file(resnet18_pth, out)
    return out
