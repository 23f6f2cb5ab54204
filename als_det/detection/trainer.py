"""Fine-tune a detector on COCO-format data from a converted backbone (detectron2 train_net style):
Faster R-CNN, RetinaNet or Mask R-CNN, whichever the config builds (box AP, and mask AP for masks).

`setup(args)` builds the config (device, data sets, class count resolved and logged) and
`check_start(args, cfg)` the model with its weights or the checked `--resume`, both writing
nothing; only then does `begin_run` touch OUTPUT_DIR (an earlier run set aside, log.txt, what
detectron2's `default_setup` does, through the suite's logging). `run_finetune(args)` trains
with `FinetuneTrainer` (detectron2's `DefaultTrainer` + strict backbone loading +
`COCOEvaluator`) or only evaluates, then writes `OUTPUT_DIR/results.json`.
`launch_finetune(args)` runs it through `detectron2.engine.launch` (one process per GPU, any
number of machines).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from detectron2.data import MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_json
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
)
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.env import seed_all_rng

from als_det.config import check_overrides
from als_det.detection import datasets as ds
from als_det.detection.checkpoint import RecordingCheckpointer
from als_det.detection.command_line import choose_datasets, recorded_datasets, register_datasets
from als_det.detection.config import DetectionCfgNode, get_detection_cfg
from als_det.detection.launch import launch_processes
from als_det.detection.results import (
    NO_CUDA_AMP,
    amp_record,
    experiment_config,
    training_record,
    write_results,
)
from als_det.detection.resume import (
    EXPERIMENT_KEY,
    RESUMES_KEY,
    TRAINING_KEY,
    CheckedResume,
    check_resume,
    last_checkpoint,
)
from als_det.detection.weights import BackboneLoad, load_backbone_weights
from als_det.io import atomic_write_json, atomic_write_text
from als_det.logger import held_records, setup_logging, write_to_log_file
from als_det.output_dir import check_output_folder, set_aside_note, set_aside_previous_run
from als_det.run_lock import output_lock

logger = logging.getLogger(__name__)

# What detectron2 and this module write into OUTPUT_DIR, and the files only a started run writes.
FINETUNE_OUTPUTS = (
    "config.yaml",
    "log.txt*",
    "metrics.json",
    "events.out.tfevents.*",
    "last_checkpoint",
    "model_*.pth",
    "inference",
    "coco_instances_results.json",
    "instances_predictions.pth",
    "*_coco_format.json*",
    "results.json",
    ds.RECORD_FILE,
)
FINETUNE_MARKERS = ("last_checkpoint", "metrics.json", "model_final.pth", "results.json")


class FinetuneTrainer(DefaultTrainer):
    """detectron2's DefaultTrainer on a model whose backbone `check_start` loaded strictly, with
    COCO evaluation.

    The backbone's provenance (file, sha256, label strategy), the experiment, the training record
    and the resumes are part of the trainer state, so a resumed run and a later `--eval-only` of
    its checkpoint still know which backbone and experiment it was. Every file is read without
    full unpickling unless `unsafe_load` (`--unsafe-load`).
    """

    def __init__(
        self,
        cfg: DetectionCfgNode,
        model: torch.nn.Module,
        backbone: dict[str, Any],
        unsafe_load: bool = False,
        resumes: list[dict[str, Any]] | None = None,
    ) -> None:
        # DefaultTrainer.__init__ with three changes: the model built (and its backbone loaded)
        # before, DDP also on the CPU (detectron2's create_ddp_model passes device_ids=[local
        # rank], which DistributedDataParallel refuses for a CPU model), and the checkpointer that
        # reads files safely.
        TrainerBase.__init__(self)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_cpu = {"device_ids": None} if cfg.MODEL.DEVICE == "cpu" else {}
        model = create_ddp_model(model, broadcast_buffers=False, **on_cpu)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = RecordingCheckpointer(
            model, cfg.OUTPUT_DIR, unsafe_load=unsafe_load, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())
        self.backbone = backbone
        self.training = training_record(cfg)
        self.resumes = list(resumes or [])

    def resume(self, checked: CheckedResume) -> None:
        """Continue from the checkpoint `check_resume` checked: model, optimizer, scheduler,
        iteration and the backbone's provenance."""
        self.checkpointer.load(str(checked.path))
        self.start_iter = self.iter + 1
        logger.info("Resumed from %s at iteration %d", checked.path, self.start_iter)

    def state_dict(self) -> dict[str, Any]:
        ret = super().state_dict()
        ret["als_det_backbone"] = self.backbone
        ret[TRAINING_KEY] = self.training
        ret[EXPERIMENT_KEY] = experiment_config(self.cfg)["values"]
        ret[RESUMES_KEY] = self.resumes
        return ret

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.backbone = state_dict.get("als_det_backbone", {})

    def train(self) -> dict[str, Any]:
        """Train, then return the final evaluation ({dataset: {"bbox": ..., ["segm": ...]}})."""
        try:
            super().train()
        except FloatingPointError as err:  # detectron2: a NaN/inf loss, or NaN boxes from the heads
            raise FloatingPointError(f"{err} {divergence_hint(self.cfg)}") from err
        return self._last_eval_results

    @classmethod
    def build_evaluator(cls, cfg: DetectionCfgNode, dataset_name: str) -> COCOEvaluator:
        """COCOEvaluator (pycocotools COCOeval). The first test set writes into OUTPUT_DIR."""
        out = (
            cfg.OUTPUT_DIR
            if dataset_name == cfg.DATASETS.TEST[0]
            else os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        )
        meta = MetadataCatalog.get(dataset_name)
        if not hasattr(meta, "json_file"):  # boxes were dropped: ground truth from cleaned dicts
            gt = os.path.join(out, f"{dataset_name}_coco_format.json")
            if comm.is_main_process():
                convert_to_coco_json(dataset_name, gt, allow_cached=False)
            comm.synchronize()
            meta.json_file = gt
        return COCOEvaluator(
            dataset_name,
            tasks=evaluation_tasks(cfg),
            distributed=True,
            output_dir=out,
            use_fast_impl=False,
        )

    @classmethod
    def test(cls, cfg: DetectionCfgNode, model: torch.nn.Module, evaluators=None) -> dict:
        """detectron2's test, always keyed by data set name (also for a single test set)."""
        results = super().test(cfg, model, evaluators)
        return {cfg.DATASETS.TEST[0]: results} if len(cfg.DATASETS.TEST) == 1 else results


