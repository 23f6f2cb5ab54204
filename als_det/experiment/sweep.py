"""A sweep plan's cells (setting x seed x training length, each a pretraining, its evaluation and,
when the plan has one, its transfer) as the runner sees them: a progress line before each stage
(which cell, how many finished, the time left), and after the run the sweep report over the cells
that finished, naming the ones that did not (`als_det.report.sweep_report` writes it), and the
code revisions its cells come from.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from als_det.experiment.graph import Graph
from als_det.experiment.launchers import Outcome
from als_det.experiment.plan import Plan
from als_det.experiment.stages import Stage, resolve
from als_det.io import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    run: str  # the run's folder and model name, `<setting>_e<epochs>_s<seed>`
    setting: str
    seed: int
    epochs: int
    pretrain: Stage
    evaluate: Stage
    transfer: Stage | None = None

    @property
    def stages(self) -> tuple[Stage, ...]:
        return (self.pretrain, self.evaluate, *([self.transfer] if self.transfer else []))

    @property
    def label(self) -> str:
        return (
            f"{self.run} ({self.setting}, seed {self.seed}, "
            f"{self.epochs} epoch{'s' * (self.epochs != 1)})"
        )


def sweep_cells(plan: Plan, graph: Graph) -> list[Cell]:
    """Every cell in the order the local launcher runs them."""
    if plan.sweep is None:
        raise ValueError(f"plan {plan.name} is not a sweep")
    arms = {arm: (setting, epochs) for arm, setting, epochs in plan.sweep.cells()}
    stages = {st.name: st for st in graph.stages}
    cells = []
    for run, arm, seed in plan.runs():
        setting, epochs = arms[arm.name]
        cells.append(
            Cell(
                run,
                setting,
                seed,
                epochs,
                stages[f"pretrain_{run}"],
                stages[f"evaluate_{run}"],
                stages.get(f"transfer_{run}"),
            )
        )
    return cells


def describe_grid(plan: Plan) -> str:
    """One line for the dry run: the grid, the cell count, where the report goes."""
    grid = plan.sweep
    assert grid is not None
    main, longer = grid.epochs[0], grid.epochs[1:]
    extra = (
        f", and {', '.join(grid.lengths_for)} at {', '.join(map(str, longer))} epochs"
        if longer
        else ""
    )
    n = sum(len(grid.seeds_at(e, plan.seeds)) for _, _, e in grid.cells())
    longer_seeds = grid.seeds_at(longer[0], plan.seeds) if longer else plan.seeds
    if longer and longer_seeds != plan.seeds:
        extra += f" (seed{'s' * (len(longer_seeds) != 1)} {', '.join(map(str, longer_seeds))})"
    each = "a pretraining, an evaluation" + (" and a transfer" if plan.transfer else "")
    return (
        f"# sweep: {len(grid.settings)} settings x {len(plan.seeds)} seeds at {main} "
        f"epoch{'s' * (main != 1)}{extra}: {n} cells ({each} each); "
        f"report: {Path(plan.out) / 'report.md'}"
    )


def _record(stage: Stage) -> dict[str, Any]:
    try:
        return json.loads(stage.marker.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return (
        f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"
    )


def _finished(cell: Cell, outcome: Outcome) -> bool:
    return all(st.name in outcome.ran or st.name in outcome.reused for st in cell.stages)


class Progress:
    """`run_local`'s `before` hook: before each stage, one line saying which cell of how many, how
    many cells finished (every stage of it), failed, and about how long the rest takes. The rates
    come from every stage record of this sweep (this invocation's and earlier ones'): seconds per
    training epoch, seconds per evaluation, seconds per transfer; with `at_once` stages side by
    side (their records already include that they share the CPUs) the wall time is that sum
    divided by `at_once`."""

    def __init__(self, cells: list[Cell], at_once: int = 1) -> None:
        self.cells, self.at_once = cells, max(1, at_once)
        self.where = {st.name: (i, c) for i, c in enumerate(cells) for st in c.stages}

    def _rates(self) -> dict[str, float | None]:
        train_s = train_epochs = 0.0
        seconds: dict[str, list[float]] = {"evaluate": [], "transfer": []}
        for c in self.cells:
            pre = _record(c.pretrain)
            # a resumed run's seconds cover only its last epochs
            if pre and not pre.get("resumed_from"):
                train_s, train_epochs = train_s + pre["seconds"], train_epochs + c.epochs
            for st in c.stages[1:]:
                if record := _record(st):
                    seconds[st.kind].append(record["seconds"])
        return {
            "pretrain": train_s / train_epochs if train_epochs else None,
            **{kind: sum(s) / len(s) if s else None for kind, s in seconds.items()},
        }

    def time_left(self, stage: Stage) -> str:
        rates = self._rates()
        kinds = {st.kind for c in self.cells for st in c.stages}
        if any(rates[kind] is None for kind in kinds):
            return "time left: known once a cell has finished"
        start = self.where[stage.name][0]
        todo = [
            st
            for c in self.cells[start:]
            for st in c.stages
            if st is stage or not st.marker.is_file()
        ]
        seconds = sum(
            rates[st.kind] * (self.where[st.name][1].epochs if st.kind == "pretrain" else 1)
            for st in todo
        )
        per = (
            f"{rates['pretrain']:.1f} s per training epoch, "
            f"{rates['evaluate']:.0f} s per evaluation"
        )
        if "transfer" in kinds:
            per += f", {rates['transfer']:.0f} s per transfer"
        if self.at_once == 1:
            return f"about {_duration(seconds)} left ({per} so far)"
        return (
            f"about {_duration(seconds / self.at_once)} left with {self.at_once} stages side by "
            f"side ({_duration(seconds)} of stage time; {per} so far)"
        )

    def __call__(self, stage: Stage, outcome: Outcome) -> None:
        i, cell = self.where[stage.name]
        done = [c for c in self.cells if _finished(c, outcome)]
        earlier = sum(all(st.name in outcome.reused for st in c.stages) for c in done)
        failed = sum(any(st.name in outcome.failed for st in c.stages) for c in self.cells)
        what = {"pretrain": "pretraining", "evaluate": "evaluation"}.get(stage.kind, stage.kind)
        logger.info(
            "cell %d/%d %s: %s; %d cell%s finished (%d earlier), %d failed; %s",
            i + 1,
            len(self.cells),
            cell.label,
            what,
            len(done),
            "s" * (len(done) != 1),
            earlier,
            failed,
            self.time_left(stage),
        )


def _why_missing(stages: tuple[Stage, ...], outcome: Outcome) -> str:
    for st in stages:
        if st.name in outcome.failed:
            return outcome.failed[st.name]
        if st.name in outcome.submitted:
            return f"stage {st.name} is still queued or running (job {outcome.submitted[st.name]})"
    return "not run"


def cell_revisions(cells: list[Cell]) -> dict[str, list[str]]:
    """{code revision: the stages of `cells` it ran}, from the stage records."""
    out: dict[str, list[str]] = {}
    for c in cells:
        for st in c.stages:
            out.setdefault(_record(st).get("revision", "unrecorded"), []).append(st.name)
    return out


def revisions_section(revisions: dict[str, list[str]]) -> str:
    """The report's lines naming every code revision that contributed (`als_det.revision`)."""
    if len(revisions) == 1:
        return f"Code revision of every cell: `{next(iter(revisions))}`.\n"
    lines = [f"The cells come from {len(revisions)} code revisions:", ""]
    lines += [f"- `{rev}`: {', '.join(stages)}" for rev, stages in revisions.items()]
    return "\n".join(lines) + "\n"


