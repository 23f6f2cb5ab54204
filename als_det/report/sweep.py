"""Evaluated sweep cells (setting x seed x training length) -> one `Sweep`: every cell paired
with its baseline and summarized over seeds. Its tables are `report.sweep_tables`', its figures
`report.sweep_figures`', and `report.sweep_report` writes them.

A cell is one pretraining run (its OUTPUT_DIR: metrics.jsonl, last.pth) and the `tools/evaluate.py`
metrics.json that holds its evaluation. Every cell is compared with the baseline setting (hard) of
the same seed and training length — the same crops, the same initialisation seed — through the
evaluation's own `headline_comparison`, so the three ratio forms are exactly those a joint
evaluation reports. Across seeds: mean ± sample std, and for the paired quantities (differences
and ratios to the baseline) a 95% Student-t interval over seeds (`als_det.metrics.comparison`).

A cell may also have a `tools/transfer.py` transfer.json (the cell's checkpoint on a downstream
set): its top-1 per protocol becomes `transfer_<protocol>`, and the difference to the baseline of
the same seed and length `d_transfer_<protocol>`; every cell's transfer must have used the same
downstream images and options.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from als_det.io import read_history, sha256_file
from als_det.metrics.comparison import (
    UnpairedError,
    near_chance,
    pair_with_baseline,
    seed_stats,
)
from als_det.metrics.context import headline_comparison
from als_det.views import (
    FILLS,
    PRIMARY,
    VIEWS,
    context_sources,
    fill_source,
    unfilled_context_views,
)

FORMS = (
    ("ratio_absolute", "absolute"),
    ("ratio_above_chance", "above chance"),
    ("ratio_relative_to_val", "relative to own val confidence"),
)
PAIRED_PREFIXES = ("d_", "ratio_")
DATA_KEYS = ("root", "split", "images_evaluated", "classes")
TRANSFER_PROTOCOLS = ("linear_probe", "knn", "finetune")
# transfer.json options that change how a transfer ran, not what it measured
TRANSFER_RUN_OPTIONS = ("workers", "device", "progress")


def fill_sources() -> dict[str, str]:
    """bg_only under each fill as a source of its own -> the fill."""
    return {fill_source(f): f for f in FILLS}


def sources() -> list[str]:
    """Every context-only source a sweep compares, in report order: bg_only, bg_only under each
    fill, then the other context-only views (`als_det.views`)."""
    return [PRIMARY, *fill_sources(), *(s for s in context_sources() if s != PRIMARY)]


class SweepInputError(ValueError):
    """Cells that cannot be compared: a missing file or baseline, another seed or data set."""


@dataclass(frozen=True)
class SweepCell:
    """One evaluated run. `model`: its name in `eval_metrics` and `transfer` (default: the model
    whose checkpoint lies in `run_dir`). `transfer`: its transfer.json, if it has one."""

    setting: str
    seed: int
    run_dir: str | Path
    eval_metrics: str | Path
    model: str | None = None
    transfer: str | Path | None = None


@dataclass
class CellResult:
    cell: SweepCell
    epochs: int
    strategy: dict[str, Any]
    evaluation: dict[str, Any]  # the model's entry in metrics.json
    data: dict[str, Any]  # metrics.json's "data", the fields every cell must share
    values: dict[str, float | None] = field(default_factory=dict)


@dataclass
class Group:
    """All seeds of one setting at one training length."""

    setting: str
    epochs: int
    strategy: dict[str, Any]
    cells: list[CellResult]
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> mean, std, n, interval

    @property
    def seeds(self) -> list[int]:
        return [c.cell.seed for c in self.cells]


@dataclass
class Sweep:
    baseline: str
    groups: list[Group]
    data: dict[str, Any]
    main_epochs: int
    sources: list[str]
    transfer: dict[str, Any] | None = None  # the downstream set and options of every transfer


def chance_seeds(sweep: Sweep, g: Group) -> list[int]:
    """The seeds of `g` where its model or the baseline's of that seed and training length is at or
    near chance on val (`metrics.comparison.near_chance`): no verdict is drawn from them."""

    def at_chance(c: CellResult) -> bool:
        v = c.evaluation["val"]
        return near_chance(v["top1"], v["n"], v["num_classes"])

    base = [
        c
        for b in sweep.groups
        if b.setting == sweep.baseline and b.epochs == g.epochs
        for c in b.cells
        if at_chance(c)
    ]
    seeds = {c.cell.seed for c in base} | {c.cell.seed for c in g.cells if at_chance(c)}
    return sorted(seeds & set(g.seeds))


def verdict_views(sweep: Sweep) -> list[str]:
    """The sources beside bg_only that get a verdict of their own: bg_only under another fill,
    and context without any fill (outside_crop); a verdict that holds under one only may be
    about the fill."""
    return [s for s in sweep.sources if s in fill_sources() or s in unfilled_context_views()]


def of_val_images(source: str) -> bool:
    """A view of the evaluated images (not a generated split): trade-off figures are drawn for
    these."""
    return source in fill_sources() or VIEWS[source].variant is not None


def _lies_in(run: Path, checkpoint: dict[str, Any]) -> bool:
    """The evaluated checkpoint is a file of the run folder: by its recorded path, or, where the
    folder has moved since (another checkout, another machine), by the file of the same name there
    having the recorded sha256."""
    path = Path(checkpoint["path"])
    if path.parent == run:
        return True
    moved = run / path.name
    return (
        bool(checkpoint.get("sha256"))
        and moved.is_file()
        and (sha256_file(moved) == checkpoint["sha256"])
    )


def _find_model(models: dict[str, Any], cell: SweepCell) -> str:
    run = Path(cell.run_dir).resolve()
    if cell.model is not None:
        if cell.model not in models:
            raise SweepInputError(
                f"{cell.eval_metrics} has no model {cell.model!r} (it has {sorted(models)})"
            )
        if not _lies_in(run, models[cell.model]["checkpoint"]):
            raise SweepInputError(
                f"{cell.eval_metrics}: model {cell.model!r} is "
                f"{models[cell.model]['checkpoint']['path']}, not a checkpoint in {run}"
            )
        return cell.model
    names = [n for n, m in models.items() if _lies_in(run, m["checkpoint"])]
    if not names:
        raise SweepInputError(
            f"{cell.eval_metrics}: no evaluated checkpoint of {cell.setting} seed {cell.seed} "
            f"lies in {run}"
        )
    if len(names) > 1:
        raise SweepInputError(
            f"{cell.eval_metrics}: checkpoints {names} all lie in {run}; name the cell's model"
        )
    return names[0]


def _with_fill_sources(model: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """The model's entry with bg_only under each fill other than the evaluation's own as variants
    `bg_only_<fill>` (evaluations made with `--single-fill` have none)."""
    own = metrics.get("options", {}).get("fill", "black")
    fills = {
        source: model["bg_only_by_fill"][fill]
        for source, fill in fill_sources().items()
        if fill != own and fill in model.get("bg_only_by_fill", {})
    }
    return {**model, "variants": {**model["variants"], **fills}}


def load_cell(cell: SweepCell) -> CellResult:
    """Read one cell's evaluation and training history; check they belong together."""
    eval_path, history_path = Path(cell.eval_metrics), Path(cell.run_dir) / "metrics.jsonl"
    for path in (eval_path, history_path):
        if not path.is_file():
            raise SweepInputError(f"{cell.setting} seed {cell.seed}: {path} does not exist")
    metrics = json.loads(eval_path.read_text())
    model = _with_fill_sources(metrics["models"][_find_model(metrics["models"], cell)], metrics)
    ck = model["checkpoint"]
    if int(ck["seed"]) != int(cell.seed):
        raise SweepInputError(
            f"{cell.setting} seed {cell.seed}: its checkpoint {ck['path']} has seed {ck['seed']}"
        )
    rows = read_history(history_path, int(ck["epoch"]))
    if not rows or rows[-1]["epoch"] != int(ck["epoch"]):
        raise SweepInputError(
            f"{history_path} has no row for epoch {ck['epoch']}, the evaluated checkpoint's"
        )
    last = rows[-1]
    values = {
        "top1": model["val"]["top1"],
        "ece": model["val"]["ece"],
        "nll": model["val"]["nll"],
        "conf_val": model["val"]["mean_confidence"],
        "mean_e": last.get("mean_e"),
        "mean_coverage": last.get("mean_coverage"),
        "train_time_s": float(sum(r.get("epoch_time_s", 0.0) for r in rows)),
    }
    for s in sources():
        v = model["variants"].get(s) or {}
        if v.get("n"):
            values[f"conf_{s}"] = v["mean_confidence"]
            values[f"reliance_{s}"] = v["mean_confidence"] / values["conf_val"]
    return CellResult(
        cell,
        int(ck["epoch"]),
        model["label_strategy"],
        model,
        {k: metrics["data"].get(k) for k in DATA_KEYS},
        values,
    )


