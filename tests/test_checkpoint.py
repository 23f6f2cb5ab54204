"""Checkpoint dict: atomic save, safe load, key checks, backbone loading, RNG round trip."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torchvision

from als_det.engine.checkpoint import (
    REQUIRED_KEYS,
    CheckpointError,
    get_rng_state,
    load_backbone,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
    unwrap_model,
)
from als_det.models import build_resnet


def _state(model: torch.nn.Module) -> dict:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0 / (it + 1))
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    sched.step()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "scaler": None,
        "epoch": 3,
        "arch": "resnet18",
        "num_classes": 4,
        "classes": list("abcd"),
        "label_strategy": {
            "name": "als",
            "epsilon": 0.1,
            "e_min": 0.0,
            "e_max": 1.0,
            "no_box": "ls",
            "no_box_epsilon": 0.1,
        },
        "preprocessing": {
            "input_format": "RGB",
            "pixel_mean": [123.675, 116.28, 103.53],
            "pixel_std": [58.395, 57.12, 57.375],
            "image_size": 32,
        },
        "config": "SEED: 0\n",
        "seed": 0,
        "rng_state": get_rng_state(),
        "metrics": {"top1": 0.5},
        "best_top1": 0.5,
        "versions": {"torch": str(torch.__version__)},
    }


def test_round_trip_loads_with_weights_only(tmp_path):
    model = build_resnet("resnet18", 4)
    state = _state(model)
    path = save_checkpoint(tmp_path / "last.pth", state)
    # weights_only=True is what load_checkpoint uses: the dict must hold no arbitrary objects.
    ckpt = load_checkpoint(path)
    assert set(REQUIRED_KEYS) <= set(ckpt)
    assert ckpt["optimizer"]["state"][0]["momentum_buffer"].shape == model.conv1.weight.shape
    assert ckpt["scheduler"]["last_epoch"] == 1
    assert not list(tmp_path.glob(".*.tmp"))

    backbone, ckpt2 = load_backbone(path)
    assert not backbone.training
    assert isinstance(backbone, torchvision.models.ResNet) and backbone.fc.out_features == 4
    for k, v in model.state_dict().items():
        assert torch.equal(backbone.state_dict()[k], v), k
    assert ckpt2["classes"] == list("abcd")


def test_save_rejects_incomplete_or_wrapped(tmp_path):
    model = build_resnet("resnet18", 4)
    state = _state(model)
    with pytest.raises(KeyError, match="rng_state"):
        save_checkpoint(tmp_path / "a.pth", {k: v for k, v in state.items() if k != "rng_state"})
    wrapped = dict(state, model={"module." + k: v for k, v in state["model"].items()})
    with pytest.raises(ValueError, match="wrapper prefix"):
        save_checkpoint(tmp_path / "b.pth", wrapped)
    assert not (tmp_path / "a.pth").exists() and not (tmp_path / "b.pth").exists()


def test_clear_errors_for_files_that_are_not_checkpoints(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pth"):
        load_backbone(text)
    bare = tmp_path / "weights.pth"
    torch.save(build_resnet("resnet18", 4).state_dict(), bare)  # a plain state_dict, not our dict
    with pytest.raises(CheckpointError, match="lacks"):
        load_backbone(bare)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_backbone(tmp_path / "missing.pth")
    state = _state(build_resnet("resnet18", 4))
    wrong = save_checkpoint(tmp_path / "wrong.pth", dict(state, num_classes=7))
    with pytest.raises(CheckpointError, match="7 classes"):
        load_backbone(wrong)


def test_unwrap_compiled_model():
    model = build_resnet("resnet18", 4)
    compiled = torch.compile(model)  # wrapping only; nothing is compiled until it runs
    assert unwrap_model(compiled) is model
    assert set(unwrap_model(compiled).state_dict()) == set(model.state_dict())


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    save_checkpoint(
        tmp_path / "r.pth", dict(_state(build_resnet("resnet18", 4)), rng_state=get_rng_state())
    )
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    set_rng_state(load_checkpoint(tmp_path / "r.pth")["rng_state"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1])
    assert expected[2] == got[2]
