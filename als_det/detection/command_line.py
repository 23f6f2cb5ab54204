"""The fine-tuning command line (`tools/finetune_coco.py`): its options, and the data sets they
name — chosen, validated and registered with detectron2 before the model is built."""

from __future__ import annotations

import argparse
from pathlib import Path

from detectron2.utils import comm

from als_det.cli import argument_parser
from als_det.detection import datasets as ds
from als_det.detection.config import DetectionCfgNode
from als_det.detection.launch import add_launch_arguments

DEFAULT_CONFIG = str(
    Path(__file__).resolve().parents[2] / "configs/detection/faster_rcnn_R_18_FPN_demo.yaml"
)
# Options that name the data sets; without any, a run's own config.yaml brings its recorded ones.
DATASET_OPTIONS = (
    "dataset",
    "train_dataset",
    "test_dataset",
    "coco_root",
    "generated_config",
    "generated_root",
)


def finetune_argument_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The suite's parser (`als_det.cli`) with detectron2's run and process options
    (`default_argument_parser`'s) and the data set and backbone options."""
    parser = argument_parser(
        description,
        config="optional",
        default_config=DEFAULT_CONFIG,
        override_example="SOLVER.MAX_ITER 300 OUTPUT_DIR out",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT_DIR's last checkpoint (refused when there is none, or when "
        "the experiment differs from the checkpoint's)",
    )
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="with --resume: continue although the experiment (config, seed or train data) "
        "differs from the checkpoint's (the changes are recorded in results.json)",
    )
    parser.add_argument(
        "--eval-only",
        action="store_true",
        help="only evaluate: the last checkpoint with --resume, else MODEL.WEIGHTS",
    )
    add_launch_arguments(parser)
    data = parser.add_argument_group("data sets")
    data.add_argument(
        "--coco-root",
        default=None,
        metavar="DIR",
        help="train/test on COCO 2017 in the official layout under DIR "
        "(annotations/instances_{train,val}2017.json, {train,val}2017/; detectron2's "
        "own place is $DETECTRON2_DATASETS/coco)",
    )
    data.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="NAME=JSON:IMAGE_DIR",
        help="register a COCO-format data set under NAME (repeatable)",
    )
    data.add_argument(
        "--train-dataset",
        action="append",
        default=[],
        metavar="NAME",
        help="train on NAME (repeatable; default: DATASETS.TRAIN if given among "
        "the trailing options, else coco_2017_train with --coco-root, else "
        "the generated set)",
    )
    data.add_argument(
        "--test-dataset",
        action="append",
        default=[],
        metavar="NAME",
        help="evaluate on NAME (repeatable; defaults as for --train-dataset)",
    )
    data.add_argument(
        "--generated-config",
        default="",
        metavar="FILE",
        help="pretraining config whose DATA.ROOT / DATA.GEN describe the generated "
        "data set (default: the pretraining defaults)",
    )
    data.add_argument(
        "--generated-root",
        default="",
        metavar="DIR",
        help="root of the generated data set (default: that config's DATA.ROOT)",
    )
    weights = parser.add_argument_group("backbone weights")
    weights.add_argument(
        "--allow-random-backbone",
        action="store_true",
        help="train even though backbone tensors are missing from MODEL.WEIGHTS "
        "(training from scratch on purpose)",
    )
    weights.add_argument(
        "--allow-modified-weights",
        action="store_true",
        help="fine-tune a converted MODEL.WEIGHTS whose tensors no longer match the digest its "
        "conversion recorded (altered since; recorded in results.json)",
    )
    weights.add_argument(
        "--unsafe-load",
        action="store_true",
        help="allow full unpickling of a trusted MODEL.WEIGHTS or checkpoint that "
        "the safe readers refuse (it can run code; recorded in results.json)",
    )
    return parser


def _opts_set(opts: list[str], key: str) -> bool:
    return key in opts[::2]


def choose_datasets(args: argparse.Namespace, cfg: DetectionCfgNode, split: str) -> list[str]:
    """The data sets for `split` ("TRAIN"/"TEST"), by the precedence in the parser's help."""
    chosen = args.train_dataset if split == "TRAIN" else args.test_dataset
    if chosen:
        return list(chosen)
    if _opts_set(args.opts or [], f"DATASETS.{split}"):
        return list(getattr(cfg.DATASETS, split))
    i = 0 if split == "TRAIN" else 1
    if args.coco_root:
        return [list(ds.COCO_SPLITS)[i]]
    return [list(ds.GENERATED_SPLITS)[i]]


def _generated_detection_root(args: argparse.Namespace) -> Path:
    """Make the generated data set if its root holds none (main process), return its detection/."""
    from als_det.config import load_config
    from als_det.data.generated import generate

    pre = load_config(args.generated_config or None)
    root = Path(args.generated_root or pre.DATA.ROOT)
    if comm.is_main_process():
        generate(root, pre.DATA.GEN)
    comm.synchronize()
    return root / "detection"


def recorded_datasets(args: argparse.Namespace) -> tuple[Path, dict] | None:
    """(path, record) of the data sets recorded beside a run's own config.yaml (`ds.RECORD_FILE`),
    when the command names none itself: a run's config.yaml (with `--eval-only`, `--resume`, or for
    a re-run) brings the data sets that run used, wherever the command is started from."""
    if any(getattr(args, o) for o in DATASET_OPTIONS) or any(
        _opts_set(args.opts or [], f"DATASETS.{split}") for split in ("TRAIN", "TEST")
    ):
        return None
    path = Path(args.config_file).parent / ds.RECORD_FILE
    return (path, ds.read_dataset_record(path)) if path.is_file() else None


def register_datasets(
    args: argparse.Namespace, names: list[str], recorded: tuple[Path, dict] | None = None
) -> list[ds.CocoValidationReport]:
    """Validate and register every data set in `names`; see the parser's help for the sources.
    A `recorded` data set must still be the one recorded (same json sha256)."""
    given = [ds.parse_dataset_spec(spec) for spec in args.dataset]
    unused = sorted({name for name, _, _ in given} - set(names))
    if unused:
        raise ds.DatasetError(
            f"--dataset {unused} registered but neither trained nor tested on; "
            "select it with --train-dataset/--test-dataset"
        )
    record = recorded[1]["datasets"] if recorded else {}
    specs = {name: (e["json_file"], e["image_root"]) for name, e in record.items()}
    specs.update({name: (json_file, image_dir) for name, json_file, image_dir in given})
    reports = []
    for name in dict.fromkeys(names):
        if name in specs:
            json_file, image_dir = specs[name]
        elif name in ds.COCO_SPLITS:
            json_file, image_dir = ds.coco_split_paths(
                args.coco_root or ds.coco_root_default(), ds.COCO_SPLITS[name]
            )
        elif name in ds.GENERATED_SPLITS:
            json_file, image_dir = ds.coco_split_paths(
                _generated_detection_root(args), ds.GENERATED_SPLITS[name]
            )
        else:
            raise ds.DatasetError(
                f"unknown data set {name!r}: register it with --dataset {name}=JSON:IMAGE_DIR"
            )
        reports.append(ds.register_coco_detection(name, json_file, image_dir))
        if name in record:
            ds.check_recorded(reports[-1], record[name], recorded[0])
    return reports
