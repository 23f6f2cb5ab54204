"""`tools/run_experiment.py`: a plan -> its stage graph -> a launcher -> a summary (and the demo
or sweep report when the plan asks for one)."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import submitit

from als_det.experiment import preflight, sweep
from als_det.experiment.estimate import RECORDED_GPU_CHECK, estimate_lines
from als_det.experiment.graph import Graph, build_graph
from als_det.experiment.launchers import (
    Outcome,
    SubmititLauncher,
    cpu_budget,
    local_threads,
    run_local,
    sbatch_flags,
)
from als_det.experiment.plan import Plan
from als_det.experiment.stages import describe, other_revisions, recorded_seconds, resolve
from als_det.output_dir import check_output_folder
from als_det.revision import code_revision
from als_det.run_lock import output_lock

LAUNCHERS = ("local", "slurm", "submitit-local")
BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "out"

logger = logging.getLogger(__name__)


def dry_run(
    plan: Plan,
    launcher: str = "local",
    bench_dir: Path = BENCH_DIR,
    recorded: Path | None = RECORDED_GPU_CHECK,
) -> str:
    """Every command in dependency order with its resources, each stage's estimated time and
    GPU-hours (rates measured under `bench_dir` where there are some, else in the project's
    `recorded` GPU check), then the pre-flight check; nothing runs."""
    graph = build_graph(plan)
    head = (
        f"# plan {plan.name} ({plan.source}): {len(graph.stages)} "
        f"stages, run from the repository root; output under {plan.out}"
    )
    if plan.sweep is not None:
        head += "\n" + sweep.describe_grid(plan)
    check = preflight.listing(preflight.check(plan, graph, launcher), "#")
    jobs = "\n" + slurm_jobs(plan, graph) if launcher == "slurm" else ""
    estimate = "\n" + estimate_lines(graph.stages, bench_dir, recorded)
    return (
        head + "\n" + describe(graph.stages) + jobs + estimate + "\n# pre-flight check:\n" + check
    )


def slurm_jobs(plan: Plan, graph: Graph) -> str:
    """What `--launcher slurm` submits, one job per stage: the sbatch options of the submission
    itself (`launchers.sbatch_flags`), those of every job once; afterok lists the stages whose job
    ids it will hold."""
    folder = resolve(plan.out) / ".submitit"
    flags = {
        st.name: sbatch_flags(st, plan.name, plan.slurm, st.deps, folder) for st in graph.stages
    }
    common = [f for f in next(iter(flags.values())) if all(f in fl for fl in flags.values())]
    lines = [f"# SLURM: one sbatch job per stage; every job: {' '.join(common)}"]
    for i, (name, fl) in enumerate(flags.items(), 1):
        lines.append(f"# {i}. {name}: {' '.join(f for f in fl if f not in common)}")
    return "\n".join(lines)


def summary(outcome: Outcome) -> str:
    lines = [f"{len(outcome.ran)} stage(s) ran, {len(outcome.reused)} reused"]
    for name, message in outcome.failed.items():
        stopped = [s for s, cause in outcome.blocked.items() if cause == name]
        lines.append(f"FAILED {message}")
        if stopped:
            lines.append(f"  not run because {name} failed: {', '.join(stopped)}")
    if outcome.submitted:
        lines.append(
            "still queued or running: "
            + ", ".join(f"{s} (job {j})" for s, j in outcome.submitted.items())
            + "; run the same command again to follow them"
        )
    if not outcome.ok and outcome.failed:
        lines.append("Fix the failure and run the same command again: finished stages are reused.")
    return "\n".join(lines)


def _demo_report(plan: Plan, graph: Graph, wall_s: float) -> Path:
    from als_det.report.demo import write_demo_report

    timings = {st.name: recorded_seconds(st) for st in graph.stages}
    det = next(iter(graph.detection))
    report, tables = write_demo_report(
        resolve(plan.out),
        plan,
        graph.checkpoints,
        graph.evaluation,
        graph.detection[det],
        graph.compare[det],
        timings,
        wall_s,
    )
    logger.info("\n%s", tables)
    return report


def check_revisions(graph: Graph, rerun: bool) -> dict[str, str]:
    """The finished stages another code revision ran ({stage: its revision}), named in a
    warning; with `rerun` they are marked to run again (in `graph`)."""
    others = other_revisions(graph.stages)
    if not others:
        return others
    listing = "; ".join(f"{name} ({revision})" for name, revision in others.items())
    if rerun:
        logger.warning(
            "%d finished stage(s) of another code revision run again under %s: %s",
            len(others),
            code_revision(),
            listing,
        )
        graph.stages = [
            dataclasses.replace(st, stale_revision=others[st.name]) if st.name in others else st
            for st in graph.stages
        ]
    else:
        logger.warning(
            "%d finished stage(s) reused from another code revision than this one (%s): %s; "
            "--rerun-other-revisions runs them again",
            len(others),
            code_revision(),
            listing,
        )
    return others


def env_threads() -> int | None:
    """$OMP_NUM_THREADS, when this environment sets it."""
    value = os.environ.get("OMP_NUM_THREADS")
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(
            f"OMP_NUM_THREADS={value!r}: the local launcher needs a positive integer (threads per "
            "process of every stage), or unset it to use each stage's resources.cpus_per_proc"
        )
    return int(value)


def run_experiment(
    plan: Plan,
    launcher: str = "local",
    wait: bool = True,
    check: bool = True,
    rerun_other_revisions: bool = False,
    cpus: int | None = None,
    threads: int | None = None,
) -> Outcome:
    """Run (or submit) every stage that is not done; print what became of each. `check`: the
    pre-flight check first (`als_det.experiment.preflight`), which refuses on a problem. Finished
    stages of another code revision are reused with a warning, or run again
    (`rerun_other_revisions`). The local launcher runs stages side by side within `cpus`, each
    with `threads` per process (`launchers.run_local`; default: $OMP_NUM_THREADS when set, else
    each stage's resources.cpus_per_proc)."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {LAUNCHERS}, got {launcher!r}")
    if launcher != "local" and (cpus or threads):
        raise ValueError("--cpus and --threads are the local launcher's (--launcher local)")
    if launcher == "local":
        threads = threads or env_threads()
    start = time.perf_counter()
    graph = build_graph(plan)
    several = [st.name for st in graph.stages if st.resources.nodes > 1]
    if several and launcher != "slurm":
        raise ValueError(
            f"the {launcher} launcher runs on this one machine, but {', '.join(several)} "
            "ask for several nodes: use --launcher slurm or set nodes: 1 in the plan"
        )
    if launcher == "slurm" and submitit.SlurmExecutor.affinity() <= 0:
        raise ValueError(
            "--launcher slurm needs SLURM, and there is no `srun` on PATH here: run it on the "
            "cluster's login node, or use --launcher local or submitit-local on this machine"
        )
    if check:
        preflight.require_ready(plan, graph, launcher)
    out = check_output_folder(resolve(plan.out), "out")
    with output_lock(out):  # one runner per output folder
        (out / "logs").mkdir(parents=True, exist_ok=True)
        check_revisions(graph, rerun_other_revisions)
        if launcher == "local":
            progress = None
            if plan.sweep is not None:
                budget = cpus or cpu_budget()
                cells = sweep.sweep_cells(plan, graph)
                widest = max(
                    local_threads(c.pretrain, budget, threads) * c.pretrain.resources.processes
                    for c in cells
                )
                progress = sweep.Progress(cells, at_once=budget // widest)
            outcome = run_local(graph.stages, before=progress, cpus=cpus, threads=threads)
        else:
            cluster = "slurm" if launcher == "slurm" else "local"
            outcome = SubmititLauncher(
                graph.stages,
                out / ".submitit",
                cluster,
                plan.name,
                plan.slurm,
                poll_s=10.0 if cluster == "slurm" else 0.1,  # local: a job ends in a process here
            ).run(wait=wait)
        for line in summary(outcome).splitlines():
            (logger.error if line.startswith("FAILED") else logger.info)(line)
        if plan.report == "sweep":  # also after failures: the report covers the cells that finished
            sweep.write_report(plan, graph, outcome)
        if outcome.ok and plan.report == "demo":
            report = _demo_report(plan, graph, time.perf_counter() - start)
            logger.info(
                "finished in %.1f min; report: %s", (time.perf_counter() - start) / 60, report
            )
        return outcome