def _transfer_model(path: Path, models: dict[str, Any], cell: SweepCell) -> dict[str, Any]:
    """The cell's model in its transfer.json: by name, or the only one; its checkpoint must lie in
    the cell's run folder."""
    name = cell.model
    if name is None and len(models) == 1:
        name = next(iter(models))
    if name not in models:
        raise SweepInputError(
            f"{path} has no model {name!r} (it has {sorted(models)}); name the cell's model"
        )
    m = models[name]
    if not _lies_in(Path(cell.run_dir).resolve(), {"path": m["checkpoint"], "sha256": m["sha256"]}):
        raise SweepInputError(
            f"{path}: model {name!r} is {m['checkpoint']}, not a checkpoint in {cell.run_dir}"
        )
    return m


def load_transfer(r: CellResult) -> dict[str, Any]:
    """Read the cell's transfer.json into `r.values` (`transfer_<protocol>`: top-1); returns what
    every cell's transfer must share (its downstream set and options)."""
    path = Path(r.cell.transfer)
    if not path.is_file():
        raise SweepInputError(f"{r.cell.setting} seed {r.cell.seed}: {path} does not exist")
    results = json.loads(path.read_text())
    m = _transfer_model(path, results["models"], r.cell)
    if (int(m["pretrain_seed"]), int(m["pretrain_epoch"])) != (r.cell.seed, r.epochs):
        raise SweepInputError(
            f"{path}: its checkpoint has seed {m['pretrain_seed']} at epoch "
            f"{m['pretrain_epoch']}, the cell's evaluation seed {r.cell.seed} at epoch {r.epochs}"
        )
    for p in TRANSFER_PROTOCOLS:
        if p in m:
            r.values[f"transfer_{p}"] = m[p]["top1"]
    data = results["data"]
    return {
        "data": {k: data[k] for k in ("root", "classes", "images", "max_per_class", "digest")},
        "options": {k: v for k, v in results["options"].items() if k not in TRANSFER_RUN_OPTIONS},
    }