def divergence_hint(cfg: DetectionCfgNode) -> str:
    """What to change when training diverged: the lr against the linear-scaling rule, the
    warm-up."""
    linear = 0.02 * cfg.SOLVER.IMS_PER_BATCH / 16
    return (
        f"Training diverged at SOLVER.BASE_LR {cfg.SOLVER.BASE_LR:g} with SOLVER.IMS_PER_BATCH "
        f"{cfg.SOLVER.IMS_PER_BATCH}: the linear-scaling rule (0.02 for 16 images) gives "
        f"{linear:g}. Lower SOLVER.BASE_LR (e.g. {linear:g}) or lengthen SOLVER.WARMUP_ITERS "
        f"({cfg.SOLVER.WARMUP_ITERS} now); checkpoints before the divergence are in "
        f"{cfg.OUTPUT_DIR}."
    )


def evaluation_tasks(cfg: DetectionCfgNode) -> tuple[str, ...]:
    """COCO box AP always; mask AP too when the model predicts masks (Mask R-CNN)."""
    return ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)


def num_classes_key(cfg: DetectionCfgNode) -> str:
    """The config key holding the class count: RetinaNet has its own head, the others ROI heads."""
    return "RETINANET" if cfg.MODEL.META_ARCHITECTURE == "RetinaNet" else "ROI_HEADS"


def set_aside_earlier_run(args: argparse.Namespace, cfg: DetectionCfgNode) -> Path | None:
    """A fresh training run (neither `--resume` nor `--eval-only`) into an OUTPUT_DIR that holds an
    earlier run moves that run's files to OUTPUT_DIR/previous-<time>/ (as pretraining does) once
    every process has read what it needs from there; returns that folder, on every process."""
    comm.synchronize()
    aside = None
    if not (args.resume or args.eval_only) and comm.is_main_process():
        aside = set_aside_previous_run(cfg.OUTPUT_DIR, FINETUNE_OUTPUTS, FINETUNE_MARKERS)
    return comm.all_gather(aside)[0]


