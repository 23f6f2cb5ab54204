"""torchvision ResNet -> detectron2 .pkl: names, depth inference, verification, bad input."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from tiny_runs import run_tool

from als_det.convert import (
    ConversionError,
    backbone_state_dict,
    convert_file,
    convert_torchvision_resnet,
    d2_name,
    infer_depth,
)
from als_det.detection.verify import VerificationFailed, convert_verified, verify
from als_det.engine.checkpoint import get_rng_state
from als_det.revision import code_revision

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "detection" / "faster_rcnn_R_18_FPN_demo.yaml"
C4_CONFIG = REPO / "configs" / "detection" / "faster_rcnn_R_50_C4_1x.yaml"
PREPROCESSING = {
    "input_format": "RGB",
    "pixel_mean": [123.675, 116.28, 103.53],
    "pixel_std": [58.395, 57.12, 57.375],
    "image_size": 64,
}
STRATEGY = {
    "name": "als",
    "epsilon": 0.1,
    "e_min": 0.0,
    "e_max": 1.0,
    "no_box": "ls",
    "no_box_epsilon": 0.1,
}


def resnet(depth: int, seed: int = 0) -> torch.nn.Module:
    """torchvision ResNet with random BN affine and running stats, so that a BN mix-up shows."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=10)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.normal_(m.bias, 0.0, 0.1)
            m.running_mean.normal_(0.0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return model


def suite_checkpoint(model: torch.nn.Module, arch: str, prefix: str = "") -> dict:
    """A checkpoint shaped like als_det.engine.checkpoint's (see docs/architecture.md)."""
    return {
        "model": {prefix + k: v for k, v in model.state_dict().items()},
        "arch": arch,
        "num_classes": 10,
        "label_strategy": STRATEGY,
        "preprocessing": PREPROCESSING,
        "config": "MODEL:\n  ARCH: resnet18\n",
        "epoch": 3,
        "seed": 1,
        "rng_state": get_rng_state(),
        "versions": {"torch": str(torch.__version__)},
    }


@pytest.fixture(scope="module")
def r18_files(tmp_path_factory) -> tuple[Path, Path, torch.nn.Module]:
    """A DDP+compile-prefixed suite checkpoint of a ResNet-18 and its verified conversion."""
    d = tmp_path_factory.mktemp("r18")
    model = resnet(18)
    src = d / "r18.pth"
    torch.save(suite_checkpoint(model, "resnet18", prefix="module._orig_mod."), src)
    out = d / "r18.pkl"
    result = convert_verified(src, out, input_size=64)
    assert result["verify"]["ok"], result["verify"]
    return src, out, model


def test_names_follow_detectron2_resnet():
    assert d2_name("conv1.weight") == "stem.conv1.weight"
    assert d2_name("bn1.running_var") == "stem.conv1.norm.running_var"
    assert d2_name("layer1.0.conv2.weight") == "res2.0.conv2.weight"
    assert d2_name("layer1.1.bn2.bias") == "res2.1.conv2.norm.bias"
    assert d2_name("layer4.2.bn3.running_mean") == "res5.2.conv3.norm.running_mean"
    assert d2_name("layer2.0.downsample.0.weight") == "res3.0.shortcut.weight"
    assert d2_name("layer3.0.downsample.1.weight") == "res4.0.shortcut.norm.weight"
    with pytest.raises(ConversionError):
        d2_name("fc.weight")


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_depth_inferred_from_keys(depth):
    with torch.device("meta"):
        sd = getattr(torchvision.models, f"resnet{depth}")(weights=None).state_dict()
    assert infer_depth(sd) == depth
    backbone = backbone_state_dict(sd, depth)
    assert not any(k.startswith("fc.") or k.endswith("num_batches_tracked") for k in backbone)
    assert len(backbone) == len(sd) - 2 - sum(k.endswith("num_batches_tracked") for k in sd)


def test_convert_in_memory_drops_fc_and_counters():
    model = resnet(18)
    out = convert_torchvision_resnet(model.state_dict())
    sd = model.state_dict()
    assert "fc.weight" in sd and not any("fc" in k or "num_batches" in k for k in out)
    np.testing.assert_array_equal(
        out["res3.0.shortcut.norm.running_var"], sd["layer2.0.downsample.1.running_var"].numpy()
    )
    assert all(isinstance(v, np.ndarray) for v in out.values())


def test_converted_file_holds_weights_and_metadata(r18_files):
    src, out, model = r18_files
    data = pickle.loads(out.read_bytes())
    assert data["__author__"] == "als_det" and data["matching_heuristics"] is True
    assert len(data["model"]) == 100  # ResNet-18: 20 convs + 20 BNs x 4 tensors
    np.testing.assert_array_equal(
        data["model"]["stem.conv1.weight"], model.conv1.weight.detach().numpy()
    )
    meta = data["als_det"]
    assert (
        meta["depth"] == 18 and meta["label_strategy"] == STRATEGY and meta["unsafe_load"] is False
    )
    assert meta["preprocessing"] == PREPROCESSING and meta["pretrain_config"].startswith("MODEL:")
    from als_det.io import sha256_file

    assert meta["source_sha256"] == sha256_file(src)
    assert "torch" in meta["versions"] and any("detectron2" in k for k in meta["versions"])
    assert meta["revision"] == code_revision()
    assert not any(Path(p).name.endswith(".verify.pkl") for p in out.parent.iterdir())


def test_verify_passes_in_the_demo_config(r18_files):
    src, out, _ = r18_files
    result = verify(out, src, config_file=DEMO_CONFIG, input_size=48)
    assert result.ok, result.summary()
    assert result.loaded_tensors == result.expected_tensors == 100
    assert result.max_diff < 1e-4


def _rewrite(src: Path, dst: Path, edit) -> Path:
    data = pickle.loads(src.read_bytes())
    edit(data["model"])
    dst.write_bytes(pickle.dumps(data))
    return dst


def test_verify_fails_on_a_perturbed_tensor(r18_files, tmp_path):
    src, out, _ = r18_files

    def perturb(m):  # small enough that a loose output check alone could miss it
        m["res4.1.conv2.norm.running_var"] = m["res4.1.conv2.norm.running_var"] + 1e-3

    bad = verify(_rewrite(out, tmp_path / "bad.pkl", perturb), src, input_size=48)
    assert not bad.ok
    assert any("res4.1.conv2.norm.running_var" in p for p in bad.problems), bad.problems

    def scale(m):
        m["res3.0.conv1.weight"] = m["res3.0.conv1.weight"] * 2

    bad = verify(_rewrite(out, tmp_path / "bad2.pkl", scale), src, input_size=48)
    assert not bad.ok and bad.max_abs_diff["res3"] > 1e-4 and bad.max_abs_diff["res2"] < 1e-4


def test_verify_fails_on_a_removed_or_extra_tensor(r18_files, tmp_path):
    src, out, _ = r18_files
    removed = verify(
        _rewrite(out, tmp_path / "rm.pkl", lambda m: m.pop("res5.1.conv1.norm.weight")),
        src,
        input_size=48,
    )
    assert not removed.ok and removed.loaded_tensors == 99
    assert any("not loaded" in p and "res5.1.conv1.norm.weight" in p for p in removed.problems)

    def add(m):
        m["res5.9.conv1.weight"] = np.zeros((1,), np.float32)

    extra = verify(_rewrite(out, tmp_path / "extra.pkl", add), src, input_size=48)
    assert not extra.ok and any("res5.9.conv1.weight" in p for p in extra.problems)


def test_failed_verification_writes_nothing(tmp_path):
    ckpt = suite_checkpoint(resnet(18), "resnet18")
    ckpt["preprocessing"] = {**PREPROCESSING, "pixel_mean": [0.485, 0.456, 0.406]}  # 0-1 scale
    torch.save(ckpt, tmp_path / "in.pth")
    with pytest.raises(VerificationFailed, match="pixel_mean"):
        convert_verified(tmp_path / "in.pth", tmp_path / "out.pkl", input_size=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pth"]


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (input file, expected message fragment)."""
    r18 = resnet(18).state_dict()
    cases: dict[str, tuple[object, str]] = {
        "not_resnet": (
            torchvision.models.mobilenet_v3_small().state_dict(),
            "not a torchvision ResNet",
        ),
        "unknown_depth": (
            {k: v for k, v in r18.items() if not k.startswith("layer3.1.")},
            "unknown ResNet layout",
        ),
        "missing_key": (
            {k: v for k, v in r18.items() if k != "layer1.0.bn1.running_mean"},
            "missing 1 backbone tensors",
        ),
        "extra_key": ({**r18, "layer1.0.se.weight": torch.zeros(1)}, "1 unexpected tensors"),
        "arch_mismatch": ({"model": r18, "arch": "resnet34"}, "records arch 'resnet34'"),
        "not_state_dict": ({"model": {"epoch": 3}}, "not a state_dict"),
    }
    with torch.device("meta"):
        wide = torchvision.models.wide_resnet50_2().state_dict()
    cases["wrong_shapes"] = ({k: torch.zeros(v.shape) for k, v in wide.items()}, "wrong shape")
    files = {}
    for name, (obj, msg) in cases.items():
        torch.save(obj, tmp / f"{name}.pth")
        files[name] = (tmp / f"{name}.pth", msg)
    good = tmp / "good.pth"
    torch.save(r18, good)
    (tmp / "truncated.pth").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    files["truncated"] = (tmp / "truncated.pth", "not a readable torch checkpoint")
    (tmp / "text.pth").write_text("not a checkpoint\n")
    files["text"] = (tmp / "text.pth", "not a readable torch checkpoint")
    files["absent"] = (tmp / "absent.pth", "no such file")
    return files


def test_bad_inputs_raise_and_write_nothing(tmp_path):
    for name, (src, msg) in _bad_inputs(tmp_path).items():
        out = tmp_path / f"{name}.pkl"
        with pytest.raises(ConversionError) as err:
            convert_file(src, out)
        assert msg in str(err.value) and str(src) in str(err.value), (name, str(err.value))
        assert not out.exists(), name


def test_existing_output_needs_force(r18_files, tmp_path):
    src, _, _ = r18_files
    out = tmp_path / "x.pkl"
    out.write_bytes(b"earlier result")
    with pytest.raises(ConversionError, match="already exists"):
        convert_file(src, out)
    assert out.read_bytes() == b"earlier result"
    convert_file(src, out, force=True)
    assert pickle.loads(out.read_bytes())["als_det"]["depth"] == 18


def test_tool_converts_and_verifies_resnet18(tmp_path, capsys):
    torch.save(resnet(18, seed=1).state_dict(), tmp_path / "resnet18.pth")
    args = [str(tmp_path / "resnet18.pth"), str(tmp_path / "out.pkl"), "--verify"]
    code, err = _tool(capsys, *args, "--verify-size", "64")
    assert code == 0, err
    assert "loaded 100/100 backbone tensors" in err and "max abs difference" in err
    code, err = _tool(capsys, *args, "--verify-size", "64")
    assert code == 2 and "already exists" in err


@pytest.mark.slow
def test_resnet50_verifies_in_fpn_and_c4(tmp_path):
    torch.save(suite_checkpoint(resnet(50), "resnet50", prefix="module."), tmp_path / "r50.pth")
    result = convert_verified(tmp_path / "r50.pth", tmp_path / "r50.pkl", input_size=32)
    assert result["verify"]["ok"] and result["verify"]["loaded_tensors"] == 265
    c4 = verify(tmp_path / "r50.pkl", tmp_path / "r50.pth", config_file=C4_CONFIG, input_size=32)
    # C4: res2..res4 in the backbone, res5 in the ROI head, all from the same file
    assert c4.ok and c4.loaded_tensors == 265, c4.summary()


def _tool(capsys, *args: str) -> tuple[int, str]:
    """tools/convert_to_d2.py ARGS in this process: its exit status and its stderr."""
    capsys.readouterr()
    code = run_tool("convert_to_d2", list(args))
    return code, capsys.readouterr().err


def test_tool_refuses_crafted_files_and_runs_nothing(tmp_path, capsys):
    from test_weights_io import crafted_files

    pth, pkl, marker = crafted_files(tmp_path)
    for src in (pth, pkl):
        code, err = _tool(capsys, str(src), str(tmp_path / "out.pkl"), "--verify")
        assert code == 2, err
        assert f"error: {src}: refused" in err and "--unsafe-load" in err
        assert not marker.exists() and not (tmp_path / "out.pkl").exists()


def test_verify_reads_the_pkl_without_unpickling_code(r18_files, tmp_path):
    from test_weights_io import crafted_files

    src, _, _ = r18_files
    _, pkl, marker = crafted_files(tmp_path)
    with pytest.raises(ConversionError, match="crafted.pkl: refused.*io.open"):
        verify(pkl, src, input_size=32)
    assert not marker.exists()


def test_unsafe_load_converts_a_trusted_legacy_checkpoint_and_says_so(tmp_path, capsys):
    import argparse

    src = tmp_path / "reference.pth"  # torchvision's reference scripts pickle their args
    torch.save({"model": resnet(18).state_dict(), "args": argparse.Namespace(lr=0.1)}, src)
    out = tmp_path / "out.pkl"
    with pytest.raises(ConversionError, match="argparse.Namespace.*--unsafe-load"):
        convert_file(src, out)
    assert not out.exists()
    unsafe = ["--unsafe-load", "--verify", "--verify-size", "32"]
    code, err = _tool(capsys, str(src), str(out), *unsafe)
    assert code == 0, err
    assert "loading with full unpickling (--unsafe-load" in err
    assert "INPUT read with full unpickling: --unsafe-load" in err
    assert pickle.loads(out.read_bytes())["als_det"]["unsafe_load"] is True
