"""Weight files from anyone: weights-only torch loading and the restricted detectron2 unpickler."""

from __future__ import annotations

import argparse
import io
import logging
import os
import pickle
import pickletools
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from tiny_runs import tool_module

from als_det.weights_io import (
    UnsafeFileError,
    WeightsFileError,
    read_detectron2_pickle,
    read_torch_file,
    strip_wrapper_prefixes,
)


class MarkerPayload:
    """Unpickling this creates `path`: the stand-in for a crafted weights file."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def crafted_files(folder: Path) -> tuple[Path, Path, Path]:
    """(a .pth, a .pkl, the marker path): both files create the marker when unpickled."""
    marker = folder / "marker"
    pth, pkl = folder / "crafted.pth", folder / "crafted.pkl"
    torch.save(
        {"model": torchvision.models.resnet18().state_dict(), "x": MarkerPayload(marker)}, pth
    )
    pkl.write_bytes(
        pickle.dumps(
            {
                "model": {"stem.conv1.weight": np.zeros((64, 3, 7, 7))},
                "__author__": MarkerPayload(marker),
            }
        )
    )
    return pth, pkl, marker


class _Py2Pickler(pickle._Pickler):
    """Pickles as Python 2 did: `str` and `bytes` as 8-bit strings (SHORT_)BINSTRING."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_8bit(self, obj: str | bytes) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = save_8bit
    dispatch[bytes] = save_8bit