def setup(args: argparse.Namespace) -> DetectionCfgNode:
    """Config with device, seed, data sets and class count resolved (each change logged); the
    data sets validated and registered. Writes nothing into OUTPUT_DIR. Returns the frozen
    config."""
    cfg = get_detection_cfg(args.config_file, args.opts)
    recorded = recorded_datasets(args)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
        logger.warning("CUDA is not available: MODEL.DEVICE set to cpu")
    if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
        cfg.SOLVER.AMP.ENABLED = False
        logger.warning(
            "SOLVER.AMP.ENABLED set to False (recorded in results.json): %s", NO_CUDA_AMP
        )
    if cfg.SEED < 0 and not (args.resume and not args.eval_only):  # a resume keeps its seed
        cfg.SEED = random.SystemRandom().randrange(2**31)
        logger.info("SEED was negative: drew seed %d (recorded in config.yaml)", cfg.SEED)

    if recorded:
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (
            tuple(recorded[1]["train"]),
            tuple(recorded[1]["test"]),
        )
        logger.info(
            "Using the data sets recorded in %s: train %s, test %s",
            recorded[0],
            list(cfg.DATASETS.TRAIN),
            list(cfg.DATASETS.TEST),
        )
    else:
        cfg.DATASETS.TRAIN = tuple(choose_datasets(args, cfg, "TRAIN"))
        cfg.DATASETS.TEST = tuple(choose_datasets(args, cfg, "TEST"))
    reports = register_datasets(args, used_datasets(args, cfg), recorded)
    categories = ds.check_same_categories(reports)
    if cfg.MODEL.MASK_ON:
        ds.check_has_masks(reports)
    head = getattr(cfg.MODEL, num_classes_key(cfg))
    if head.NUM_CLASSES != len(categories):
        logger.info(
            "MODEL.%s.NUM_CLASSES set to %d from the data's categories (config had %d)",
            num_classes_key(cfg),
            len(categories),
            head.NUM_CLASSES,
        )
        head.NUM_CLASSES = len(categories)
    cfg.freeze()
    return cfg


def used_datasets(args: argparse.Namespace, cfg: DetectionCfgNode) -> list[str]:
    """The data sets this run reads: the test sets, and the train sets unless `--eval-only`."""
    return list(cfg.DATASETS.TEST) if args.eval_only else [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]


@dataclass
class Start:
    """What the checks before the first write into OUTPUT_DIR found: the model, and either the
    weights loaded into it (a fresh run, `--eval-only`) or the checkpoint to resume."""

    model: torch.nn.Module
    load: BackboneLoad | None = None
    resume: CheckedResume | None = None


def check_start(args: argparse.Namespace, cfg: DetectionCfgNode) -> Start:
    """Every refusal that needs no training: a `--resume` without a readable checkpoint or with a
    changed experiment (`check_resume`), MODEL.WEIGHTS (or `--eval-only --resume`'s checkpoint)
    missing, unreadable, altered since its conversion or not a complete backbone
    (`load_backbone_weights`)."""
    checked = None
    if args.resume and not args.eval_only:
        checked = check_resume(cfg, args.unsafe_load, args.allow_config_change)
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + comm.get_rank())  # before the model's init
    model = FinetuneTrainer.build_model(cfg)
    if checked is not None:
        return Start(model, resume=checked)
    path = str(last_checkpoint(cfg.OUTPUT_DIR)) if args.resume else None
    load = load_backbone_weights(
        model,
        cfg,
        args.allow_random_backbone,
        path=path,
        unsafe_load=args.unsafe_load,
        allow_modified=args.allow_modified_weights,
    )
    return Start(model, load=load)


