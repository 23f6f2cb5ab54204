"""Fine-tuning: strict backbone loading, preprocessing checks, and tiny end-to-end runs."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model
from tiny_runs import DETECTION_DEMO, FINETUNE_TINY, TORCHVISION_PRE, finetune, run_tool, tiny_coco

from als_det.convert import tensors_digest
from als_det.detection.command_line import finetune_argument_parser
from als_det.detection.config import get_detection_cfg
from als_det.detection.weights import WeightsError, backbone_keys, load_backbone_weights
from als_det.revision import code_revision

REPO = Path(__file__).resolve().parents[1]


def _model(weights: str | Path, *opts: str):
    cfg = get_detection_cfg(
        DETECTION_DEMO, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(weights), *opts]
    )
    return build_model(cfg), cfg


def _edited_pkl(src: Path, dst: Path, edit, redigest: bool = True) -> Path:
    """`src` edited by `edit`; `redigest`: as if converted so (its tensor digest re-recorded)."""
    with open(src, "rb") as f:
        data = pickle.load(f)
    edit(data)
    if redigest:
        data["als_det"]["tensors_sha256"] = tensors_digest(data["model"])
    with open(dst, "wb") as f:
        pickle.dump(data, f)
    return dst


def test_converted_backbone_loads_every_tensor(resnet18_pth, resnet18_pkl):
    model, cfg = _model(resnet18_pkl)
    report = load_backbone_weights(model, cfg)
    keys = backbone_keys(model)
    # R18 bottom-up under FrozenBN: stem conv + 4 norm buffers, 8 BasicBlocks x 2 convs, 3 shortcuts
    assert report.backbone_tensors == len(keys) == (1 + 4) + 8 * 2 * 5 + 3 * 5
    assert report.loaded_tensors == report.backbone_tensors and report.missing == []
    tv = torch.load(resnet18_pth, weights_only=True)["model"]
    bu = model.backbone.bottom_up
    assert torch.equal(bu.res4[1].conv2.weight, tv["layer3.1.conv2.weight"])
    assert torch.equal(
        bu.res3[0].shortcut.norm.running_var, tv["layer2.0.downsample.1.running_var"]
    )
    prov = report.provenance()
    assert prov["label_strategy"]["name"] == "als" and prov["pretrain_seed"] == 3
    assert prov["source_sha256"] and prov["sha256"] != prov["source_sha256"]


def test_one_missing_backbone_tensor_is_refused(resnet18_pkl, tmp_path):
    bad = _edited_pkl(
        resnet18_pkl, tmp_path / "bad.pkl", lambda d: d["model"].pop("res3.1.conv2.weight")
    )
    model, cfg = _model(bad)
    with pytest.raises(WeightsError, match=r"only \d+ of \d+ backbone tensors") as err:
        load_backbone_weights(model, cfg)
    assert "backbone.bottom_up.res3.1.conv2.weight" in str(err.value)
    assert str(bad) in str(err.value)
    report = load_backbone_weights(model, cfg, allow_random_backbone=True)
    assert report.missing == ["backbone.bottom_up.res3.1.conv2.weight"]
    assert report.loaded_tensors == report.backbone_tensors - 1


def test_missing_bn_statistics_are_refused(resnet18_pkl, tmp_path):
    # FrozenBatchNorm2d fills a missing running_var with ones and reports nothing missing
    bad = _edited_pkl(
        resnet18_pkl,
        tmp_path / "no_var.pkl",
        lambda d: d["model"].pop("res3.0.conv1.norm.running_var"),
    )
    model, cfg = _model(bad)
    with pytest.raises(WeightsError, match=r"supplies only 99 of 100 backbone tensors") as err:
        load_backbone_weights(model, cfg)
    assert "backbone.bottom_up.res3.0.conv1.norm.running_var" in str(err.value)


def test_a_python2_era_model_zoo_file_loads_completely(resnet18_pkl, tmp_path):
    from test_weights_io import py2_era_pickle

    with open(resnet18_pkl, "rb") as f:
        weights = pickle.load(f)["model"]
    zoo = tmp_path / "zoo.pkl"
    zoo.write_bytes(
        py2_era_pickle(
            {"model": weights, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}
        )
    )
    model, cfg = _model(zoo)
    report = load_backbone_weights(model, cfg)
    assert report.loaded_tensors == report.backbone_tensors == 100 and not report.unsafe_load
    bu = model.backbone.bottom_up
    assert torch.equal(
        bu.res3[0].conv1.norm.running_var, torch.as_tensor(weights["res3.0.conv1.norm.running_var"])
    )


def _caffe2_name(d2_name: str) -> str:
    """detectron2 ResNet name -> Caffe2 Detectron blob name (inverse of convert_basic_c2_names)."""
    name = d2_name.replace("stem.conv1.norm.", "res_conv1_bn_").replace("stem.conv1.", "conv1_")
    for d2, c2 in (
        ("conv1.", "branch2a_"),
        ("conv2.", "branch2b_"),
        ("conv3.", "branch2c_"),
        ("shortcut.", "branch1_"),
        ("norm.", "bn_"),
    ):
        name = name.replace(d2, c2)
    for d2, c2 in (
        ("running_mean", "rm"),
        ("running_var", "riv"),
        ("bn_weight", "bn_s"),
        ("bn_bias", "bn_b"),
        ("weight", "w"),
    ):
        name = name.replace(d2, c2)
    return name.replace(".", "_")


def test_caffe2_blobs_load_with_affine_channel_bn(resnet18_pkl, tmp_path, caplog):
    with open(resnet18_pkl, "rb") as f:
        weights = pickle.load(f)["model"]
    blobs = {_caffe2_name(k): v for k, v in weights.items()}
    assert "res3_0_branch1_bn_riv" in blobs and "res_conv1_bn_s" in blobs
    affine = {k: v for k, v in blobs.items() if not k.endswith(("_rm", "_riv"))}
    (tmp_path / "msra.pkl").write_bytes(pickle.dumps({"blobs": affine}, protocol=2))
    model, cfg = _model(tmp_path / "msra.pkl")
    with caplog.at_level("INFO", logger="als_det.detection"):
        report = load_backbone_weights(model, cfg)
    assert report.loaded_tensors == report.backbone_tensors
    assert "without BN statistics (AffineChannel): 40 running_mean/running_var" in caplog.text
    assert torch.equal(
        model.backbone.bottom_up.res2[0].conv1.weight,
        torch.as_tensor(weights["res2.0.conv1.weight"]),
    )
    # a Caffe2 file that has statistics must have all of them
    partial = {k: v for k, v in blobs.items() if k != "res4_1_branch2b_bn_riv"}
    (tmp_path / "partial.pkl").write_bytes(pickle.dumps(partial, protocol=2))
    model, cfg = _model(tmp_path / "partial.pkl")
    with pytest.raises(WeightsError, match="res4.1.conv2.norm.running_var"):
        load_backbone_weights(model, cfg)


def test_wrong_depth_is_refused(resnet18_pkl):
    model, cfg = _model(resnet18_pkl, "MODEL.RESNETS.DEPTH", "34")
    with pytest.raises(WeightsError, match="backbone tensors"):
        load_backbone_weights(model, cfg)


def test_preprocessing_mismatch_is_refused(resnet18_pkl, tmp_path):
    def bgr(d):
        d["als_det"]["preprocessing"] = dict(TORCHVISION_PRE, input_format="BGR")

    model, cfg = _model(_edited_pkl(resnet18_pkl, tmp_path / "bgr.pkl", bgr))
    with pytest.raises(WeightsError, match="input_format 'BGR' vs INPUT.FORMAT 'RGB'"):
        load_backbone_weights(model, cfg)
    model, cfg = _model(resnet18_pkl, "MODEL.PIXEL_STD", "[1.0, 1.0, 1.0]")
    with pytest.raises(WeightsError, match="pixel_std"):
        load_backbone_weights(model, cfg)


def test_no_weights_or_unconverted_pth_is_refused(resnet18_pth):
    model, cfg = _model("")
    with pytest.raises(WeightsError, match="--allow-random-backbone"):
        load_backbone_weights(model, cfg)
    assert load_backbone_weights(model, cfg, allow_random_backbone=True).loaded_tensors == 0
    model, cfg = _model(resnet18_pth)
    with pytest.raises(WeightsError, match="convert_to_d2.py"):
        load_backbone_weights(model, cfg)


# The shipped R50 configs with a ResNet-18 backbone and narrow heads (CPU time); the rest as
# shipped.
R18 = [
    "MODEL.RESNETS.DEPTH",
    "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS",
    "64",
    "MODEL.FPN.OUT_CHANNELS",
    "64",
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    "256",
    "MODEL.ROI_MASK_HEAD.CONV_DIM",
    "64",
]


def test_class_count_goes_to_the_head_the_model_has(tmp_path):
    from als_det.detection.datasets import DatasetError
    from als_det.detection.trainer import setup

    js, img = tiny_coco(tmp_path / "data")
    common = ["--dataset", f"tiny={js}:{img}", "--train-dataset", "tiny", "--test-dataset", "tiny"]
    parse = finetune_argument_parser().parse_args
    cfg = setup(
        parse(
            [
                "--config-file",
                str(REPO / "configs/detection/retinanet_R_50_FPN_1x.yaml"),
                *common,
                "OUTPUT_DIR",
                str(tmp_path / "r"),
            ]
        )
    )
    assert cfg.MODEL.RETINANET.NUM_CLASSES == 2 and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 80
    with pytest.raises(
        DatasetError, match="MODEL.MASK_ON needs instance masks, but 2 of 3 annotations"
    ):
        setup(
            parse(
                [
                    "--config-file",
                    str(REPO / "configs/detection/mask_rcnn_R_50_FPN_1x.yaml"),
                    *common,
                    "OUTPUT_DIR",
                    str(tmp_path / "m"),
                ]
            )
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    "config, tasks",
    [("retinanet_R_50_FPN_1x.yaml", ["bbox"]), ("mask_rcnn_R_50_FPN_1x.yaml", ["bbox", "segm"])],
)
def test_retinanet_and_mask_rcnn_fine_tune_on_coco_mini(
    config, tasks, coco_mini, resnet18_pkl, tmp_path
):
    out = tmp_path / "run"
    finetune(
        "--coco-root",
        str(coco_mini),
        "MODEL.WEIGHTS",
        str(resnet18_pkl),
        "OUTPUT_DIR",
        str(out),
        "SOLVER.MAX_ITER",
        "2",
        *FINETUNE_TINY,
        *R18,
        "MODEL.RETINANET.SCORE_THRESH_TEST",
        "0.0",
        config=str(REPO / "configs/detection" / config),
    )
    res = json.loads((out / "results.json").read_text())
    val = json.loads((coco_mini / "annotations/instances_val2017.json").read_text())
    names = {c["name"] for c in val["categories"]}
    assert [t for t in ("bbox", "segm") if t in res] == tasks
    for task in tasks:
        assert all(res[task][m] is not None for m in ("AP", "AP50", "AP75")), res[task]
        assert set(res[task]["per_class"]) == names
        assert res["by_dataset"]["coco_2017_val"][task] == res[task]
    # strict loading: every tensor of the ResNet-18 (RetinaNet has no ROI heads: bottom-up only)
    assert (
        res["backbone"]["loaded_tensors"]
        == res["backbone"]["backbone_tensors"]
        == (1 + 4) + 8 * 2 * 5 + 3 * 5
    )
    if "segm" in tasks:
        dets = json.loads((out / "coco_instances_results.json").read_text())
        assert dets and all("segmentation" in d for d in dets)


def test_finetune_tool_refuses_crafted_weights_and_runs_nothing(tmp_path, capsys):
    from test_weights_io import crafted_files

    js, img = tiny_coco(tmp_path / "data")
    pth, pkl, marker = crafted_files(tmp_path)
    for weights in (pkl, pth):
        capsys.readouterr()
        code = run_tool(
            "finetune_coco",
            [
                "--config-file",
                DETECTION_DEMO,
                "--dataset",
                f"tiny={js}:{img}",
                "--train-dataset",
                "tiny",
                "--test-dataset",
                "tiny",
                "MODEL.WEIGHTS",
                str(weights),
                "OUTPUT_DIR",
                str(tmp_path / "out"),
                *FINETUNE_TINY,
                "SOLVER.MAX_ITER",
                "1",
            ],
        )
        err = capsys.readouterr().err
        assert code != 0
        assert f"error: {weights}: refused" in err and "--unsafe-load" in err
        assert not marker.exists()
        assert not (tmp_path / "out" / "model_final.pth").exists()


def test_unsafe_load_of_a_trusted_file_is_recorded(resnet18_pkl, tmp_path):
    import argparse

    def legacy(d):  # a trusted file that only full unpickling reads
        d["args"] = argparse.Namespace(lr=0.1)

    trusted = _edited_pkl(resnet18_pkl, tmp_path / "trusted.pkl", legacy)
    model, cfg = _model(trusted)
    with pytest.raises(WeightsError, match="argparse.Namespace.*--unsafe-load"):
        load_backbone_weights(model, cfg)
    report = load_backbone_weights(model, cfg, unsafe_load=True)
    assert report.loaded_tensors == report.backbone_tensors
    assert report.provenance()["unsafe_load"] is True


@pytest.mark.slow
def test_coco_mini_trains_and_evaluates_on_real_categories(coco_mini, resnet18_pkl, tmp_path):
    out = tmp_path / "coco"
    finetune(
        "--coco-root",
        str(coco_mini),
        "MODEL.WEIGHTS",
        str(resnet18_pkl),
        "OUTPUT_DIR",
        str(out),
        "SOLVER.MAX_ITER",
        "2",
        *FINETUNE_TINY,
    )
    official = json.loads((coco_mini / "annotations/instances_val2017.json").read_text())
    names = {c["name"] for c in official["categories"]}
    res = json.loads((out / "results.json").read_text())
    assert res["test_dataset"] == "coco_2017_val" and res["train_datasets"] == ["coco_2017_train"]
    assert set(res["bbox"]["per_class"]) == names
    assert all(res["bbox"][m] is not None for m in ("AP", "AP50", "AP75"))
    assert res["iterations"] == 2 and res["seed"] == 5 and res["device"] == "cpu"
    assert res["backbone"]["label_strategy"]["name"] == "als"
    assert res["backbone"]["loaded_tensors"] == res["backbone"]["backbone_tensors"] > 0
    dets = json.loads((out / "coco_instances_results.json").read_text())
    cat_ids = {d["category_id"] for d in dets}
    assert cat_ids <= {c["id"] for c in official["categories"]} and max(cat_ids) > 80
    assert {d["image_id"] for d in dets} <= {im["id"] for im in official["images"]}
    for f in ("config.yaml", "metrics.json", "log.txt", "model_final.pth"):
        assert (out / f).is_file(), f
    log = (out / "log.txt").read_text()
    assert "NUM_CLASSES set to 80" in log and "Environment info" in log
    assert "\x1b" not in log  # plain text: no colour codes


@pytest.mark.slow
def test_custom_dataset_resume_and_refusals(resnet18_pkl, tmp_path):
    js, img = tiny_coco(tmp_path / "data")
    out = tmp_path / "run"
    common = ["--dataset", f"tiny={js}:{img}", "--train-dataset", "tiny", "--test-dataset", "tiny"]
    finetune(
        *common,
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
    res = json.loads((out / "results.json").read_text())
    assert set(res["bbox"]["per_class"]) == {"cat", "dog"} and res["iterations"] == 2
    assert res["revision"] == code_revision()
    assert (
        res["backbone"]["unsafe_load"] is False and res["backbone"]["source_unsafe_load"] is False
    )
    # the evaluator's ground truth is the cleaned set (degenerate box 2 dropped)
    gt = json.loads((out / "tiny_coco_format.json").read_text())
    assert len(gt["annotations"]) == 2
    # resume: continues from the last checkpoint (iteration 2 of 3), provenance kept even though
    # MODEL.WEIGHTS is not given again
    finetune(
        *common,
        "--resume",
        "--allow-config-change",
        "OUTPUT_DIR",
        str(out),
        "SOLVER.MAX_ITER",
        "3",
        *FINETUNE_TINY,
    )
    log = (out / "log.txt").read_text()
    assert "Resumed from" in log and "Starting training from iteration 2" in log
    res2 = json.loads((out / "results.json").read_text())
    assert res2["iterations"] == 3 and res2["backbone"] == res["backbone"]
    assert res["resumes"] == [] and res2["resumes"] == [
        {
            "from": str(out / "model_final.pth"),
            "after_iteration": 1,
            "config_changes": {"SOLVER.MAX_ITER": {"checkpoint": 2, "now": 3}},
        }
    ]
    # --eval-only of the fine-tuned checkpoint reproduces its AP and keeps the provenance
    ev = tmp_path / "eval"
    finetune(
        *common,
        "--eval-only",
        "MODEL.WEIGHTS",
        str(out / "model_final.pth"),
        "OUTPUT_DIR",
        str(ev),
        *FINETUNE_TINY,
    )
    res_ev = json.loads((ev / "results.json").read_text())
    assert res_ev["eval_only"] and res_ev["iterations"] == 3
    assert res_ev["backbone"]["sha256"] == res["backbone"]["sha256"]
    assert res_ev["backbone"]["checkpoint"] == str(out / "model_final.pth")
    assert res_ev["bbox"] == res2["bbox"]
    # refusals before any training: unknown data set, unknown category, random backbone
    with pytest.raises(ValueError, match="unknown data set 'nope'"):
        finetune("--train-dataset", "nope", "OUTPUT_DIR", str(tmp_path / "x"), *FINETUNE_TINY)
    with pytest.raises(WeightsError, match="MODEL.WEIGHTS is empty"):
        finetune(*common, "OUTPUT_DIR", str(tmp_path / "y"), *FINETUNE_TINY)
