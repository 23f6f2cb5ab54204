"""Experiment plans: a YAML file (configs/experiments/) naming the pretraining arms and seeds, the
evaluation, the detectors to fine-tune each converted backbone with, and each stage's resources.

    name: paper_r50
    out: output/paper_r50              # every stage writes under here (relative: to the repository)
    seeds: [0]
    baseline: hard                     # the arm that evaluation ratios and AP deltas refer to
    data: {root: datasets/imagenet, generate: false}
    arms:                              # name -> pretraining config + config overrides
      hard: {config: configs/pretrain/imagenet_r50_hard.yaml}
      als: {config: configs/pretrain/imagenet_r50_als.yaml, overrides: {LABELS.E_MAX: 0.5}}
    pretrain: {overrides: {}, resources: {gpus_per_node: 8, timeout_min: 2880}}
    evaluate: {args: [], per_run: false, resources: {...}}     # null: no evaluation
    transfer: {data: datasets/downstream, args: [], resources: {...}}  # optional: per run
    convert: {resources: {...}}
    detection:                         # optional: [] or absent = pretrain and evaluate only
      - {name: faster_rcnn_R_50_FPN_1x, config: configs/detection/faster_rcnn_R_50_FPN_1x.yaml,
         args: [--coco-root, datasets/coco], overrides: {}, seeds: null, resources: {...}}
    compare: {resources: {...}}
    report: null                       # "demo": the demo's one-page report at OUT/report.md
    sweep: null                        # a sweep: the arms are its settings (below)
    slurm: {partition: null, account: null, qos: null, constraint: null, signal_delay_s: 120,
            max_num_timeout: 10, additional_parameters: {}}

`transfer` runs `tools/transfer.py` (linear probe, k-NN, fine-tuning on a downstream set the
backbones never saw) on each pretraining run, apart from its evaluation; absent or null: none.

Strings in `args`, override values, `data.root` and `transfer.data` may say `{out}`, and `args`
and override values `{data}` (the data root). Arm and detector names name folders and files under
`out`: plain names of letters, digits and `_ . + -`, starting with a letter or digit.

A sweep (`sweep: {epochs: [8, 32], lengths_for: [hard, als]}`) reads `arms` as its settings and
runs every setting x seed x training length as one cell: the arm `<setting>_e<epochs>` (the setting
with `SOLVER.EPOCHS` set), the run `<setting>_e<epochs>_s<seed>` (the seed always named, so
`--seeds N` keeps the finished cells), one evaluation (and with `transfer`, one transfer) per run
and no detection. Every setting runs the first length; the settings in `lengths_for` (the baseline
among them) run every length, with the seeds in `length_seeds` (optional, among the plan's;
default every seed). Cells run length by length (the first length over every seed first). The
report (`report: sweep`, implied) is `als_det.report.sweep_report`'s, written to OUT/report.md.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from als_det.config_files import read_yaml_mapping
from als_det.experiment.spec import (
    Arm,
    Detection,
    Evaluation,
    Plan,
    PlanError,
    Resources,
    SweepGrid,
    Transfer,
)

REPO = Path(__file__).resolve().parents[2]
STAGE_KINDS = ("data", "pretrain", "evaluate", "transfer", "convert", "finetune", "compare")
REPORTS = ("demo", "sweep")
PLAN_KEYS = {
    "name",
    "out",
    "seeds",
    "baseline",
    "data",
    "arms",
    "pretrain",
    "evaluate",
    "transfer",
    "convert",
    "detection",
    "compare",
    "report",
    "slurm",
    "sweep",
}


SLURM_DEFAULTS = {
    "partition": None,
    "account": None,
    "qos": None,
    "constraint": None,
    "signal_delay_s": 120,
    "max_num_timeout": 10,
    "additional_parameters": {},
}


def _check_keys(raw: Any, allowed: set[str], where: str, source: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise PlanError(f"{source}: {where} must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise PlanError(
            f"{source}: unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}"
        )
    return dict(raw)


def _resources(raw: Any, where: str, source: str) -> Resources:
    names = {f.name for f in fields(Resources)}
    values = _check_keys(raw, names, f"{where}.resources", source)
    try:
        res = Resources(**values)
    except TypeError as e:
        raise PlanError(f"{source}: {where}.resources: {e}") from None
    if res.nodes < 1 or res.timeout_min < 1 or res.processes < 1:
        raise PlanError(
            f"{source}: {where}.resources needs nodes >= 1, timeout_min >= 1 and at "
            f"least one process, got {res}"
        )
    return res


def _overrides(raw: Any, where: str, source: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) for k in raw):
        raise PlanError(f"{source}: {where} must map config KEYs to values, got {raw!r}")
    return dict(raw)


def _string_list(raw: Any, where: str, source: str) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise PlanError(f"{source}: {where} must be a list of command-line arguments, got {raw!r}")
    return [str(x) for x in raw]


def _existing(path: str, where: str, source: str) -> str:
    if not (REPO / path).is_file() and not Path(path).is_file():
        raise PlanError(f"{source}: {where}: config file {path} not found")
    return path


PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def _plain_name(name: Any, where: str, source: str) -> str:
    """An arm's or detector's name: a folder and file name part under `out`, never a path."""
    text = str(name)
    if isinstance(name, bool) or not isinstance(name, (str, int)) or not PLAIN_NAME.fullmatch(text):
        raise PlanError(
            f"{source}: {where}: the name {text!r} is not a plain name (it names folders under "
            "`out`): use letters, digits and _ . + -, starting with a letter or digit"
        )
    return text


def _seeds(raw: Any, where: str, source: str) -> list[int]:
    if not isinstance(raw, list) or not raw or not all(isinstance(s, int) for s in raw):
        raise PlanError(f"{source}: {where} must be a non-empty list of integers, got {raw!r}")
    return list(raw)


def _detection(raw: Any, i: int, source: str) -> Detection:
    where = f"detection[{i}]"
    d = _check_keys(raw, {f.name for f in fields(Detection)}, where, source)
    if not d.get("name") or not d.get("config"):
        raise PlanError(f"{source}: {where} needs a name and a config")
    seeds = d.get("seeds")
    return Detection(
        name=_plain_name(d["name"], f"{where}.name", source),
        config=_existing(d["config"], where, source),
        args=_string_list(d.get("args"), f"{where}.args", source),
        overrides=_overrides(d.get("overrides"), f"{where}.overrides", source),
        seeds=None if seeds is None else _seeds(seeds, f"{where}.seeds", source),
        resources=_resources(d.get("resources"), where, source),
    )


def _section(raw: Mapping[str, Any], key: str, allowed: set[str], source: str) -> dict[str, Any]:
    return _check_keys(raw.get(key), allowed | {"resources"}, key, source)


def parse_plan(raw: Any, source: str = "<plan>") -> Plan:
    """Check a loaded plan mapping and build the `Plan`; every problem is a `PlanError`."""
    raw = _check_keys(raw, PLAN_KEYS, "the plan", source)
    for key in ("name", "out", "arms"):
        if not raw.get(key):
            raise PlanError(f"{source}: the plan needs `{key}`")
    arms = _arms(raw["arms"], source)
    baseline = str(raw.get("baseline", "hard"))
    if baseline not in arms:
        raise PlanError(f"{source}: baseline {baseline!r} is not among the arms {list(arms)}")
    data = _section(raw, "data", {"root", "generate"}, source)
    if not data.get("root"):
        raise PlanError(f"{source}: data.root is required (the pretraining and evaluation data)")
    pretrain = _section(raw, "pretrain", {"overrides"}, source)
    evaluate = _evaluation(raw, source)
    detection = _detection_entries(raw, source)
    report = raw.get("report")
    if report is not None and report not in REPORTS:
        raise PlanError(f"{source}: report must be one of {list(REPORTS)} or null, got {report!r}")
    sweep = None
    if raw.get("sweep") is not None or report == "sweep":
        _check_sweep_plan(raw, evaluate, pretrain, source)
        sweep = _sweep_grid(raw["sweep"], arms, baseline, raw.get("seeds", [0]), source)
        arms = {
            name: Arm(name, arms[setting].config, {**arms[setting].overrides, "SOLVER.EPOCHS": e})
            for name, setting, e in sweep.cells()
        }
        baseline = f"{baseline}_e{sweep.epochs[0]}"
        evaluate, report = replace(evaluate, per_run=True), "sweep"
    if report == "demo" and (evaluate is None or evaluate.per_run or not detection):
        raise PlanError(f"{source}: report: demo needs one evaluation over all runs and a detector")
    return Plan(
        name=str(raw["name"]),
        out=str(raw["out"]),
        seeds=_seeds(raw.get("seeds", [0]), "seeds", source),
        arms=arms,
        baseline=baseline,
        data_root=str(data["root"]),
        generate=bool(data.get("generate")),
        data_resources=_resources(data.get("resources"), "data", source),
        pretrain_overrides=_overrides(pretrain.get("overrides"), "pretrain.overrides", source),
        pretrain_resources=_resources(pretrain.get("resources"), "pretrain", source),
        evaluate=evaluate,
        transfer=_transfer(raw, source),
        convert_resources=_stage_resources(raw, "convert", source),
        detection=[_detection(d, i, source) for i, d in enumerate(detection)],
        compare_resources=_stage_resources(raw, "compare", source),
        report=report,
        slurm={
            **copy.deepcopy(SLURM_DEFAULTS),
            **_check_keys(raw.get("slurm"), set(SLURM_DEFAULTS), "slurm", source),
        },
        sweep=sweep,
        source=source,
    )


def _arms(raw: Any, source: str) -> dict[str, Arm]:
    arms = {}
    for name, spec in _check_keys(raw, set(raw), "arms", source).items():
        name = _plain_name(name, "arms", source)
        a = _check_keys(spec, {"config", "overrides"}, f"arms.{name}", source)
        if not a.get("config"):
            raise PlanError(f"{source}: arms.{name} needs a config")
        arms[str(name)] = Arm(
            str(name),
            _existing(a["config"], f"arms.{name}", source),
            _overrides(a.get("overrides"), f"arms.{name}.overrides", source),
        )
    return arms


def _evaluation(raw: Mapping[str, Any], source: str) -> Evaluation | None:
    """`evaluate: null` turns evaluation off; absent means the defaults."""
    if raw.get("evaluate", {}) is None:
        return None
    ev = _section(raw, "evaluate", {"args", "per_run", "data"}, source)
    return Evaluation(
        args=_string_list(ev.get("args"), "evaluate.args", source),
        per_run=bool(ev.get("per_run", False)),
        data=str(ev.get("data") or ""),
        resources=_resources(ev.get("resources"), "evaluate", source),
    )


def _transfer(raw: Mapping[str, Any], source: str) -> Transfer | None:
    """Absent or null: no transfer stage."""
    if raw.get("transfer") is None:
        return None
    tr = _section(raw, "transfer", {"data", "args"}, source)
    if not tr.get("data"):
        raise PlanError(
            f"{source}: transfer.data is required (the downstream set: train/<class>/*, "
            "val/<class>/*)"
        )
    return Transfer(
        data=str(tr["data"]),
        args=_string_list(tr.get("args"), "transfer.args", source),
        resources=_resources(tr.get("resources"), "transfer", source),
    )


def _detection_entries(raw: Mapping[str, Any], source: str) -> list[Any]:
    detection = raw.get("detection") or []
    if not isinstance(detection, list):
        raise PlanError(f"{source}: detection must be a list of detector entries")
    names = [d.get("name") for d in detection if isinstance(d, Mapping)]
    if len(set(names)) != len(names):
        raise PlanError(f"{source}: detection names must be distinct, got {names}")
    return detection


def _stage_resources(raw: Mapping[str, Any], stage: str, source: str) -> Resources:
    return _resources(_section(raw, stage, set(), source).get("resources"), stage, source)


def _sweep_grid(
    raw: Any, arms: dict[str, Arm], baseline: str, seeds: list[int], source: str
) -> SweepGrid:
    s = _check_keys(raw, {"epochs", "lengths_for", "length_seeds"}, "sweep", source)
    epochs = s.get("epochs")
    if (
        not isinstance(epochs, list)
        or not epochs
        or not all(isinstance(e, int) and e > 0 for e in epochs)
        or len(set(epochs)) != len(epochs)
    ):
        raise PlanError(
            f"{source}: sweep.epochs must be a non-empty list of distinct positive integers (the "
            f"first is every setting's), got {epochs!r}"
        )
    lengths_for = s.get("lengths_for") or []
    if not isinstance(lengths_for, list) or not set(lengths_for) <= set(arms):
        raise PlanError(
            f"{source}: sweep.lengths_for must list settings among the arms {list(arms)}, "
            f"got {lengths_for!r}"
        )
    if len(epochs) > 1 and baseline not in lengths_for:
        raise PlanError(
            f"{source}: sweep.lengths_for must include the baseline {baseline!r}: every cell is "
            "compared with the baseline of its own seed and training length"
        )
    if len(epochs) == 1 and lengths_for:
        raise PlanError(f"{source}: sweep.lengths_for needs more than one length in sweep.epochs")
    length_seeds = s.get("length_seeds")
    if length_seeds is not None:
        length_seeds = _seeds(length_seeds, "sweep.length_seeds", source)
        if not set(length_seeds) <= set(seeds):
            raise PlanError(
                f"{source}: sweep.length_seeds must be among the plan's seeds {seeds}, "
                f"got {length_seeds}"
            )
    return SweepGrid(
        dict(arms), list(epochs), [str(x) for x in lengths_for], baseline, length_seeds
    )


def _check_sweep_plan(
    raw: Mapping[str, Any], evaluate: Evaluation | None, pretrain: Mapping[str, Any], source: str
) -> None:
    """A sweep pretrains and evaluates each run; its lengths come from sweep.epochs alone."""
    if raw.get("sweep") is None:
        raise PlanError(f"{source}: report: sweep needs a `sweep` section (epochs, lengths_for)")
    if raw.get("report") not in (None, "sweep"):
        raise PlanError(f"{source}: a sweep writes the sweep report, not report: {raw['report']!r}")
    if evaluate is None or raw.get("evaluate", {}).get("per_run") is False:
        raise PlanError(
            f"{source}: a sweep evaluates every run on "
            "its own: leave evaluate.per_run unset or true"
        )
    if raw.get("detection"):
        raise PlanError(
            f"{source}: a sweep pretrains and evaluates only: `detection` must be empty"
        )
    overrides = {
        "pretrain.overrides": pretrain.get("overrides") or {},
        **{
            f"arms.{name}.overrides": arm.get("overrides") or {}
            for name, arm in raw["arms"].items()
        },
    }
    setters = [where for where, values in overrides.items() if "SOLVER.EPOCHS" in values]
    if setters:
        raise PlanError(
            f"{source}: {', '.join(setters)} set SOLVER.EPOCHS; in a sweep the lengths come from "
            "sweep.epochs"
        )


def load_plan(path: str | Path) -> Plan:
    """Read (plain YAML only: `read_yaml_mapping`) and check a plan file."""
    path = Path(path)
    if not path.exists():
        raise PlanError(f"plan file {path} not found")
    return parse_plan(read_yaml_mapping(path), str(path))
