"""Fine-tuning faults a user meets: options after the overrides, an empty json, a diverging lr."""

from __future__ import annotations

import pytest
from tiny_runs import FINETUNE_TINY, finetune, tiny_coco

from als_det.detection.datasets import DatasetError


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
