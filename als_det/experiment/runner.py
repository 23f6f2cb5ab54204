"""`tools/run_experiment.py`: a plan -> its stage graph -> a launcher -> a summary (and the demo
or sweep report when the plan asks for one)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import submitit

from als_det.experiment import sweep
from als_det.experiment.graph import Graph, build_graph
from als_det.experiment.launchers import Outcome, SubmititLauncher, run_local
from als_det.experiment.plan import Plan
from als_det.experiment.stages import describe, recorded_seconds, resolve
from als_det.output_dir import check_output_folder
from als_det.run_lock import output_lock

LAUNCHERS = ("local", "slurm", "submitit-local")

logger = logging.getLogger(__name__)


def dry_run(plan: Plan) -> str:
    """Every command in dependency order with its resources; nothing runs."""
    graph = build_graph(plan)
    head = (
        f"# plan {plan.name} ({plan.source}): {len(graph.stages)} "
        f"stages, run from the repository root; output under {plan.out}"
    )
    if plan.sweep is not None:
        head += "\n" + sweep.describe_grid(plan)
    return head + "\n" + describe(graph.stages)


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


def _demo_report(plan: Plan, graph: Graph, total_s: float) -> Path:
    from als_det.report.demo import write_demo_report

    timings = {st.name: recorded_seconds(st) for st in graph.stages}
    timings["total (this run)"] = total_s
    det = next(iter(graph.detection))
    report, tables = write_demo_report(
        resolve(plan.out),
        plan,
        graph.checkpoints,
        graph.evaluation,
        graph.detection[det],
        graph.compare[det],
        timings,
    )
    logger.info("\n%s", tables)
    return report


def run_experiment(plan: Plan, launcher: str = "local", wait: bool = True) -> Outcome:
    """Run (or submit) every stage that is not done; print what became of each."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {LAUNCHERS}, got {launcher!r}")
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
    out = check_output_folder(resolve(plan.out), "out")
    with output_lock(out):  # one runner per output folder
        (out / "logs").mkdir(parents=True, exist_ok=True)
        if launcher == "local":
            progress = (
                sweep.Progress(sweep.sweep_cells(plan, graph)) if plan.sweep is not None else None
            )
            outcome = run_local(graph.stages, before=progress)
        else:
            cluster = "slurm" if launcher == "slurm" else "local"
            outcome = SubmititLauncher(
                graph.stages,
                out / ".submitit",
                cluster,
                plan.name,
                plan.slurm,
                poll_s=10.0 if cluster == "slurm" else 0.5,
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