def add_transfer(results: list[CellResult], baseline: str) -> dict[str, Any] | None:
    """Every cell's transfer top-1s, each cell's differences to its baseline cell (both with a
    transfer), and the downstream set and options they share (None: no cell has a transfer)."""
    shared = {}
    for r in results:
        if r.cell.transfer is not None:
            shared[r.cell.transfer] = load_transfer(r)
    if not shared:
        return None
    (first_path, first), *others = shared.items()
    for path, other in others:
        if other != first:
            diff = [
                f"{part}.{k}"
                for part in ("data", "options")
                for k in first[part]
                if other[part].get(k) != first[part][k]
            ]
            raise SweepInputError(
                f"{path} measured transfer otherwise than {first_path} (differs in {diff}); every "
                "cell's transfer must use the same downstream images and options"
            )
    pairs = pair_with_baseline(
        results, lambda r: (r.cell.seed, r.epochs), lambda r: r.cell.setting == baseline
    )
    for r, b in pairs:
        for p in TRANSFER_PROTOCOLS:
            key = f"transfer_{p}"
            if key in r.values and key in b.values:
                r.values[f"d_{key}"] = r.values[key] - b.values[key]
    return first


def _pair_with_baseline(results: list[CellResult], baseline: str) -> None:
    try:
        pairs = pair_with_baseline(
            results, lambda r: (r.cell.seed, r.epochs), lambda r: r.cell.setting == baseline
        )
    except UnpairedError as e:
        raise SweepInputError(
            f"no {baseline!r} cell for (seed, epochs) {e.missing}: every cell is compared with the "
            "baseline of its own seed and training length"
        ) from None
    for r, b in pairs:
        r.values["d_top1"] = r.values["top1"] - b.values["top1"]
        r.values["d_ece"] = r.values["ece"] - b.values["ece"]
        for s in sources():
            h = headline_comparison(r.cell.setting, baseline, r.evaluation, b.evaluation, s)
            for key, _ in FORMS:
                if h is not None:
                    r.values[f"{key}_{s}"] = h[key]


def summarize(
    cells: Sequence[SweepCell], baseline: str = "hard", main_epochs: int | None = None
) -> Sweep:
    """Load, check and pair every cell; per (setting, epochs): statistics over seeds."""
    if not cells:
        raise SweepInputError("no cells to summarize")
    seen = Counter((c.setting, c.seed, str(Path(c.run_dir).resolve())) for c in cells)
    if max(seen.values()) > 1:
        raise SweepInputError(f"a cell is listed twice: {[k for k, n in seen.items() if n > 1][0]}")
    results = [load_cell(c) for c in cells]
    first = results[0].data
    for r in results[1:]:
        if r.data != first:
            diff = [k for k in DATA_KEYS if r.data.get(k) != first.get(k)]
            raise SweepInputError(
                f"{r.cell.eval_metrics} was evaluated on other data than "
                f"{results[0].cell.eval_metrics} (differs in {diff}); every cell must see the same "
                "images"
            )
    _pair_with_baseline(results, baseline)
    transfer = add_transfer(results, baseline)
    if main_epochs is None:
        main_epochs = Counter(r.epochs for r in results).most_common(1)[0][0]
    appearance = {s: i for i, s in reversed(list(enumerate(c.setting for c in cells)))}
    order: dict[tuple[str, int], list[CellResult]] = {}
    for r in sorted(
        results,
        key=lambda r: (
            r.epochs != main_epochs,
            r.epochs,
            r.cell.setting != baseline,
            appearance[r.cell.setting],
        ),
    ):
        order.setdefault((r.cell.setting, r.epochs), []).append(r)
    groups = []
    for (setting, epochs), members in order.items():
        members.sort(key=lambda r: r.cell.seed)
        names = {json.dumps(m.strategy, sort_keys=True) for m in members}
        if len(names) > 1:
            raise SweepInputError(
                f"setting {setting!r} ({epochs} epochs) mixes label strategies: {sorted(names)}"
            )
        keys = sorted({k for m in members for k in m.values})
        stats = {
            k: seed_stats([m.values.get(k) for m in members], k.startswith(PAIRED_PREFIXES))
            for k in keys
        }
        groups.append(Group(setting, epochs, members[0].strategy, members, stats))
    shown = [s for s in sources() if any(f"conf_{s}" in r.values for r in results)]
    return Sweep(baseline, groups, first, main_epochs, shown, transfer)
