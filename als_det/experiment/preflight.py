"""The pre-flight check of an experiment: what its stages need of this machine, seen before any
stage starts (and in `--dry-run`), in one short list:

- each data root and its layout: the pretraining and evaluation trees as `als_det.data.boxes`
  indexes them (`layout_problems`), the transfer's downstream set (train/ and val/ with class
  folders), each detector's COCO json and image folder; a root the plan generates (a `data`
  stage, or `DATA.GENERATE`) is fine;
- GPUs: as many on this machine as a stage asks per node (local launchers; on SLURM they are the
  nodes' business), or the note that every stage runs on the CPU;
- the torch build (CUDA or CPU-only) and which detectron2 is installed: the suite's pure-Python
  build (`scripts/install_detectron2.py`) or a compiled one with its C++/CUDA ops;
- free disk under the plan's `out` against an estimate from its stages (README "Disk").

`tools/run_experiment.py` refuses to launch while there is a problem (one line each) unless told
to go on (`--skip-preflight`).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from als_det.cli import USER_ERRORS
from als_det.data.boxes import layout_problems
from als_det.experiment.graph import Graph
from als_det.experiment.plan import Plan
from als_det.experiment.stages import Stage, resolve

logger = logging.getLogger(__name__)

# README "Disk": what one stage of a kind leaves under the plan's `out`.
GB_PER_STAGE = {"pretrain": 0.1, "finetune": 0.5}
# als_det.detection.datasets' names and layout (importing it would import detectron2's models).
COCO_SPLITS = {"coco_2017_train": "train2017", "coco_2017_val": "val2017"}
IMAGENET_LAYOUT = 'expected train/<wnid>/, val/, Annotation/; README "ImageNet with bounding boxes"'


class PreflightError(ValueError):
    """The plan cannot start here; the problems were listed just before."""


@dataclass(frozen=True)
class Finding:
    ok: bool
    text: str
    checked: bool = True  # False: could not be checked (said why); not a problem of the machine


def _spec(st: Stage) -> dict[str, Any]:
    """A stage command's `spec` (what it computes) as {name: value}."""
    spec = st.command.spec
    return dict(zip(spec[::2], spec[1::2]))


def _made_by_plan(path: str | Path, generated: Sequence[Path]) -> bool:
    path = resolve(path)
    return any(path == g or path.is_relative_to(g) for g in generated)


def _imagenet_root(
    root: str, splits: Sequence[str], boxes: Sequence[str], labels: Sequence[str], what: str
) -> Finding:
    where = resolve(root)
    if not where.is_dir():
        return Finding(False, f"{what}: data root {root} does not exist ({IMAGENET_LAYOUT})")
    problems = [
        p
        for split, box, label in zip(splits, boxes, labels)
        for p in layout_problems(
            where, split, str(resolve(box)) if box else "", str(resolve(label)) if label else ""
        )
    ]
    if problems:
        return Finding(
            False, f"{what}: data root {root}: {'; '.join(problems)} ({IMAGENET_LAYOUT})"
        )
    return Finding(True, f"{what}: data root {root}: {', '.join(splits)} and their boxes found")


def data_findings(graph: Graph) -> list[Finding]:
    """One line per data root the stages read: pretraining, evaluation, the transfer's downstream
    set, each detector's data."""
    from als_det.config import load_config

    pretraining, findings = [], []
    for st in graph.stages:
        if st.kind != "pretrain":
            continue
        try:
            pretraining.append(
                load_config(str(resolve(_spec(st)["config"])), list(_spec(st)["overrides"])).DATA
            )
        except USER_ERRORS as e:  # a broken arm fails on its own when it runs; the others go on
            findings.append(Finding(True, f"{st.name}: its config does not load: {e}", False))
    generated = [p.parent for st in graph.stages if st.kind == "data" for p in st.outputs]
    generated += [resolve(data.ROOT) for data in pretraining if data.GENERATE]
    seen = set()
    for data in pretraining:
        key = (data.ROOT, data.TRAIN_SPLIT, data.VAL_SPLIT, data.TRAIN_BOXES, data.VAL_BOXES)
        if key in seen:
            continue
        seen.add(key)
        if _made_by_plan(data.ROOT, generated):
            findings.append(Finding(True, f"pretraining: data root {data.ROOT}: made by the plan"))
            continue
        findings.append(
            _imagenet_root(
                data.ROOT,
                (data.TRAIN_SPLIT, data.VAL_SPLIT),
                (data.TRAIN_BOXES, data.VAL_BOXES),
                ("", data.VAL_LABELS),
                "pretraining",
            )
        )
    checked = {resolve(key[0]) for key in seen}
    for st in graph.stages:
        if st.kind == "evaluate":
            findings += _evaluation_data(_spec(st), generated, checked)
    downstream = {_spec(st)["data"] for st in graph.stages if st.kind == "transfer"}
    findings += [_downstream_data(root, generated) for root in sorted(downstream)]
    done = set()
    for st in graph.stages:
        if st.kind == "finetune" and _spec(st)["options"] not in done:
            done.add(_spec(st)["options"])
            findings += _detection_data(_spec(st), generated)
    return findings


