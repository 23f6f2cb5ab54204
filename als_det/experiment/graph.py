"""A plan -> its stages in dependency order:

    data (if generated) -> pretrain x arms x seeds -> evaluate (one over all runs, or one per run)
                                                   -> transfer (one per run, if the plan has one)
                        -> convert -> finetune x detectors [x seeds] -> compare per detector

(with per-run evaluations, each run's evaluation and transfer are listed right after its
pretraining: a sweep's cells finish one by one).

Everything lands under the plan's `out`: `pretrain/<run>/`, `evaluation/[<run>/]`,
`transfer/<run>/`, `pretrained/<run>.pkl`, `detection/<detector>/<run>/`, `compare/<detector>/`,
one log per stage in `logs/`, the stage records in `.stages/`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from als_det.experiment import commands
from als_det.experiment.plan import Plan
from als_det.experiment.stages import Stage, config_chain, resolve


@dataclass
class Graph:
    stages: list[Stage]
    checkpoints: dict[str, Path] = field(default_factory=dict)  # run -> last.pth
    evaluation: Path | None = None
    transfer: dict[str, Path] = field(default_factory=dict)  # run -> transfer.json
    detection: dict[str, list[Path]] = field(default_factory=dict)  # detector -> run folders
    compare: dict[str, Path] = field(default_factory=dict)  # detector -> compare folder


def baseline_strategy(plan: Plan) -> str:
    """The label strategy of the baseline arm: what `tools/compare.py` groups runs by."""
    from als_det.config import load_config

    arm = plan.arms[plan.baseline]
    cfg = load_config(
        str(resolve(arm.config)),
        commands.override_args({**plan.pretrain_overrides, **arm.overrides}),
    )
    return str(cfg.LABELS.STRATEGY)


class _Builder:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.out = Path(plan.out)
        self.data_root = plan.data_root.replace("{out}", plan.out)
        self.state_dir = resolve(plan.out) / ".stages"
        self.graph = Graph(stages=[])

    def path(self, *parts: str) -> str:
        """A path under OUT as the commands spell it (relative when OUT is)."""
        return str(self.out.joinpath(*parts))

    def fill(self, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return value.replace("{data}", self.data_root).replace("{out}", str(self.out))

    def fill_all(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self.fill(v) for k, v in overrides.items()}

    def add(self, name: str, kind: str, command: commands.Command, resources, **kw: Any) -> str:
        self.graph.stages.append(
            Stage(
                name=name,
                kind=kind,
                command=command,
                resources=resources,
                state_dir=self.state_dir,
                log=resolve(self.path("logs", f"{name}.log")),
                **kw,
            )
        )
        return name

    def data(self) -> tuple[str, ...]:
        plan = self.plan
        if not plan.generate:
            return ()
        first = next(iter(plan.arms.values()))
        overrides = {**self.fill_all(plan.pretrain_overrides), "DATA.ROOT": self.data_root}
        return (
            self.add(
                "data",
                "data",
                commands.generate_command(first.config, overrides),
                plan.data_resources,
                inputs=tuple(config_chain(first.config)),
                outputs=(resolve(self.data_root) / "generation.json",),
            ),
        )

    def pretrain(self, deps: tuple[str, ...]) -> dict[str, str]:
        plan, names = self.plan, {}
        for run, arm, seed in plan.runs():
            run_dir = self.path("pretrain", run)
            overrides = {
                **self.fill_all(plan.pretrain_overrides),
                **self.fill_all(arm.overrides),
                "OUTPUT_DIR": run_dir,
                "SEED": seed,
                "DATA.ROOT": self.data_root,
            }
            last = resolve(run_dir) / "last.pth"
            names[run] = self.add(
                f"pretrain_{run}",
                "pretrain",
                commands.pretrain_command(arm.config, overrides),
                plan.pretrain_resources,
                deps=deps,
                inputs=tuple(config_chain(arm.config)),
                outputs=(last, resolve(run_dir) / "metrics.jsonl"),
                owns=resolve(run_dir),
                resume_command=commands.pretrain_command(arm.config, overrides, resume=True),
                resume_from=last,
            )
            self.graph.checkpoints[run] = last
        return names

    def evaluate(self, pretrained: dict[str, str]) -> None:
        ev, plan = self.plan.evaluate, self.plan
        if ev is None:
            return
        data = self.fill(ev.data) or self.data_root
        args = [self.fill(a) for a in ev.args]
        groups = {run: [run] for run in pretrained} if ev.per_run else {"": list(pretrained)}
        for label, runs in groups.items():
            out = self.path("evaluation", *([label] if label else []))
            ckpts = {r: str(self.out / "pretrain" / r / "last.pth") for r in runs}
            baseline = None if ev.per_run else plan.run_name(plan.baseline, plan.seeds[0])
            self.add(
                f"evaluate_{label}" if label else "evaluate",
                "evaluate",
                commands.evaluate_command(ckpts, data, out, baseline, args),
                ev.resources,
                deps=tuple(pretrained[r] for r in runs),
                inputs=tuple(self.graph.checkpoints[r] for r in runs),
                outputs=(resolve(out) / "metrics.json",),
                owns=resolve(out),
            )
        self.graph.evaluation = resolve(self.path("evaluation"))

    def transfer(self, pretrained: dict[str, str]) -> None:
        """One `tools/transfer.py` per run; it resumes from its own cache (OUT/cache/), which an
        interrupted run of the same command leaves in place."""
        tr = self.plan.transfer
        if tr is None:
            return
        data = self.fill(tr.data)
        args = [self.fill(a) for a in tr.args]
        for run in pretrained:
            out = self.path("transfer", run)
            ckpt = str(self.out / "pretrain" / run / "last.pth")
            self.add(
                f"transfer_{run}",
                "transfer",
                commands.transfer_command({run: ckpt}, data, out, None, args),
                tr.resources,
                deps=(pretrained[run],),
                inputs=(self.graph.checkpoints[run],),
                outputs=(resolve(out) / "transfer.json",),
                owns=resolve(out),
            )
            self.graph.transfer[run] = resolve(out) / "transfer.json"

    def detection(self, pretrained: dict[str, str]) -> None:
        plan = self.plan
        if not plan.detection:
            return
        converted = {}
        for run, _, seed in plan.runs():
            pkl = self.path("pretrained", f"{run}.pkl")
            converted[run] = (
                self.add(
                    f"convert_{run}",
                    "convert",
                    commands.convert_command(str(self.out / "pretrain" / run / "last.pth"), pkl),
                    plan.convert_resources,
                    deps=(pretrained[run],),
                    inputs=(self.graph.checkpoints[run],),
                    outputs=(resolve(pkl),),
                    owns=resolve(pkl),
                ),
                pkl,
                seed,
            )
        strategy = baseline_strategy(plan)
        for det in plan.detection:
            args = [self.fill(a) for a in det.args]
            runs, stage_names = [], []
            for run, (convert, pkl, pretrain_seed) in converted.items():
                for seed in det.seeds or [pretrain_seed]:
                    name = run if det.seeds is None else f"{run}_d{seed}"
                    run_dir = self.path("detection", det.name, name)
                    overrides = {
                        **self.fill_all(det.overrides),
                        "MODEL.WEIGHTS": pkl,
                        "OUTPUT_DIR": run_dir,
                        "SEED": seed,
                    }
                    stage_names.append(
                        self.add(
                            f"finetune_{det.name}_{name}",
                            "finetune",
                            commands.finetune_command(det.config, args, overrides),
                            det.resources,
                            deps=(convert,),
                            inputs=(resolve(pkl), *config_chain(det.config)),
                            outputs=(resolve(run_dir) / "results.json",),
                            owns=resolve(run_dir),
                            resume_command=commands.finetune_command(
                                det.config, args, overrides, resume=True
                            ),
                            resume_from=resolve(run_dir) / "last_checkpoint",
                        )
                    )
                    runs.append(run_dir)
            out = self.path("compare", det.name)
            self.add(
                f"compare_{det.name}",
                "compare",
                commands.compare_command(runs, strategy, out),
                plan.compare_resources,
                deps=tuple(stage_names),
                inputs=tuple(resolve(r) / "results.json" for r in runs),
                outputs=(resolve(out) / "comparison.json",),
                owns=resolve(out),
            )
            self.graph.detection[det.name] = [resolve(r) for r in runs]
            self.graph.compare[det.name] = resolve(out)


def _per_run_after_their_runs(stages: list[Stage], kinds: set[str]) -> list[Stage]:
    """Each per-run stage of `kinds` right after its pretraining (evaluation first): one after the
    other (the local launcher), every run is a finished cell, trained, evaluated and transferred,
    before the next one starts."""
    follow: dict[str, list[Stage]] = {}
    for st in stages:
        if st.kind in kinds:
            follow.setdefault(st.deps[0], []).append(st)
    ordered = []
    for st in stages:
        if st.kind not in kinds:
            ordered += [st, *follow.get(st.name, [])]
    return ordered


def build_graph(plan: Plan) -> Graph:
    """Every stage of `plan`, each after the stages it depends on."""
    b = _Builder(plan)
    pretrained = b.pretrain(b.data())
    b.evaluate(pretrained)
    b.transfer(pretrained)
    b.detection(pretrained)
    if plan.evaluate is not None and plan.evaluate.per_run:
        b.graph.stages = _per_run_after_their_runs(b.graph.stages, {"evaluate", "transfer"})
    return b.graph
