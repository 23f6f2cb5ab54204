"""The paper's own configs, end to end on full-size real photos, as a user runs them.

../shared/data/coco-mini (45 + 47 real COCO photos at their original ~640x480) becomes an
ImageNet-with-boxes tree through tools/coco_to_imagenet.py. Each
configs/pretrain/imagenet_r50_*.yaml then trains ResNet-50 for one short epoch at 224 px, unchanged
except data root, output folder, length, batch size and workers (and SOLVER.WARMUP_EPOCHS 0: a
one-epoch run has no room for the 5-epoch warm-up): hard through the trainer, als through
tools/pretrain.py's main (both in this process), ls through torchrun with two gloo processes.
tools/evaluate.py evaluates the three, tools/convert_to_d2.py --verify converts each, and each
configs/detection/*_1x.yaml fine-tunes from the converted als ResNet-50 at its own input sizes
(640-800 px training, 800 px test) and writes results.json, evaluated on one val photo to stay
cheap (C4 with fewer regions per image, see FEWER_REGIONS).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_runs import run_tool

from als_det.config import load_config
from als_det.detection.command_line import finetune_argument_parser
from als_det.detection.trainer import run_finetune
from als_det.engine.checkpoint import load_checkpoint
from als_det.engine.trainer import train

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = REPO / "configs" / "pretrain"
SHORT = [
    "SOLVER.EPOCHS",
    "1",
    "SOLVER.WARMUP_EPOCHS",
    "0",
    "TRAIN.MAX_ITERS_PER_EPOCH",
    "1",
    "SOLVER.BATCH_SIZE",
    "2",
    "DATA.NUM_WORKERS",
    "0",
]
pytestmark = pytest.mark.slow


def _subprocess(cmd: list[str], threads: str | None = None) -> str:
    env = dict(os.environ, **({"OMP_NUM_THREADS": threads} if threads else {}))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def tree(coco_mini, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full") / "coco_cls"
    assert run_tool("coco_to_imagenet", ["--coco-root", str(coco_mini), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def r50_runs(tree, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("r50")
    data = ["DATA.ROOT", str(tree), *SHORT]
    runs = {arm: out / arm for arm in ("hard", "ls", "als")}
    train(
        load_config(
            str(PRETRAIN / "imagenet_r50_hard.yaml"), [*data, "OUTPUT_DIR", str(runs["hard"])]
        )
    )
    assert (
        run_tool(
            "pretrain",
            [
                "--config-file",
                str(PRETRAIN / "imagenet_r50_als.yaml"),
                "TRAIN.DEVICE",
                "cpu",
                *data,
                "OUTPUT_DIR",
                str(runs["als"]),
            ],
        )
        == 0
    )
    _subprocess(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "tools/pretrain.py",
            "--config-file",
            "configs/pretrain/imagenet_r50_ls.yaml",
            "TRAIN.DEVICE",
            "cpu",
            *data,
            "OUTPUT_DIR",
            str(runs["ls"]),
        ],
        threads="1",
    )
    return runs


def test_r50_configs_train_at_224_with_bf16_and_channels_last(r50_runs, tree):
    classes = json.loads((tree / "classes.json").read_text())
    for arm, world in (("hard", 1), ("als", 1), ("ls", 2)):
        run = json.loads((r50_runs[arm] / "run.json").read_text())
        assert (run["device"], run["amp"], run["channels_last"], run["world_size"]) == (
            "cpu",
            "bf16",
            True,
            world,
        )
        assert run["label_strategy"]["name"] == arm and run["classes"] == [
            c["folder"] for c in classes
        ]
        (row,) = [
            json.loads(line) for line in (r50_runs[arm] / "metrics.jsonl").read_text().splitlines()
        ]
        assert row["images"] == 2 * world and row["val_n"] == run["index"]["val"]["images"] > 20
        ckpt = load_checkpoint(r50_runs[arm] / "last.pth")
        assert ckpt["arch"] == "resnet50" and ckpt["preprocessing"]["image_size"] == 224
        assert ckpt["model"]["fc.weight"].shape == (len(classes), 2048)
    cfg = (r50_runs["als"] / "config.yaml").read_text()
    assert "VAL_RESIZE: 256" in cfg and "BASE_LR: 0.1" in cfg and "ARCH: resnet50" in cfg


def test_evaluate_tool_reports_the_three_r50s(r50_runs, tree, tmp_path):
    out = tmp_path / "eval"
    ckpts = [
        a
        for arm in ("hard", "ls", "als")
        for a in ("--checkpoint", str(r50_runs[arm] / "last.pth"))
    ]
    assert (
        run_tool(
            "evaluate",
            [
                *ckpts,
                "--data",
                str(tree),
                "--out",
                str(out),
                "--max-images",
                "4",
                "--batch-size",
                "4",
                "--workers",
                "0",
                "--grid-images",
                "2",
            ],
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["models"]) == ["als", "hard", "ls"]
    for model in metrics["models"].values():
        ckpt = model["checkpoint"]
        assert (ckpt["arch"], ckpt["preprocessing"]["image_size"], ckpt["val_resize"]) == (
            "resnet50",
            224,
            256,
        )
    assert metrics["data"]["images_evaluated"] == 4 and (out / "report.md").is_file()


@pytest.fixture(scope="module")
def r50_pkl(r50_runs, tmp_path_factory) -> Path:
    """Each arm through tools/convert_to_d2.py --verify; the als one is fine-tuned below."""
    out = tmp_path_factory.mktemp("pkl")
    for arm in ("hard", "ls", "als"):
        assert (
            run_tool(
                "convert_to_d2",
                [str(r50_runs[arm] / "last.pth"), str(out / f"r50_{arm}.pkl"), "--verify"],
            )
            == 0
        )
    return out / "r50_als.pkl"


@pytest.fixture(scope="module")
def one_val_photo(coco_mini, tmp_path_factory) -> str:
    """--dataset spec of coco-mini val restricted to its first photo (evaluation at 800 px is the
    cost)."""
    data = json.loads((coco_mini / "annotations" / "instances_val2017.json").read_text())
    first = data["images"][0]
    data["images"] = [first]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] == first["id"]]
    path = tmp_path_factory.mktemp("val1") / "instances_val1.json"
    path.write_text(json.dumps(data))
    return f"val1={path}:{coco_mini / 'val2017'}"


# C4 runs res5 on every region: at the zoo's 512 sampled regions per training image and 1000
# proposals per test image one iteration took 77 s and one test image 41 s on 2 busy cores
# (2026-11-29). Fewer regions run the same code at the same 800 px input in a fraction of that.
FEWER_REGIONS = {
    "faster_rcnn_R_50_FPN_1x": [],
    "faster_rcnn_R_50_C4_1x": [
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
        "64",
        "MODEL.RPN.POST_NMS_TOPK_TEST",
        "100",
    ],
}


@pytest.mark.parametrize("config", list(FEWER_REGIONS))
def test_detection_1x_configs_finetune_at_800px(
    config, r50_pkl, coco_mini, one_val_photo, tmp_path
):
    out = tmp_path / config
    args = finetune_argument_parser().parse_args(
        [
            "--coco-root",
            str(coco_mini),
            "--dataset",
            one_val_photo,
            "--test-dataset",
            "val1",
            "--config-file",
            str(REPO / "configs" / "detection" / f"{config}.yaml"),
            "MODEL.WEIGHTS",
            str(r50_pkl),
            "OUTPUT_DIR",
            str(out),
            "SOLVER.IMS_PER_BATCH",
            "1",
            "SOLVER.MAX_ITER",
            "1",
            "DATALOADER.NUM_WORKERS",
            "0",
            *FEWER_REGIONS[config],
        ]
    )
    run_finetune(args)
    res = json.loads((out / "results.json").read_text())
    assert res["iterations"] == 1 and res["test_dataset"] == "val1"
    assert res["backbone"]["label_strategy"]["name"] == "als"
    assert res["backbone"]["loaded_tensors"] == res["backbone"]["backbone_tensors"] == 265
    assert set(res["bbox"]) >= {"AP", "AP50", "per_class"}
    log = (out / "log.txt").read_text()
    assert (
        "ResizeShortestEdge(short_edge_length=(640, 672, 704, 736, 768, 800), max_size=1333" in log
    )
    assert "ResizeShortestEdge(short_edge_length=(800, 800), max_size=1333" in log
