"""Running a stage graph: here (`local`: side by side within this machine's CPUs), or as submitit
jobs (`slurm`, `submitit-local`).

Both skip finished stages (by fingerprint), resume interrupted trainings, and let a failure stop
only the stages that depend on it: independent stages go on, and every failure is reported at the
end with its log. On SLURM every stage is submitted at once with `afterok` dependencies (a failed
job's dependants are cancelled by the scheduler, `kill-on-invalid-dep`); submitit's local
executor has no dependencies, so there a stage is submitted when the stages it needs are done.
A second invocation on a half-finished experiment runs only what is left, and on SLURM follows
the jobs an earlier invocation submitted that are still queued or running.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from als_det.experiment.console import Console
from als_det.experiment.stages import (
    Stage,
    StageFailed,
    StageJob,
    is_done,
    recorded_seconds,
    run_stage,
)
from als_det.experiment.warm_start import WarmProcess
from als_det.io import atomic_write_json

logger = logging.getLogger(__name__)

ACTIVE_SLURM_STATES = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "CONFIGURING",
    "COMPLETING",
    "RESIZING",
    "SUSPENDED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
}


@dataclass
class Outcome:
    """What became of each stage in one invocation."""

    ran: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # stage -> message naming its log
    blocked: dict[str, str] = field(default_factory=dict)  # stage -> the failed stage it needed
    submitted: dict[str, str] = field(default_factory=dict)  # stage -> job id (still running)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked and not self.submitted

    def cause(self, deps: Sequence[str]) -> str | None:
        for d in deps:
            if d in self.failed:
                return d
            if d in self.blocked:
                return self.blocked[d]
        return None


def _reason(name: str, error: Exception | None) -> str:
    """The job's StageFailed message, else the last line of the traceback submitit recorded."""
    lines = [ln.strip() for ln in str(error or "").splitlines() if ln.strip()]
    for line in reversed(lines):
        if "StageFailed: " in line:
            return line.split("StageFailed: ", 1)[1]
    trace = [ln for ln in lines if not ln.startswith(("-", "You can check"))]
    return f"stage {name} failed: {trace[-1] if trace else 'the job ended without a result'}"


