"""The GPU check's pieces that run on a CPU in seconds.

The whole `benchmarks/gpu_check.sh --cpu-smoke` (wheelhouse build, fresh venv, every section)
takes about 3 minutes, so it is documented in docs/benchmarks.md rather than run here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_check():
    return _load("gpu_check")


def test_preinstalled_folder_has_torch_but_none_of_the_wheelhouse(tmp_path: Path) -> None:
    emulate = _load("emulate_preinstalled")
    names = emulate.build(tmp_path / "pre")
    linked = {p.name for p in (tmp_path / "pre").iterdir()}
    assert {"torch", "torchvision", "numpy", "PIL", "cv2", "tensorboard"} <= linked
    assert not linked & {
        "detectron2",
        "pycocotools",
        "fvcore",
        "iopath",
        "yacs",
        "termcolor",
        "omegaconf",
        "hydra",
        "antlr4",
        "submitit",
        "als_det",
    }
    assert "torch" in names and "pb1-detectron2" not in names
    assert all((tmp_path / "pre" / n).is_symlink() for n in linked)


def test_gpu_decode_section_runs_the_trainers_device_path(gpu_check, tmp_path: Path) -> None:
    """The section's loader is the trainer's `DATA.DECODE device` path: the same crops and
    coverage as `ImageNetBoxes`, and (nearly) its images, on the section's generated JPEGs."""
    from als_det.data.device_decode import DeviceDecodedLoader
    from als_det.data.imagenet import ImageNetBoxes

    plan = gpu_check.smoke_plan()
    records, classes = gpu_check.make_jpeg_set(tmp_path / "jpegs", plan, processes=1)
    records = records[:12]
    assert any(len(r.boxes) == 0 for r in records) and any(len(r.boxes) for r in records)
    dataset = ImageNetBoxes(records, classes, train=True, image_size=plan.image_size, seed=3)
    dataset.set_epoch(2)
    small = dataclasses.replace(plan, batch=len(records))
    loader = gpu_check.device_decode_loader(dataset, small, 0, torch.device("cpu"), 1)
    assert isinstance(loader, DeviceDecodedLoader)
    sampler = loader.loader.sampler
    state = sampler.generator.get_state()
    order = list(sampler)  # the draw the loader is about to make
    sampler.generator.set_state(state)
    images, labels, cov, obj, has_box = next(iter(loader))
    assert images.shape == (len(records), 3, plan.image_size, plan.image_size)
    assert images.is_contiguous(memory_format=torch.channels_last)
    for k, i in enumerate(order):
        image, label, coverage, object_coverage, box = dataset[i]
        assert (label, box) == (int(labels[k]), bool(has_box[k]))
        assert (cov[k].item(), obj[k].item()) == (coverage, object_coverage)
        assert (images[k] - image).abs().max().item() < 0.02  # one grey level, normalised


def test_device_decoder_rejects_a_header_that_lies(gpu_check, tmp_path: Path) -> None:
    from als_det.data.device_decode import DeviceDecoder, EncodedImageNetBoxes
    from als_det.data.imagenet import ImageNetBoxes

    plan = gpu_check.smoke_plan()
    records, classes = gpu_check.make_jpeg_set(tmp_path / "jpegs", plan, processes=1)
    dataset = ImageNetBoxes(records[:1], classes, train=True, image_size=8)
    encoded = EncodedImageNetBoxes(dataset)
    batch = encoded.collate([encoded[0]])
    batch[6][0, 6] += 1  # the header's height
    with pytest.raises(ValueError, match="header size"):
        DeviceDecoder(dataset, torch.device("cpu"))(batch)


def test_detectron2_log_figures(gpu_check) -> None:
    log = (
        "[11/28 00:57:40] d2.utils.events INFO:  eta: 0:00:01  iter: 39  total_loss: 2.1  time: "
        "0.2 data_time: 0.01  lr: 0.01  max_mem: 1500M\n"
        "[11/28 00:57:41] d2.utils.events INFO:  eta: 0:00:00  iter: 49  total_loss: 2.0  time: "
        "0.2 data_time: 0.01  lr: 0.01  max_mem: 3072M\n"
        "[11/28 00:57:46] d2.engine.hooks INFO: Overall training speed: 47 iterations in 0:00:09 "
        "(0.2125 s / it)\n"
    )
    assert gpu_check._detectron2_log_figures(log) == {
        "timed_iterations": 47,
        "s_per_iter": 0.2125,
        "peak_mem_gib": 3.0,
    }
    assert gpu_check._detectron2_log_figures("no such lines")["s_per_iter"] is None


def test_checks_flag_a_slow_als_step(gpu_check) -> None:
    sections = {"pretrain": {"eager_als_over_hard": 0.97, "compiled_als_over_hard": 0.995}}
    result = gpu_check.checks(sections, smoke=False)
    assert result[f"eager ALS/hard >= {gpu_check.MIN_ALS_OVER_HARD}"].startswith("FAIL")
    assert result[f"compiled ALS/hard >= {gpu_check.MIN_ALS_OVER_HARD}"].startswith("ok")
    assert all("not checked" in v for v in gpu_check.checks(sections, smoke=True).values())


def test_a_cut_section_fails_on_a_gpu_but_not_in_a_cpu_smoke_run(gpu_check) -> None:
    sections = {
        "pretrain": {"status": "ok"},
        "gpu_decode": {"status": "cut at its 30 s cap; figures so far kept"},
        "input": {"status": "skipped: not asked for"},
    }
    assert gpu_check.failed_sections(sections, smoke=True) == []
    assert gpu_check.failed_sections(sections, smoke=False) == ["gpu_decode"]
    broken = dict(sections, finetune={"status": "failed (exit 1); see finetune.log"})
    assert gpu_check.failed_sections(broken, smoke=True) == ["finetune"]


def test_every_runtime_requirement_of_als_det_is_preinstalled_or_in_the_wheelhouse() -> None:
    """The offline install is `pip install --no-index --no-deps` of the wheelhouse over the
    preinstalled packages: a requirement of als_det in neither fails `gpu_check.sh`'s pip check."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    emulate, wheelhouse = _load("emulate_preinstalled"), _load("build_wheelhouse")
    preinstalled = set(emulate.closure(emulate.PREINSTALLED))
    built = {emulate._norm(n) for n in wheelhouse.BINARY + wheelhouse.PURE}
    assert built < {emulate._norm(n) for n in emulate.WHEELHOUSE}  # what the folder must not hold
    required = {
        emulate._norm(r.name)
        for r in map(Requirement, md.requires("als-det"))
        if r.marker is None or r.marker.evaluate({"extra": ""})
    }
    assert required - preinstalled - built == set()


def test_reference_step_and_trainer_step_take_the_same_batches(gpu_check) -> None:
    """The pretrain section's torchvision-reference step and the trainer's step both run on the
    section's synthetic batches (the trainer's batch layout: images, labels, coverages, has_box)."""
    plan, device = gpu_check.smoke_plan(), torch.device("cpu")
    model, opt = gpu_check._model(plan, device)
    batches = gpu_check._synthetic_batches(plan, device, n=1)
    assert gpu_check.plain_ce_rate(model, opt, batches, plan, device, 1) > 0
    from als_det.targets import LabelStrategy

    assert gpu_check.trainer_rate(model, opt, LabelStrategy("als"), batches, plan, device, 1) > 0