def _evaluation_data(spec: dict[str, Any], generated: Sequence[Path], checked: set) -> list:
    """The evaluation's root, unless pretraining's (checked already) or made by the plan."""
    root = spec["data"]
    if resolve(root) in checked or _made_by_plan(root, generated):
        return []
    checked.add(resolve(root))
    parser = argparse.ArgumentParser(add_help=False)
    for option, default in (("--split", "val"), ("--boxes", ""), ("--val-labels", "")):
        parser.add_argument(option, default=default)
    opts, _ = parser.parse_known_args(list(spec["options"]))
    from als_det.analysis.backgrounds import is_in9_layout

    if resolve(root).is_dir() and is_in9_layout(resolve(root)):
        return [Finding(True, f"evaluation: data root {root}: ImageNet-9 layout found")]
    return [_imagenet_root(root, (opts.split,), (opts.boxes,), (opts.val_labels,), "evaluation")]


def _downstream_data(root: str, generated: Sequence[Path]) -> Finding:
    """The transfer's downstream set: train/ and val/, each with class folders."""
    what = f"transfer: downstream root {root}"
    if _made_by_plan(root, generated):
        return Finding(True, f"{what}: made by the plan")
    layout = "expected train/<class>/*, val/<class>/*; docs/architecture.md \"Transfer stage\""
    where = resolve(root)
    if not where.is_dir():
        return Finding(False, f"{what} does not exist ({layout})")
    counts = {
        split: sum(1 for e in os.scandir(where / split) if e.is_dir())
        if (where / split).is_dir()
        else 0
        for split in ("train", "val")
    }
    empty = [split for split, n in counts.items() if not n]
    if empty:
        return Finding(False, f"{what}: no class folders in {' or '.join(empty)}/ ({layout})")
    return Finding(True, f"{what}: {counts['train']} train and {counts['val']} val classes found")