def cpu_budget() -> int:
    """The CPUs this process may use (its affinity: taskset, a SLURM allocation)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def local_threads(st: Stage, cpus: int, threads: int | None) -> int:
    """Threads per process of a stage run here: `threads`, else its resources' cpus_per_proc, at
    most what the CPU budget gives each of its processes. Fixed before it starts, never from what
    runs beside it: a stage's numbers do not depend on the others."""
    wanted = threads or st.resources.cpus_per_proc
    return max(1, min(wanted, cpus // st.resources.processes))


class _Children:
    """The running stages' processes, to stop on Ctrl-C (one that starts later is stopped at
    once)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.procs: set[subprocess.Popen | WarmProcess] = set()
        self.stopping = False

    def started(self, proc: subprocess.Popen | WarmProcess) -> None:
        with self.lock:
            self.procs.add(proc)
            if self.stopping:
                proc.terminate()

    def stop(self, grace_s: float = 30.0) -> None:
        """Terminate every running one; kill what is still there after `grace_s`."""
        with self.lock:
            self.stopping = True
            procs = [p for p in self.procs if p.poll() is None]
        for proc in procs:
            proc.terminate()
        deadline = time.monotonic() + grace_s
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()


def run_local(
    stages: Sequence[Stage],
    before: Callable[[Stage, Outcome], None] | None = None,
    cpus: int | None = None,
    threads: int | None = None,
    console: Console | None = None,
) -> Outcome:
    """The stages on this machine, side by side within a budget of `cpus` (default: the CPUs
    this process may use): a stage whose dependencies are done starts, in the stages' order,
    while the threads of the running ones (threads per process x processes, `local_threads`)
    leave room for its own; one that needs more than the budget runs alone, and a stage that
    asks for GPUs never runs beside another that does. Each stage's output
    goes to its log and, a line at a time with its name in front, to `console`.
    `before(stage, outcome so far)` is called before each stage that runs (a sweep's progress
    line). Ctrl-C stops every running stage; the next invocation resumes them."""
    budget = cpus or cpu_budget()
    logger.info(
        "stages run side by side within %d CPUs, with %s per process",
        budget,
        f"{threads} thread(s)" if threads else "their resources' cpus_per_proc threads",
    )
    console = console or Console([st.name for st in stages])
    outcome, children = Outcome(), _Children()
    waiting, names = list(stages), {st.name for st in stages}
    running: dict[Future, tuple[Stage, int]] = {}
    finished: set[str] = set()
    not_done: set[str] = set()  # checked once (their fingerprints hash checkpoints)

    def run(st: Stage) -> None:
        try:
            run_stage(st, output=console.open(st.name), started=children.started, warm=True)
        finally:
            console.close(st.name)

    def start_what_can_start() -> None:
        used = sum(cost for _, cost in running.values())
        for st in list(waiting):
            cause = outcome.cause(st.deps)
            if cause:
                waiting.remove(st)
                outcome.blocked[st.name] = cause
                logger.info(f"{st.name}: not run, it needs {cause}, which failed")
            elif all(d in finished or d not in names for d in st.deps):
                if st.name not in not_done:
                    if is_done(st):
                        waiting.remove(st)
                        finished.add(st.name)
                        outcome.reused.append(st.name)
                        logger.info(f"{st.name}: done earlier, reused")
                        continue
                    not_done.add(st.name)
                staged = dataclasses.replace(st, threads=local_threads(st, budget, threads))
                cost = staged.threads * st.resources.processes
                if running and used + cost > budget:
                    return  # in order: a stage that needs more CPUs is not overtaken
                if st.resources.gpus_per_node and any(
                    r.resources.gpus_per_node for r, _ in running.values()
                ):
                    return  # each GPU stage takes this machine's GPUs from device 0: one at a time
                if staged.threads < (threads or st.resources.cpus_per_proc):
                    logger.info(
                        f"{st.name}: {staged.threads} thread(s) per process, all that fit "
                        f"{st.resources.processes} process(es) in {budget} CPUs"
                    )
                waiting.remove(st)
                if before is not None:
                    before(staged, outcome)
                running[pool.submit(run, staged)] = (staged, cost)
                used += cost

    handlers = logging.getLogger("als_det").handlers
    for handler in handlers:  # a log record takes the progress bar off the terminal first
        handler.addFilter(console.clear)
    pool = ThreadPoolExecutor(max_workers=max(1, len(stages)), thread_name_prefix="stage")
    try:
        start_what_can_start()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                st, _ = running.pop(future)
                try:
                    future.result()
                    finished.add(st.name)
                    outcome.ran.append(st.name)
                except StageFailed as err:
                    outcome.failed[st.name] = str(err)
                    logger.error(f"FAILED: {err}")
            start_what_can_start()
    except BaseException:
        children.stop()
        raise
    finally:
        pool.shutdown(wait=True)
        for handler in handlers:
            handler.removeFilter(console.clear)
    if waiting:
        raise ValueError(f"stages listed before the stages they need: {[s.name for s in waiting]}")
    return outcome


def make_executor(folder: Path, cluster: str, slurm: dict[str, Any]) -> submitit.AutoExecutor:
    return submitit.AutoExecutor(
        folder=folder,
        cluster=cluster,
        slurm_max_num_timeout=int(slurm.get("max_num_timeout") or 10),
    )


def _parameters(
    st: Stage, plan_name: str, slurm: dict[str, Any], after: Sequence[str]
) -> dict[str, Any]:
    """One task per node; the stage's command starts the node's processes (torchrun, detectron2)."""
    res = st.resources
    params: dict[str, Any] = dict(
        name=f"{plan_name}.{st.name}",
        nodes=res.nodes,
        tasks_per_node=1,
        gpus_per_node=res.gpus_per_node,
        cpus_per_task=res.cpus_per_proc * res.processes,
        timeout_min=res.timeout_min,
        stderr_to_stdout=True,
        slurm_signal_delay_s=int(slurm.get("signal_delay_s") or 120),
    )
    if res.mem_gb:
        params["mem_gb"] = res.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        value = (res.partition if key == "partition" and res.partition else None) or slurm.get(key)
        if value:
            params[f"slurm_{key}"] = value
    extra = dict(slurm.get("additional_parameters") or {})
    if after:
        extra.update({"dependency": "afterok:" + ":".join(after), "kill-on-invalid-dep": "yes"})
    if extra:
        params["slurm_additional_parameters"] = extra
    return params


def sbatch_flags(
    st: Stage, plan_name: str, slurm: dict[str, Any], after: Sequence[str], folder: Path
) -> list[str]:
    """The sbatch options submitit writes for this stage's `_parameters`: the AutoExecutor's SLURM
    names, then submitit's own sbatch writer (what `--dry-run --launcher slurm` shows)."""
    from submitit.slurm import slurm as submitit_slurm

    names = submitit.SlurmExecutor._equivalence_dict()
    options = {
        key.removeprefix("slurm_") if key.startswith("slurm_") else names.get(key, key): value
        for key, value in _parameters(st, plan_name, slurm, after).items()
    }
    if "mem" in options:
        options["mem"] = submitit_slurm._convert_mem(options["mem"])
    script = submitit_slurm._make_sbatch_string(command="", folder=folder, **options)
    return [ln.removeprefix("#SBATCH ") for ln in script.splitlines() if ln.startswith("#SBATCH")]


class SubmititLauncher:
    """Stages as submitit jobs on SLURM (`cluster="slurm"`) or this machine (`"local"`)."""

    def __init__(
        self,
        stages: Sequence[Stage],
        folder: Path,
        cluster: str,
        plan_name: str,
        slurm: dict[str, Any],
        poll_s: float = 5.0,
        max_jobs: int = 1,
    ) -> None:
        self.stages = {st.name: st for st in stages}
        self.order = [st.name for st in stages]
        self.folder, self.cluster, self.plan_name, self.slurm = folder, cluster, plan_name, slurm
        self.executor = make_executor(folder, cluster, slurm)
        self.poll_s = poll_s
        self.max_jobs = max_jobs  # submitit-local: jobs at once on this machine
        self.jobs: dict[str, submitit.Job] = {}
        self.outcome = Outcome()
        self.done: set[str] = set()

    def _job_record(self, st: Stage) -> Path:
        return st.state_dir / f"{st.name}.job.json"

    def _reattach(self, st: Stage) -> submitit.Job | None:
        """An earlier invocation's SLURM job for this stage that is still queued or running."""
        record = self._job_record(st)
        if self.cluster != "slurm" or not record.is_file():
            return None
        job = submitit.SlurmJob(folder=self.folder, job_id=json.loads(record.read_text())["job_id"])
        return job if job.state in ACTIVE_SLURM_STATES else None

    def _submit(self, st: Stage, after: Sequence[str]) -> None:
        job = self._reattach(st)
        if job is not None:
            logger.info(
                f"{st.name}: job {job.job_id} from an earlier "
                f"invocation is {job.state}; following it"
            )
        else:
            self.executor.update_parameters(**_parameters(st, self.plan_name, self.slurm, after))
            job = self.executor.submit(StageJob(st))
            atomic_write_json(
                self._job_record(st),
                {"job_id": job.job_id, "cluster": self.cluster, "submitted": time.time()},
            )
            logger.info(
                f"{st.name}: submitted job {job.job_id}"
                + (f" (after {', '.join(after)})" if after else "")
            )
        self.jobs[st.name] = job

    def _schedule(self, scheduler_dependencies: bool) -> None:
        """Decide every stage that can be decided now: blocked, reused, or submitted."""
        for name in self.order:
            st = self.stages[name]
            if (
                name in self.jobs
                or name in self.done
                or name in self.outcome.blocked
                or name in self.outcome.failed
            ):
                continue
            cause = self.outcome.cause(st.deps)
            if cause:
                self.outcome.blocked[name] = cause
                logger.info(f"{name}: not run, it needs {cause}, which failed")
                continue
            pending = [d for d in st.deps if d not in self.done]
            if pending and not (scheduler_dependencies and all(d in self.jobs for d in pending)):
                continue
            if not scheduler_dependencies and len(self.jobs) >= self.max_jobs:
                return
            if not pending and is_done(st):
                self.done.add(name)
                self.outcome.reused.append(name)
                logger.info(f"{name}: done earlier, reused")
                continue
            self._submit(st, [self.jobs[d].job_id for d in pending])

    def _collect(self) -> None:
        for name, job in list(self.jobs.items()):
            if not job.done():
                continue
            del self.jobs[name]
            st = self.stages[name]
            error = job.exception()
            if error is None and is_done(st):
                self.done.add(name)
                self.outcome.ran.append(name)
                logger.info(f"{name}: finished (job {job.job_id}, {recorded_seconds(st):.0f} s)")
                continue
            self.outcome.failed[name] = (
                f"{_reason(name, error)} (job {job.job_id}, job log: {job.paths.stdout})"
            )
            logger.error(f"FAILED: {self.outcome.failed[name]}")
            self._cancel_dependants()

    def _cancel_dependants(self) -> None:
        """Queued jobs that needed a failed stage (SLURM cancels them too: kill-on-invalid-dep)."""
        for other in [n for n in self.order if n in self.jobs]:
            cause = self.outcome.cause(self.stages[other].deps)
            if cause:
                self.jobs.pop(other).cancel(check=False)
                self.outcome.blocked[other] = cause
                logger.info(f"{other}: cancelled, it needs {cause}, which failed")

    def run(self, wait: bool = True) -> Outcome:
        scheduler_dependencies = self.cluster == "slurm"
        try:
            while True:
                self._schedule(scheduler_dependencies)
                if not wait or not self.jobs:
                    break
                time.sleep(self.poll_s)
                self._collect()
        except BaseException:
            if self.cluster != "slurm":  # local jobs end with the command that started them
                for job in self.jobs.values():
                    job.cancel(check=False)
            raise
        self.outcome.submitted = {name: job.job_id for name, job in self.jobs.items()}
        return self.outcome