def begin_run(args: argparse.Namespace, cfg: DetectionCfgNode, held: list) -> None:
    """The first writes into OUTPUT_DIR, after every check: an earlier run set aside (a fresh
    training run), log.txt (with the `held` records of the checks), then `record_run` and, for
    training, the data sets used (datasets.json)."""
    aside = set_aside_earlier_run(args, cfg)
    setup_logging(cfg.OUTPUT_DIR, comm.get_rank())
    write_to_log_file(held)
    if aside is not None:
        logger.warning("%s", set_aside_note(cfg.OUTPUT_DIR, aside))
    record_run(cfg, args)
    if not args.eval_only and comm.is_main_process():
        atomic_write_json(
            Path(cfg.OUTPUT_DIR) / ds.RECORD_FILE,
            {
                "train": list(cfg.DATASETS.TRAIN),
                "test": list(cfg.DATASETS.TEST),
                "datasets": ds.dataset_record(used_datasets(args, cfg)),
            },
        )


def record_run(cfg: DetectionCfgNode, args: argparse.Namespace) -> None:
    """detectron2's `default_setup` through the suite's logging (which writes no colour codes into
    log.txt): the environment in log.txt, the full config in config.yaml, cudnn (`check_start`
    seeds, before it builds the model)."""
    rank = comm.get_rank()
    logger.info("Rank of current process: %d. World size: %d", rank, comm.get_world_size())
    logger.debug("Environment info:\n%s", collect_env_info())
    logger.info("Command line arguments: %s", args)
    if comm.is_main_process():
        path = atomic_write_text(Path(cfg.OUTPUT_DIR) / "config.yaml", cfg.dump())
        logger.info("Full config saved to %s", path)
    if not args.eval_only:
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK


def run_finetune(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or `--eval-only` evaluate) and write results.json; returns the evaluation results.
    Every check comes before the first write into OUTPUT_DIR (`begin_run`); rank 0 holds
    OUTPUT_DIR's lock (`als_det.run_lock`) throughout."""
    setup_logging(rank=comm.get_rank())  # the console until OUTPUT_DIR may be written
    out_dir = check_output_folder(
        get_detection_cfg(args.config_file, args.opts).OUTPUT_DIR, "OUTPUT_DIR"
    )
    with output_lock(out_dir, enabled=comm.is_main_process()):
        return _run_finetune(args)


def _run_finetune(args: argparse.Namespace) -> dict[str, Any]:
    with held_records() as held:
        cfg = setup(args)
        start = check_start(args, cfg)
    begin_run(args, cfg, held)
    extra: dict[str, Any] = {}
    if args.eval_only:
        load = start.load
        results = FinetuneTrainer.test(cfg, start.model)
        backbone, training = load.provenance(), load.training
        iterations = 0 if load.iteration is None else load.iteration + 1
    else:
        trainer = FinetuneTrainer(
            cfg,
            start.model,
            start.load.provenance() if start.load else {},
            unsafe_load=args.unsafe_load,
            resumes=start.resume.resumes if start.resume else [],
        )
        if start.resume:
            trainer.resume(start.resume)
        results = trainer.train()
        backbone, training, iterations = trainer.backbone, trainer.training, cfg.SOLVER.MAX_ITER
        extra["resumes"] = trainer.resumes
    if comm.is_main_process():
        path = write_results(
            cfg.OUTPUT_DIR,
            results,
            backbone,
            iterations=iterations,
            seed=cfg.SEED,
            train_datasets=list(cfg.DATASETS.TRAIN),
            eval_only=bool(args.eval_only),
            device=cfg.MODEL.DEVICE,
            world_size=comm.get_world_size(),
            torch_threads=torch.get_num_threads(),
            training=training,
            datasets=ds.dataset_record(used_datasets(args, cfg)),
            detection_config=experiment_config(cfg),
            **amp_record(cfg),
            **extra,
        )
        logger.info("Wrote %s", path)
    return results


def launch_finetune(args: argparse.Namespace) -> None:
    """`run_finetune` on every process of the job: `--num-gpus` processes per machine (gloo ones
    without CUDA), or the processes torchrun started (see `als_det.detection.launch`)."""
    check_overrides(args.opts)
    if args.allow_config_change and not (args.resume and not args.eval_only):
        raise ValueError("--allow-config-change only applies with --resume (and training)")
    launch_processes(
        run_finetune,
        (args,),
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
    )