def _detection_data(spec: dict[str, Any], generated: Sequence[Path]) -> list[Finding]:
    """The COCO-format sets a fine-tuning stage trains and tests on (`tools/finetune_coco.py`'s
    data-set options; without any it uses the generated set, which it makes itself)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--coco-root", default=None)
    for option in ("--dataset", "--train-dataset", "--test-dataset"):
        parser.add_argument(option, action="append", default=[])
    args, _ = parser.parse_known_args(list(spec["options"]))
    what = f"fine-tuning ({Path(spec['config']).stem})"
    overrides = list(spec["overrides"])[::2]
    if any(key in overrides for key in ("DATASETS.TRAIN", "DATASETS.TEST")):
        return [Finding(True, f"{what}: data sets named by DATASETS.* overrides: not checked")]
    given = {}
    for entry in args.dataset:
        name, _, rest = entry.partition("=")
        json_file, _, image_dir = rest.rpartition(".json:")
        given[name] = (json_file + ".json", image_dir)
    coco_root = args.coco_root or str(
        Path(os.environ.get("DETECTRON2_DATASETS", "datasets")) / "coco"
    )
    train, test = (
        chosen or ([coco] if args.coco_root else [])
        for chosen, coco in (
            (args.train_dataset, "coco_2017_train"),
            (args.test_dataset, "coco_2017_val"),
        )
    )
    names = list(dict.fromkeys(train + test))
    findings = []
    if any(n in COCO_SPLITS and n not in given for n in names) and not resolve(coco_root).is_dir():
        findings.append(
            Finding(
                False,
                f"{what}: COCO root {coco_root} does not exist (expected annotations/"
                "instances_{train,val}2017.json, train2017/, val2017/)",
            )
        )
        names = [n for n in names if n in given or n not in COCO_SPLITS]
    for name in names:
        if name in given:
            json_file, image_dir = given[name]
        elif name in COCO_SPLITS:
            split = COCO_SPLITS[name]
            json_file = str(Path(coco_root) / "annotations" / f"instances_{split}.json")
            image_dir = str(Path(coco_root) / split)
        else:
            findings.append(Finding(False, f"{what}: data set {name!r} is not registered"))
            continue
        if _made_by_plan(json_file, generated) and _made_by_plan(image_dir, generated):
            findings.append(Finding(True, f"{what}: {name}: made by the plan"))
            continue
        missing = [p for p in (json_file, image_dir) if not resolve(p).exists()]
        findings.append(
            Finding(
                not missing,
                f"{what}: {name}: "
                + (f"{' and '.join(missing)} not found" if missing else "found")
                + ("" if not missing else " (COCO-format json and image folder)"),
            )
        )
    if not train or not test:
        findings.append(Finding(True, f"{what}: the generated set (made by the stage itself)"))
    return findings


def gpu_findings(graph: Graph, launcher: str) -> list[Finding]:
    """The torch build, and GPUs for the stages that ask for them."""
    import torch

    cuda = torch.version.cuda
    build = f"torch {torch.__version__}: " + (f"CUDA {cuda} build" if cuda else "CPU-only build")
    asking = [st for st in graph.stages if st.resources.gpus_per_node]
    most = max((st.resources.gpus_per_node for st in asking), default=0)
    if not asking:
        here = torch.cuda.device_count()
        gpus = (
            f"{here} here (a stage on device auto uses one)" if here else "every stage on the CPU"
        )
        return [Finding(True, build), Finding(True, f"GPUs: none asked; {gpus}")]
    names = ", ".join(st.name for st in asking[:3]) + (
        f" and {len(asking) - 3} more" if len(asking) > 3 else ""
    )
    findings = [
        Finding(
            bool(cuda),
            build + ("" if cuda else f"; {names} ask for GPUs: install a CUDA torch (README)"),
        )
    ]
    if launcher == "slurm":
        findings.append(Finding(True, f"GPUs: up to {most} per node on the SLURM nodes ({names})"))
        return findings
    here = torch.cuda.device_count()
    findings.append(
        Finding(
            here >= most,
            f"GPUs: {names} ask for {most} per node, this machine has {here}"
            + ("" if here >= most else " (set gpus_per_node in the plan, or --launcher slurm)"),
        )
    )
    return findings


def detectron2_finding() -> Finding:
    """Which detectron2: the pure-Python build (its `_missing_extension` stand-in for `_C`) or a
    compiled one (the `_C` extension)."""
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        return Finding(False, "detectron2: not installed (make setup; README \"detectron2\")")
    folder = Path(next(iter(spec.submodule_search_locations)))
    version = next(
        (f"{d} {_version(d)}" for d in ("detectron2", "pb1-detectron2") if _version(d)), "?"
    )
    if any(folder.glob("_C*.so")) or any(folder.glob("_C*.pyd")):
        return Finding(True, f"detectron2: {version}, compiled (C++/CUDA ops)")
    if (folder / "_missing_extension.py").is_file():
        return Finding(
            True,
            f"detectron2: {version}, the pure-Python build (torchvision ops; R50-FPN at 0.131 "
            "s/iteration for 8 images on one H200: docs/benchmarks.md)",
        )
    return Finding(False, f"detectron2: {folder} has neither the C++ extension nor the stand-in")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def disk_finding(plan: Plan, graph: Graph) -> Finding:
    """Free space under `out` against ~0.1 GB per pretraining and 0.5 GB per fine-tuning stage."""
    need = sum(GB_PER_STAGE.get(st.kind, 0.0) for st in graph.stages)
    where = resolve(plan.out)
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free / 1e9
    return Finding(
        free >= need,
        f"disk: about {need:.1f} GB needed under {plan.out}, {free:.1f} GB free",
    )


def check(plan: Plan, graph: Graph, launcher: str) -> list[Finding]:
    findings = data_findings(graph) + gpu_findings(graph, launcher)
    if any(st.kind == "finetune" for st in graph.stages):
        findings.append(detectron2_finding())
    return findings + [disk_finding(plan, graph)]


def listing(findings: Sequence[Finding], prefix: str = "") -> str:
    def status(f: Finding) -> str:
        return "PROBLEM" if not f.ok else "ok" if f.checked else "unchecked"

    return "\n".join(f"{prefix}  {status(f):9}  {f.text}" for f in findings)


def require_ready(plan: Plan, graph: Graph, launcher: str) -> None:
    """Log the check; raise `PreflightError` when it found a problem."""
    findings = check(plan, graph, launcher)
    problems = [f for f in findings if not f.ok]
    (logger.error if problems else logger.info)("pre-flight check:\n%s", listing(findings))
    if problems:
        raise PreflightError(
            f"the pre-flight check found {len(problems)} problem(s) (PROBLEM above); fix them, or "
            "--skip-preflight to launch anyway"
        )
