"""detectron2 works here (real training steps on real COCO images) and our detection configs
load."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from als_det.config import ConfigError
from als_det.detection import DetectionCfgNode, get_detection_cfg

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "detection"
TORCHVISION_KEYS = {
    "INPUT.FORMAT": "RGB",
    "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
    "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
}


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_loads_with_torchvision_preprocessing(path):
    cfg = get_detection_cfg(str(path))
    assert isinstance(cfg, DetectionCfgNode)
    for key, value in TORCHVISION_KEYS.items():
        assert _get(cfg, key) == value, (path.name, key)
    assert cfg.MODEL.WEIGHTS == ""  # never the zoo's BGR caffe2 weights


@pytest.mark.parametrize(
    "ours,zoo",
    [
        ("faster_rcnn_R_50_FPN_1x.yaml", "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"),
        ("faster_rcnn_R_50_C4_1x.yaml", "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml"),
    ],
)
def test_r50_configs_resolve_to_the_model_zoo_1x_schedule(ours, zoo):
    from detectron2 import model_zoo

    cfg = get_detection_cfg(str(CONFIGS / ours))
    reference = model_zoo.get_config(zoo)
    assert cfg.SOLVER.MAX_ITER == 90000 and cfg.SOLVER.IMS_PER_BATCH == 16
    assert cfg.SOLVER.BASE_LR == 0.02 and tuple(cfg.SOLVER.STEPS) == (60000, 80000)
    assert cfg.MODEL.RESNETS.DEPTH == 50 and not cfg.MODEL.MASK_ON
    # the one deliberate change to the zoo's schedule: mixed precision on GPUs (issue 21)
    assert cfg.SOLVER.AMP.ENABLED and not reference.SOLVER.AMP.ENABLED
    reference.SOLVER.AMP.ENABLED = True
    for key in (
        "SOLVER",
        "MODEL.ROI_HEADS",
        "MODEL.RPN",
        "MODEL.ANCHOR_GENERATOR",
        "INPUT.MIN_SIZE_TRAIN",
        "MODEL.BACKBONE",
        "MODEL.RESNETS.OUT_FEATURES",
        "MODEL.RESNETS.NORM",
        "DATASETS",
    ):
        assert _get(cfg, key) == _get(reference, key), key


def test_demo_config_is_a_small_resnet18_fpn():
    cfg = get_detection_cfg(str(CONFIGS / "faster_rcnn_R_18_FPN_demo.yaml"))
    assert cfg.MODEL.RESNETS.DEPTH == 18 and cfg.MODEL.RESNETS.RES2_OUT_CHANNELS == 64
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone"
    assert max(cfg.INPUT.MIN_SIZE_TRAIN) <= 160 and cfg.SOLVER.MAX_ITER <= 1000
    assert cfg.MODEL.DEVICE == "cuda"  # detectron2's default: left for the fine-tune tool to set


def test_model_zoo_base_prefix_and_errors(tmp_path):
    own = tmp_path / "own.yaml"
    own.write_text('_BASE_: "model_zoo://Base-RCNN-FPN.yaml"\nSOLVER:\n  MAX_ITER: 7\n')
    cfg = get_detection_cfg(str(own), ["SOLVER.BASE_LR", "0.5"])
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone" and cfg.SOLVER.MAX_ITER == 7
    assert cfg.SOLVER.BASE_LR == 0.5
    zoo = get_detection_cfg("model_zoo://COCO-Detection/faster_rcnn_R_50_C4_1x.yaml")
    assert zoo.MODEL.ROI_HEADS.NAME == "Res5ROIHeads" and zoo.INPUT.FORMAT == "BGR"
    (tmp_path / "missing.yaml").write_text('_BASE_: "model_zoo://No/such.yaml"\n')
    with pytest.raises(FileNotFoundError, match="No/such.yaml"):
        get_detection_cfg(str(tmp_path / "missing.yaml"))
    (tmp_path / "typo.yaml").write_text(
        '_BASE_: "model_zoo://Base-RCNN-FPN.yaml"\nMODEL:\n  RESNET:\n    DEPTH: 18\n'
    )
    with pytest.raises(ConfigError, match=r"typo.yaml: Non-existent config key: MODEL.RESNET"):
        get_detection_cfg(str(tmp_path / "typo.yaml"))
    with pytest.raises(ConfigError, match="config overrides: Non-existent key: SOLVER.MAX_ITERS"):
        get_detection_cfg(
            str(CONFIGS / "faster_rcnn_R_18_FPN_demo.yaml"), ["SOLVER.MAX_ITERS", "1"]
        )


@pytest.mark.slow
def test_two_training_iterations_on_coco_mini(coco_mini, tmp_path):
    """detectron2's own R50-FPN 1x config, trained 2 steps on real COCO images on CPU."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, build_detection_train_loader
    from detectron2.data.datasets import register_coco_instances
    from detectron2.engine import SimpleTrainer
    from detectron2.modeling import build_model
    from detectron2.solver import build_optimizer
    from detectron2.utils.env import seed_all_rng

    name = "als_det_smoke_coco_mini_train"
    if name not in DatasetCatalog.list():
        register_coco_instances(
            name,
            {},
            str(coco_mini / "annotations" / "instances_train2017.json"),
            str(coco_mini / "train2017"),
        )
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.merge_from_list(
        [
            "MODEL.DEVICE",
            "cpu",
            "MODEL.WEIGHTS",
            "",
            "MODEL.RESNETS.NORM",
            "BN",  # FrozenBN keeps random-init statistics and diverges at once
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
            "128",
            "MODEL.RPN.POST_NMS_TOPK_TRAIN",
            "256",
            "INPUT.MIN_SIZE_TRAIN",
            "(96,)",
            "INPUT.MAX_SIZE_TRAIN",
            "128",
            "SOLVER.IMS_PER_BATCH",
            "2",
            "SOLVER.BASE_LR",
            "0.001",
            "SOLVER.WARMUP_ITERS",
            "0",
            "DATASETS.TRAIN",
            f"('{name}',)",
            "DATASETS.TEST",
            "()",
            "DATALOADER.NUM_WORKERS",
            "0",
            "OUTPUT_DIR",
            str(tmp_path),
            "SEED",
            "0",
        ]
    )
    cfg.freeze()
    seed_all_rng(0)
    model = build_model(cfg)
    before = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    trainer = SimpleTrainer(model, build_detection_train_loader(cfg), build_optimizer(cfg, model))
    trainer.train(0, 2)

    losses = trainer.storage.history("total_loss").values()
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v, _ in losses)
    for key in ("loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"):
        assert math.isfinite(trainer.storage.history(key).latest()), key
    after = dict(model.named_parameters())
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert "backbone.bottom_up.res5.2.conv3.weight" in changed
    assert "roi_heads.box_predictor.cls_score.weight" in changed
    assert len(changed) > 0.9 * len(before)