def py2_era_pickle(obj: object) -> bytes:
    """`obj` as a Python 2 / numpy 1 model-zoo file: protocol 2, 8-bit strings, numpy.core."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def test_numpy_pickles_reference_only_the_allowed_globals(tmp_path: Path) -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    values = {
        "c": a,
        "f": np.asfortranarray(a),
        "strided": a[:, ::2],
        "i64": np.arange(3),
        "bool": np.array([True, False]),
        "scalar": np.float32(1.5),
        "dtype": np.dtype("<f8"),
        "bytes": b"\x00\xff",
        "nested": [(1, 2.0, None, "x")],
    }
    seen: set[tuple[str, str]] = set()

    class Recording(pickle.Unpickler):
        def find_class(self, module, name):
            seen.add((module, name))
            return super().find_class(module, name)

    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps(values, protocol=protocol)
        Recording(io.BytesIO(data)).load()
        (tmp_path / "x.pkl").write_bytes(data)
        loaded, unsafe = read_detectron2_pickle(tmp_path / "x.pkl")
        assert not unsafe
        for key, value in values.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(loaded[key], value)
                assert loaded[key].dtype == value.dtype
            else:
                assert loaded[key] == value, (protocol, key)
    assert seen == {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
    }


def test_a_python2_era_model_zoo_file_loads(tmp_path: Path) -> None:
    weights = {
        "res2.0.conv1.weight": np.random.default_rng(0)
        .normal(size=(64, 64, 3, 3))
        .astype(np.float32),
        "stem.conv1.norm.running_var": np.ones(64, np.float32),
    }
    data = py2_era_pickle({"model": weights, "__author__": "FAIR"})
    ops = {op.name for op, _, _ in pickletools.genops(data)}
    assert "SHORT_BINSTRING" in ops and "BINSTRING" in ops and "BINUNICODE" not in ops
    assert b"numpy.core.multiarray\n_reconstruct" in data
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(data)  # as Python 3 reads it without detectron2's latin1
    (tmp_path / "zoo.pkl").write_bytes(data)
    loaded, _ = read_detectron2_pickle(tmp_path / "zoo.pkl")
    assert loaded["__author__"] == "FAIR"
    for name, value in weights.items():
        np.testing.assert_array_equal(loaded["model"][name], value)


def test_crafted_files_are_refused_and_run_nothing(tmp_path: Path) -> None:
    pth, pkl, marker = crafted_files(tmp_path)
    with pytest.raises(UnsafeFileError, match=r"crafted.pth: refused.*io.open.*--unsafe-load"):
        read_torch_file(pth)
    with pytest.raises(UnsafeFileError, match=r"crafted.pkl: refused.*io.open.*--unsafe-load"):
        read_detectron2_pickle(pkl)
    with pytest.raises(UnsafeFileError, match=r"crafted.pkl: refused"):
        read_torch_file(pkl)
    assert not marker.exists()
    read_detectron2_pickle(pkl, unsafe_load=True)  # the opt-in really unpickles
    assert marker.exists()


def test_a_trusted_legacy_checkpoint_needs_the_opt_in(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # torchvision's reference scripts save their argparse.Namespace beside the weights
    path = tmp_path / "reference.pth"
    state = torchvision.models.resnet18().state_dict()
    torch.save({"model": state, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UnsafeFileError, match="argparse.Namespace.*--unsafe-load"):
        read_torch_file(path)
    with caplog.at_level(logging.WARNING, logger="als_det.weights_io"):
        obj, unsafe = read_torch_file(path, unsafe_load=True)
    assert unsafe and obj["args"].lr == 0.1
    assert torch.equal(obj["model"]["fc.bias"], state["fc.bias"])
    assert "reference.pth: loading with full unpickling (--unsafe-load" in caplog.text
    torch.save({"model": state, "epoch": 3}, tmp_path / "plain.pth")
    obj, unsafe = read_torch_file(tmp_path / "plain.pth", unsafe_load=True)
    assert not unsafe and obj["epoch"] == 3  # the opt-in is used only where needed


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    (tmp_path / "empty.pkl").write_bytes(b"")
    with pytest.raises(WeightsFileError, match="text.pth: not a readable torch checkpoint"):
        read_torch_file(tmp_path / "text.pth")
    with pytest.raises(WeightsFileError, match="empty.pkl: not a readable pickle"):
        read_detectron2_pickle(tmp_path / "empty.pkl")
    with pytest.raises(WeightsFileError, match="absent.pth: no such file"):
        read_torch_file(tmp_path / "absent.pth")


def test_wrapper_prefixes_are_stripped() -> None:
    stripped = strip_wrapper_prefixes("module._orig_mod.layer1.0.conv1.weight")
    assert stripped == "layer1.0.conv1.weight"
    assert strip_wrapper_prefixes("layer1.module.weight") == "layer1.module.weight"


class SystemPayload:
    """Unpickling this runs `touch path` through os.system (pickled as posix.system)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_a_refusal_names_what_the_file_references_and_advises_only_real_options(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "MARKER"
    crafted = tmp_path / "crafted.pth"
    torch.save(
        {"model": torchvision.models.resnet18().state_dict(), "x": SystemPayload(marker)}, crafted
    )
    with pytest.raises(UnsafeFileError) as err:
        read_torch_file(crafted)
    assert str(err.value).startswith(
        f"{crafted}: refused: torch's weights-only reader cannot load it (it references "
        "posix.system, which only full unpickling can create). Full unpickling can run"
    )
    assert "Weights only load failed" not in str(err.value)
    # pretraining and evaluation have no --unsafe-load: they say what the file is instead
    repo = Path(__file__).resolve().parents[1]
    for tool, argv in (
        (
            "pretrain",
            [
                "--resume-from",
                str(crafted),
                "--config-file",
                str(repo / "configs/pretrain/demo_als.yaml"),
                "OUTPUT_DIR",
                str(tmp_path / "pre"),
            ],
        ),
        (
            "evaluate",
            ["--checkpoint", str(crafted), "--data", str(tmp_path), "--out", str(tmp_path / "ev")],
        ),
    ):
        main = tool_module(tool)["main"]
        assert main(argv) == 2
        (line,) = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
        assert line.startswith(f"error: {crafted}: refused: ") and "posix.system" in line
        assert "--unsafe-load" not in line and "is not one of them" in line
    assert not marker.exists()
