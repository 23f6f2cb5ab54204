"""Detection AMP: the shipped *_1x configs ask for it; on a CPU, where detectron2's AMPTrainer
cannot run, fine-tuning turns it off, says so in the log and records why in results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_runs import DETECTION_DEMO, FINETUNE_TINY, tiny_coco

from als_det.detection.command_line import finetune_argument_parser
from als_det.detection.config import get_detection_cfg
from als_det.detection.trainer import run_finetune

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "config", sorted(p.name for p in (REPO / "configs" / "detection").glob("*_1x.yaml"))
)
def test_the_shipped_1x_configs_train_in_mixed_precision(config: str) -> None:
    assert get_detection_cfg(str(REPO / "configs" / "detection" / config)).SOLVER.AMP.ENABLED


def test_amp_is_turned_off_on_the_cpu_and_recorded(resnet18_pkl, tmp_path: Path) -> None:
    js, img = tiny_coco(tmp_path / "data")
    out = tmp_path / "run"
    argv = [
        *("--config-file", DETECTION_DEMO, "--dataset", f"tiny={js}:{img}"),
        *("--train-dataset", "tiny", "--test-dataset", "tiny"),
        *("MODEL.WEIGHTS", str(resnet18_pkl), "OUTPUT_DIR", str(out), "MODEL.DEVICE", "cpu"),
        *("SOLVER.AMP.ENABLED", "True", "SOLVER.MAX_ITER", "1", *FINETUNE_TINY),
    ]
    run_finetune(finetune_argument_parser().parse_args(argv))
    results = json.loads((out / "results.json").read_text())
    assert results["amp"] is False
    assert results["amp_reason"] == (
        "MODEL.DEVICE cpu: detectron2's AMPTrainer (float16 autocast + GradScaler) needs CUDA"
    )
    assert (
        "SOLVER.AMP.ENABLED set to False (recorded in results.json)"
        in (out / "log.txt").read_text()
    )