def _add_revisions(out: Path, report: Path, revisions: dict[str, list[str]]) -> None:
    summary = json.loads((out / "sweep.json").read_text())
    atomic_write_json(out / "sweep.json", {**summary, "revisions": revisions})
    text = report.read_text(encoding="utf-8").rstrip("\n")
    atomic_write_text(report, f"{text}\n\n## Code revisions\n\n{revisions_section(revisions)}")


def write_report(plan: Plan, graph: Graph, outcome: Outcome) -> Path | None:
    """The sweep report at OUT/report.md over the cells that finished with their baseline cell;
    every other cell is listed in it as missing, with the reason and its log; its last section
    names the code revisions of the cells (sweep.json: `revisions`)."""
    from als_det.report.sweep import SweepCell
    from als_det.report.sweep_report import write_sweep_report

    grid = plan.sweep
    assert grid is not None
    cells = sweep_cells(plan, graph)
    finished = {
        c.run for c in cells if c.evaluate.name in outcome.ran or c.evaluate.name in outcome.reused
    }
    missing = {
        c.run: _why_missing((c.pretrain, c.evaluate), outcome)
        for c in cells
        if c.run not in finished
    }
    paired = {(c.seed, c.epochs) for c in cells if c.setting == grid.baseline and c.run in finished}
    for c in cells:
        if c.run in finished and (c.seed, c.epochs) not in paired:
            missing[c.run] = (
                f"no finished {grid.baseline} cell of seed "
                f"{c.seed} at {c.epochs} epochs to compare it with"
            )
    shown = [c for c in cells if c.run not in missing]
    transferred = {
        c.run
        for c in shown
        if c.transfer and (c.transfer.name in outcome.ran or c.transfer.name in outcome.reused)
    }
    no_transfer = [c for c in shown if c.transfer and c.run not in transferred]
    if no_transfer:
        logger.warning(
            "%d of %d cells shown have no transfer result: %s",
            len(no_transfer),
            len(shown),
            ", ".join(c.run for c in no_transfer),
        )
    if missing:
        logger.warning(
            "%d of %d cells missing: %s",
            len(missing),
            len(cells),
            "; ".join(f"{run}: {why}" for run, why in missing.items()),
        )
    if not shown:
        logger.error("no report: no cell finished together with its baseline cell")
        return None
    report = write_sweep_report(
        [
            SweepCell(
                c.setting,
                c.seed,
                c.pretrain.outputs[0].parent,
                c.evaluate.outputs[0],
                model=c.run,
                transfer=c.transfer.outputs[0] if c.run in transferred else None,
            )
            for c in shown
        ],
        resolve(plan.out),
        baseline=grid.baseline,
        main_epochs=grid.epochs[0] if any(c.epochs == grid.epochs[0] for c in shown) else None,
        title=plan.name,
        missing=[
            {
                "cell": c.run,
                "setting": c.setting,
                "seed": c.seed,
                "epochs": c.epochs,
                "reason": missing[c.run],
            }
            for c in cells
            if c.run in missing
        ],
        missing_transfer=[
            {
                "cell": c.run,
                "setting": c.setting,
                "seed": c.seed,
                "epochs": c.epochs,
                "reason": _why_missing((c.transfer,), outcome),
            }
            for c in no_transfer
        ],
    )
    revisions = cell_revisions(shown)
    _add_revisions(resolve(plan.out), report, revisions)
    if len(revisions) > 1:
        logger.warning("the report's cells come from %d code revisions", len(revisions))
    logger.info("report over %d of %d cells: %s", len(shown), len(cells), report)
    return report
