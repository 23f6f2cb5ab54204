"""Evaluated sweep cells (setting x seed x training length) -> one `Sweep`: every cell paired
with its baseline and summarized over seeds. Its tables are `report.sweep_tables`', its figures
`report.sweep_figures`', and `report.sweep_report` writes them.

A cell is one pretraining run (its OUTPUT_DIR: metrics.jsonl, last.pth) and the `tools/evaluate.py`
metrics.json that holds its evaluation. Every cell is compared with the baseline setting (hard) of
the same seed and training length — the same crops, the same initialisation seed — through the
evaluation's own `headline_comparison`, so the three ratio forms are exactly those a joint
evaluation reports. Across seeds: mean ± sample std, and for the paired quantities (differences
and ratios to the baseline) a 95% Student-t interval over seeds (`als_det.metrics.comparison`).
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
    """One evaluated run. `model`: its name in `eval_metrics` (default: the model whose checkpoint
    lies in `run_dir`)."""

    setting: str
    seed: int
    run_dir: str | Path
    eval_metrics: str | Path
    model: str | None = None


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
    return Sweep(baseline, groups, first, main_epochs, shown)
