"""Fine-tuning faults a user meets: options after the overrides, an empty json, a diverging lr,
a config file that would run code, resumes of another experiment or of nothing, refusals that
must leave the folder as it was."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from tiny_runs import DETECTION_DEMO, FINETUNE_TINY, finetune, run_tool, tiny_coco

from als_det.config import ResumeError
from als_det.detection.datasets import DatasetError
from als_det.detection.weights import WeightsError


def test_an_option_after_the_config_overrides_says_where_options_go(tmp_path):
    js, img = tiny_coco(tmp_path / "data")
    with pytest.raises(
        ValueError, match="--dataset comes after the config overrides .* put options before them"
    ):
        finetune("OUTPUT_DIR", str(tmp_path / "run"), "--dataset", f"tiny={js}:{img}")
    assert not (tmp_path / "run").exists()


def test_empty_annotations_are_refused_naming_the_json_before_the_model(tmp_path, monkeypatch):
    js, img = tiny_coco(tmp_path / "data", anns=[])
    from als_det.detection.trainer import FinetuneTrainer

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the data set was checked")

    monkeypatch.setattr(FinetuneTrainer, "build_model", classmethod(no_model))
    with pytest.raises(DatasetError, match=rf"{js}: no usable box .*'annotations' is empty"):
        finetune(
            "--dataset",
            f"tiny={js}:{img}",
            "--train-dataset",
            "tiny",
            "--test-dataset",
            "tiny",
            "OUTPUT_DIR",
            str(tmp_path / "run"),
            *FINETUNE_TINY,
        )


def test_divergence_error_says_what_to_change(resnet18_pkl, tmp_path):
    js, img = tiny_coco(tmp_path / "data")
    with pytest.raises(FloatingPointError) as err:
        finetune(
            "--dataset",
            f"tiny={js}:{img}",
            "--train-dataset",
            "tiny",
            "--test-dataset",
            "tiny",
            "MODEL.WEIGHTS",
            str(resnet18_pkl),
            "OUTPUT_DIR",
            str(tmp_path / "run"),
            *FINETUNE_TINY,
            "SOLVER.BASE_LR",
            "1e6",
            "SOLVER.MAX_ITER",
            "6",
            "SOLVER.CHECKPOINT_PERIOD",
            "100",
        )
    msg = str(err.value)
    # detectron2's own message is kept (a NaN loss, or NaN boxes from the ROI heads, whichever comes
    # first)
    assert "Loss became infinite or NaN" in msg or "Training has diverged" in msg
    assert "SOLVER.BASE_LR 1e+06 with SOLVER.IMS_PER_BATCH 1" in msg
    assert (
        "linear-scaling rule (0.02 for 16 images) gives 0.00125" in msg
        and "SOLVER.WARMUP_ITERS" in msg
    )
    assert not (tmp_path / "run" / "results.json").exists()


def _tagged(path: Path, marker: Path, base: str = DETECTION_DEMO) -> Path:
    """A detection config inheriting `base` whose SEED would run a command if constructed."""
    path.write_text(
        f"_BASE_: {base}\nSEED: !!python/object/apply:os.system [touch {marker}]\n",
        encoding="utf-8",
    )
    return path


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1, err
    return err[0]


def test_a_tagged_detection_config_runs_nothing_from_any_entry_point(
    resnet18_pth,  # noqa: F811
    tmp_path,
    capsys,
):
    marker = tmp_path / "MARKER"
    tagged = _tagged(tmp_path / "tagged.yaml", marker)
    out = tmp_path / "run"
    # fine-tuning (an unknown data set would stop it right after the config is read)
    assert (
        run_tool(
            "finetune_coco",
            ["--config-file", str(tagged), "--train-dataset", "nope", "OUTPUT_DIR", str(out)],
        )
        == 2
    )
    assert _one_error_line(capsys).startswith(f"error: {tagged}: refused at line 2")
    assert not marker.exists() and not out.exists()
    # conversion with --verify in that config: nothing converted either
    pkl = tmp_path / "r18.pkl"
    assert (
        run_tool(
            "convert_to_d2", [str(resnet18_pth), str(pkl), "--verify", "--config-file", str(tagged)]
        )
        == 2
    )
    assert "refused at line 2" in _one_error_line(capsys)
    assert not marker.exists() and not pkl.exists()
    assert not list(tmp_path.glob(".r18*"))
    # re-evaluation of a run whose config.yaml someone edited (the README's flow); a list of bases
    # with a model-zoo one is read the same way
    out.mkdir()
    _tagged(out / "config.yaml", marker, base='["model_zoo://Base-RCNN-FPN.yaml", "../ok.yaml"]')
    (tmp_path / "ok.yaml").write_text("SOLVER:\n  MAX_ITER: 3\n", encoding="utf-8")
    before = (out / "config.yaml").read_bytes()
    assert (
        run_tool(
            "finetune_coco",
            ["--eval-only", "--config-file", str(out / "config.yaml"), "OUTPUT_DIR", str(out)],
        )
        == 2
    )
    assert _one_error_line(capsys).startswith(f"error: {out / 'config.yaml'}: refused")
    assert not marker.exists()
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]
    assert (out / "config.yaml").read_bytes() == before


@pytest.fixture(scope="module")
def finished(resnet18_pkl, tmp_path_factory) -> tuple[Path, list[str]]:  # noqa: F811
    """A finished 2-iteration fine-tune (checkpoints after each iteration) and its data options."""
    root = tmp_path_factory.mktemp("finished")
    js, img = tiny_coco(root / "data")
    data = ["--dataset", f"tiny={js}:{img}", "--train-dataset", "tiny", "--test-dataset", "tiny"]
    out = root / "run"
    finetune(
        *data,
        "MODEL.WEIGHTS",
        str(resnet18_pkl),
        "OUTPUT_DIR",
        str(out),
        "SOLVER.MAX_ITER",
        "2",
        "SOLVER.CHECKPOINT_PERIOD",
        "1",
        *FINETUNE_TINY,
    )
    return out, data


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_resume_refuses_a_changed_experiment_listing_each_difference(finished, tmp_path):
    run, data = finished
    out = _copy(run, tmp_path / "run")
    js = Path(data[1].split("=", 1)[1].split(":", 1)[0])
    other = tmp_path / "other.json"
    other.write_text(js.read_text().replace('"area": 400', '"area": 399'))
    changed = [
        "--dataset",
        f"tiny={other}:{data[1].rsplit(':', 1)[1]}",
        *data[2:],
        "--resume",
        "OUTPUT_DIR",
        str(out),
        *FINETUNE_TINY,
        "SOLVER.MAX_ITER",
        "3",
        "SOLVER.BASE_LR",
        "0.002",
    ]
    before = _snapshot(out)
    with pytest.raises(ResumeError) as err:
        finetune(*changed)
    msg = str(err.value)
    assert msg.startswith(f"cannot resume {out / 'model_final.pth'}: this config describes")
    assert "(3 differences)" in msg
    assert "SOLVER.BASE_LR: 0.001 (checkpoint) -> 0.002 (now)" in msg
    assert "SOLVER.MAX_ITER: 2 (checkpoint) -> 3 (now)" in msg
    assert "train data sets (json sha256)" in msg and "--allow-config-change" in msg
    assert _snapshot(out) == before  # nothing in the folder changed, log.txt included
    # on purpose: trained on, and the changes are recorded
    finetune("--allow-config-change", *changed)
    res = json.loads((out / "results.json").read_text())
    assert res["iterations"] == 3 and res["detection_config"]["values"]["SOLVER.BASE_LR"] == 0.002
    (entry,) = res["resumes"]
    assert entry["from"] == str(out / "model_final.pth") and entry["after_iteration"] == 1
    changes = entry["config_changes"]
    assert set(changes) == {"SOLVER.BASE_LR", "SOLVER.MAX_ITER", "train data sets (json sha256)"}
    assert changes["SOLVER.BASE_LR"] == {"checkpoint": 0.001, "now": 0.002}


def test_resume_without_a_checkpoint_is_refused_and_creates_nothing(finished, tmp_path, capsys):
    _, data = finished
    out = tmp_path / "empty"
    argv = [
        "--config-file",
        DETECTION_DEMO,
        *data,
        "--resume",
        "OUTPUT_DIR",
        str(out),
        *FINETUNE_TINY,
    ]
    assert run_tool("finetune_coco", argv) == 2
    assert _one_error_line(capsys).startswith(
        f"error: cannot resume: {out} holds no checkpoint (no last_checkpoint file); start a "
        "fresh run without --resume"
    )
    assert not out.exists()
    # --allow-config-change is a resume's option only
    fresh = [
        "--config-file",
        DETECTION_DEMO,
        *data,
        "--allow-config-change",
        "OUTPUT_DIR",
        str(out),
    ]
    assert run_tool("finetune_coco", fresh) == 2
    assert _one_error_line(capsys).startswith(
        "error: --allow-config-change only applies with --resume"
    )
    # nor does --eval-only --resume fall back to MODEL.WEIGHTS
    with pytest.raises(ResumeError, match="holds no checkpoint"):
        finetune(*data, "--eval-only", "--resume", "OUTPUT_DIR", str(out), *FINETUNE_TINY)
    assert not out.exists()


def test_a_refused_fine_tune_changes_nothing_in_its_folder(finished, tmp_path):
    run, data = finished
    # a resume whose checkpoint cannot be read
    out = _copy(run, tmp_path / "run")
    (out / "model_final.pth").write_bytes(b"not a checkpoint")
    before = _snapshot(out)
    with pytest.raises(ResumeError, match=r"cannot resume: .*model_final.pth: not a readable"):
        finetune(*data, "--resume", "OUTPUT_DIR", str(out), *FINETUNE_TINY, "SOLVER.MAX_ITER", "4")
    assert _snapshot(out) == before
    # a fresh run whose MODEL.WEIGHTS is missing: the earlier run is not set aside
    out = _copy(run, tmp_path / "run2")
    before = _snapshot(out)
    with pytest.raises(WeightsError, match="nowhere.pkl"):
        finetune(
            *data,
            "MODEL.WEIGHTS",
            str(tmp_path / "nowhere.pkl"),
            "OUTPUT_DIR",
            str(out),
            *FINETUNE_TINY,
        )
    assert _snapshot(out) == before and not list(out.glob("previous-*"))


def test_a_converted_tensor_altered_in_place_is_refused(resnet18_pkl, tmp_path):  # noqa: F811
    from test_finetune import _edited_pkl, _model

    from als_det.detection.weights import load_backbone_weights

    model, cfg = _model(resnet18_pkl)
    intact = load_backbone_weights(model, cfg).provenance()
    assert len(intact["tensors_sha256"]) == 64 and intact["tensors_modified"] is False

    def transpose(d):  # same shape, other values: nothing but the digest can tell
        w = d["model"]["res2.0.conv1.weight"]
        d["model"]["res2.0.conv1.weight"] = w.transpose(1, 0, 2, 3).copy()

    altered = _edited_pkl(resnet18_pkl, tmp_path / "altered.pkl", transpose, redigest=False)
    model, cfg = _model(altered)
    with pytest.raises(WeightsError) as err:
        load_backbone_weights(model, cfg)
    msg = str(err.value)
    assert msg.startswith(f"{altered}: its tensors are not the ones its conversion wrote")
    assert "--allow-modified-weights" in msg
    load = load_backbone_weights(model, cfg, allow_modified=True)
    assert load.provenance()["tensors_modified"] is True
    assert load.loaded_tensors == load.backbone_tensors


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_leaves_no_partial_file(
    resnet18_pkl,  # noqa: F811
    tmp_path,
    capsys,
    monkeypatch,
):
    """The disk fills while `model_0000001.pth` is written: simulated at the suite's file-write
    boundary (`als_det.io`), which hands torch.save a file whose writes fail as a full disk's do."""
    from als_det import io

    class FullDiskFile:
        def __init__(self, f):
            self.f, self.room = f, 100

        def write(self, data):
            if len(data) > self.room:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.room -= len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    real = io._atomic_write

    def atomic_write(path, write):
        if Path(path).name != "model_0000001.pth":
            return real(path, write)
        return real(path, lambda f: write(FullDiskFile(f)))

    monkeypatch.setattr(io, "_atomic_write", atomic_write)
    js, img = tiny_coco(tmp_path / "data")
    out = tmp_path / "run"
    argv = [
        "--config-file",
        DETECTION_DEMO,
        "--dataset",
        f"tiny={js}:{img}",
        "--train-dataset",
        "tiny",
        "--test-dataset",
        "tiny",
        "MODEL.WEIGHTS",
        str(resnet18_pkl),
        "OUTPUT_DIR",
        str(out),
        *FINETUNE_TINY,
        "SOLVER.MAX_ITER",
        "2",
        "SOLVER.CHECKPOINT_PERIOD",
        "1",
    ]
    assert run_tool("finetune_coco", argv) == 2
    assert _one_error_line(capsys) == (
        f"error: no space left on device writing {out / 'model_0000001.pth'} "
        f"(traceback in {out / 'log.txt'})"
    )
    # the checkpoint before is whole and still the last one; no part of the new one is left
    assert (out / "last_checkpoint").read_text() == "model_0000000.pth"
    assert torch.load(out / "model_0000000.pth", weights_only=True)["iteration"] == 0
    assert not list(out.glob("model_0000001*")) and not list(out.glob(".*.tmp"))
    assert not (out / "results.json").exists()
    log = (out / "log.txt").read_text()
    assert "Traceback (most recent call last)" in log and "DiskFullError" in log
