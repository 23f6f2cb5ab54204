"""What a parsed experiment plan is (`experiment.plan` reads the YAML file into these): the arms,
evaluation, transfer and detectors, each stage's resources, the sweep grid, and the plan itself."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


class PlanError(ValueError):
    """A plan file that cannot be run; the message names the file and the key."""


@dataclass(frozen=True)
class Resources:
    """What one stage asks of a node (SLURM) or of this machine (local)."""

    nodes: int = 1
    gpus_per_node: int = 0
    procs_per_node: int = 0  # processes per node; 0 = one per GPU (at least one)
    cpus_per_proc: int = 2
    mem_gb: float = 0  # 0 = the cluster's default
    timeout_min: int = 60
    partition: str = ""  # overrides slurm.partition for this stage

    @property
    def processes(self) -> int:
        return self.procs_per_node or max(1, self.gpus_per_node)

    def describe(self) -> str:
        gpus = f" x {self.gpus_per_node} GPUs" if self.gpus_per_node else ", no GPU"
        procs = f", {self.processes} processes/node" if self.processes > 1 else ""
        mem = f", {self.mem_gb:g} GB" if self.mem_gb else ""
        part = f", partition {self.partition}" if self.partition else ""
        cpus = f"{self.cpus_per_proc} CPU{'s' * (self.cpus_per_proc > 1)}/process"
        return (
            f"{self.nodes} node{'s' * (self.nodes > 1)}{gpus}{procs}, "
            f"{cpus}{mem}, {self.timeout_min} min{part}"
        )


@dataclass(frozen=True)
class Arm:
    name: str
    config: str
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Detection:
    name: str
    config: str
    args: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] | None = None  # None: each backbone's own pretraining seed
    resources: Resources = Resources()


@dataclass(frozen=True)
class Evaluation:
    args: list[str] = field(default_factory=list)
    per_run: bool = False  # one evaluation per pretraining run (cells cached apart)
    data: str = ""  # "" = the plan's data root
    resources: Resources = Resources()


@dataclass(frozen=True)
class Transfer:
    """`tools/transfer.py` on each pretraining run: a downstream set and the tool's options."""

    data: str  # the downstream root (train/<class>/*, val/<class>/*)
    args: list[str] = field(default_factory=list)
    resources: Resources = Resources()


@dataclass(frozen=True)
class SweepGrid:
    """Settings (the plan's arms as written) x training lengths; the seeds are the plan's."""

    settings: dict[str, Arm]
    epochs: list[int]  # epochs[0]: every setting's (the report's main length)
    lengths_for: list[str]  # the settings that also run the other lengths
    baseline: str  # the setting every cell is paired with (same seed and length)
    length_seeds: list[int] | None = None  # the seeds of the other lengths (None: every seed)

    def seeds_at(self, epochs: int, seeds: list[int]) -> list[int]:
        """The plan's seeds that run at this length."""
        if epochs == self.epochs[0] or self.length_seeds is None:
            return list(seeds)
        return [s for s in seeds if s in self.length_seeds]

    def cells(self) -> list[tuple[str, str, int]]:
        """(arm name, setting, epochs) of every generated arm, the main length first."""
        return [
            (f"{name}_e{e}", name, e)
            for e in self.epochs
            for name in self.settings
            if e == self.epochs[0] or name in self.lengths_for
        ]


@dataclass(frozen=True)
class Plan:
    name: str
    out: str
    seeds: list[int]
    arms: dict[str, Arm]
    baseline: str
    data_root: str
    generate: bool = False
    data_resources: Resources = Resources()
    pretrain_overrides: dict[str, Any] = field(default_factory=dict)
    pretrain_resources: Resources = Resources()
    evaluate: Evaluation | None = Evaluation()
    transfer: Transfer | None = None
    convert_resources: Resources = Resources()
    detection: list[Detection] = field(default_factory=list)
    compare_resources: Resources = Resources()
    report: str | None = None
    slurm: dict[str, Any] = field(default_factory=dict)
    sweep: SweepGrid | None = None
    source: str = ""

    def run_name(self, arm: str, seed: int) -> str:
        """The folder and model name of one pretraining run (the demo's convention; a sweep's
        runs always name their seed)."""
        return arm if len(self.seeds) == 1 and self.sweep is None else f"{arm}_s{seed}"

    def runs(self) -> list[tuple[str, Arm, int]]:
        """(run name, arm, seed) for every pretraining run, seeds outermost (a sweep: lengths
        outermost, so its main length is complete over every seed first)."""
        if self.sweep is None:
            return [
                (self.run_name(a.name, s), a, s) for s in self.seeds for a in self.arms.values()
            ]
        return [
            (self.run_name(arm, s), self.arms[arm], s)
            for length in self.sweep.epochs
            for s in self.sweep.seeds_at(length, self.seeds)
            for arm, _, e in self.sweep.cells()
            if e == length
        ]

    def with_changes(
        self,
        out: str | None = None,
        seeds: list[int] | None = None,
        slurm: dict[str, Any] | None = None,
    ) -> Plan:
        """The command line's `--out` / `--seeds` / `--partition` and `--account` (`slurm`, over
        the plan's `slurm:` section) applied."""
        return replace(
            self,
            out=out or self.out,
            seeds=list(seeds) if seeds else self.seeds,
            slurm={**self.slurm, **(slurm or {})},
        )
