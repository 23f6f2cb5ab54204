"""One stage of an experiment: its command, what it reads and writes, and how it runs and resumes.

A stage that finished is recorded in `OUT/.stages/<name>.json` with a fingerprint of its command
and input files (configs with their `_BASE_` chain, checkpoints); it counts as done while that
fingerprint still matches and its outputs exist. A stage that started records the fingerprint in
`<name>.started.json`; when it is run again with the same command and its checkpoint
(`last.pth`, detectron2's `last_checkpoint`) exists, it resumes instead of starting afresh.

Both records name the code revision (`als_det.revision`) that ran the stage. A finished stage of
another revision is still reused (the runner warns, naming it) unless the stage is marked
with its revision as `stale_revision`: then it runs afresh, its earlier output set aside.

`run_stage` runs a stage here (the local launcher calls it from one thread per running stage,
with the stage's threads per process in its environment, recorded in both records); `StageJob`
runs it as a submitit job: on SLURM preemption or time-out submitit calls its `checkpoint()`,
which requeues the same stage: the requeued job finds the checkpoint and resumes from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any, BinaryIO

import submitit

from als_det.config_files import base_paths, read_yaml_mapping
from als_det.experiment import warm_start
from als_det.experiment.commands import Command, Node, display, launch_argv
from als_det.experiment.plan import REPO, Resources
from als_det.io import atomic_write_json, sha256_file
from als_det.logger import setup_logging
from als_det.revision import code_revision

logger = logging.getLogger(__name__)


class StageFailed(RuntimeError):
    """A stage's command failed or did not write its outputs; the message names its log."""


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str
    command: Command
    resources: Resources
    state_dir: Path  # OUT/.stages
    log: Path
    deps: tuple[str, ...] = ()
    inputs: tuple[Path, ...] = ()  # files whose content decides the result
    outputs: tuple[Path, ...] = ()  # must exist after a successful run
    owns: Path | None = None  # the folder or file this stage writes (set aside, never mixed)
    resume_command: Command | None = None
    resume_from: Path | None = None  # present after an interrupted run: resume instead of restart
    stale_revision: str | None = None  # a finished record of this code revision is run again
    # Threads per process (OMP_NUM_THREADS in the command's environment), set by the local
    # launcher; None: the environment's. Not in the fingerprint: it is how a stage runs, like its
    # launcher, though on the CPU it changes the last digits of a training's numbers.
    threads: int | None = None

    @property
    def marker(self) -> Path:
        return self.state_dir / f"{self.name}.json"

    @property
    def started_marker(self) -> Path:
        return self.state_dir / f"{self.name}.started.json"


def resolve(path: str | Path) -> Path:
    """A plan path as the stages see it: relative paths are relative to the repository root."""
    path = Path(path)
    return path if path.is_absolute() else REPO / path


def config_chain(config: str | Path) -> list[Path]:
    """A config file and every local file it inherits through `_BASE_` (model-zoo bases excluded:
    they are versioned with detectron2), each read safely (a ConfigError names a bad one)."""
    chain, todo = [], [resolve(config)]
    while todo:
        path = todo.pop()
        if path in chain:
            continue
        chain.append(path)
        if path.is_file():
            bases = base_paths(read_yaml_mapping(path), str(path))
            todo += [Path(b) for b in bases if "model_zoo://" not in b]
    return chain


def fingerprint(stage: Stage) -> str:
    h = hashlib.sha256(json.dumps(stage.command.identity()).encode())
    for path in stage.inputs:
        h.update(str(path.relative_to(REPO) if path.is_relative_to(REPO) else path).encode())
        h.update(sha256_file(path).encode() if path.is_file() else b"<missing>")
    return h.hexdigest()


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def is_done(stage: Stage, fp: str | None = None) -> bool:
    """Finished earlier with the same command and inputs (and not by its `stale_revision`), and
    its outputs are still there."""
    record = _read(stage.marker)
    if not record or not all(p.exists() for p in stage.outputs):
        return False
    if stage.stale_revision is not None and _revision(record) == stage.stale_revision:
        return False
    return record.get("fingerprint") == (fp or fingerprint(stage))


def _revision(record: dict[str, Any]) -> str:
    return record.get("revision", "unrecorded")  # records older than revisions


def other_revisions(stages: Sequence[Stage]) -> dict[str, str]:
    """{stage: the revision its record names} of the finished stages that another code revision
    ran."""
    out = {}
    for st in stages:
        record = _read(st.marker)
        revision = _revision(record)
        if record and revision != code_revision() and is_done(st):
            out[st.name] = revision
    return out


def recorded_seconds(stage: Stage) -> float:
    return float(_read(stage.marker).get("seconds", 0.0))


def resume_point(stage: Stage, fp: str) -> Path | None:
    """The checkpoint an interrupted run of this very command left, if any."""
    if stage.resume_from is None or not stage.resume_from.is_file():
        return None
    return stage.resume_from if _read(stage.started_marker).get("fingerprint") == fp else None


def _set_aside_if_foreign(stage: Stage, fp: str, rerun: bool = False) -> None:
    """Before a fresh run: what `owns` holds from another command (or from no recorded stage, or
    a finished run of another code revision: `rerun`) is moved to `<name>.previous-<time>` beside
    it, so results of two commands never mix."""
    path = stage.owns
    if path is None or not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    if not rerun and _read(stage.started_marker).get("fingerprint") == fp:
        return  # a partial run of this same command: overwritten
    aside = path.with_name(f"{path.name}.previous-{datetime.now():%Y%m%d-%H%M%S-%f}")
    path.rename(aside)
    logger.info("%s: %s held the output of another command; moved to %s", stage.name, path, aside)


class FinalRedraws:
    """A log file that keeps what a terminal finally shows of each line: of a progress bar's
    redraws (joined by "\\r"), only the last, so stage logs stay plain text."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.pending = f, b""

    def write(self, chunk: bytes) -> None:
        *lines, self.pending = (self.pending + chunk).split(b"\n")
        for line in lines:
            self.f.write(line.rstrip(b"\r").rsplit(b"\r", 1)[-1] + b"\n")
        cut = self.pending.rstrip(b"\r").rfind(b"\r")
        if cut > 0:  # drop redraws already overwritten
            self.pending = self.pending[cut:]

    def close(self) -> None:
        tail = self.pending.rstrip(b"\r").rsplit(b"\r", 1)[-1]
        if tail.strip():
            self.f.write(tail + b"\n")
        self.pending = b""


def _relay(
    argv: list[str],
    log: Path,
    output: Callable[[bytes], None] | None = None,
    env: dict[str, str] | None = None,
    started: Callable[[subprocess.Popen | warm_start.WarmProcess], None] | None = None,
    warm: bool = False,
) -> int:
    """Run argv from the repository root (in `env`, default this process's); its output goes to
    `log` and to `output`. `started` gets the child process (the local launcher stops it on
    Ctrl-C). The child never gets submitit's preemption signal: the job that runs it checkpoints
    and requeues. (The child inherits the signal mask of the thread that starts it, with that
    signal blocked; unlike a `preexec_fn`, this is safe with several threads.) `warm`: a
    single-process tool starts from the preloaded interpreter of `warm_start`."""
    with open(log, "ab") as f:
        tee = FinalRedraws(f)
        usr_sig = submitit.JobEnvironment._usr_sig()
        child_env = dict(env or os.environ, PYTHONUNBUFFERED="1")
        proc: subprocess.Popen | warm_start.WarmProcess
        if warm and warm_start.enabled() and warm_start.can_start(argv):
            proc = warm_start.WarmProcess(argv, REPO, child_env, usr_sig)
        else:
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, {usr_sig})
            try:
                proc = subprocess.Popen(
                    argv,
                    cwd=REPO,
                    env=child_env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if started is not None:
            started(proc)
        try:
            assert proc.stdout is not None
            # Bytes, not lines: progress bars redraw with "\r" and must reach the terminal as they
            # are.
            while chunk := proc.stdout.read1(65536):
                if output:
                    output(chunk)
                tee.write(chunk)
            return proc.wait()
        finally:
            tee.close()
            if proc.poll() is None:  # interrupted (Ctrl-C, requeue, cancel): stop the tool too
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()


def stage_env(stage: Stage) -> dict[str, str]:
    """The environment a stage's command runs in: this process's, with the stage's threads."""
    env = dict(os.environ)
    if stage.threads is not None:
        env.update(OMP_NUM_THREADS=str(stage.threads), MKL_NUM_THREADS=str(stage.threads))
    return env


def run_stage(
    stage: Stage,
    node: Node | None = None,
    output: Callable[[bytes], None] | None = None,
    started: Callable[[subprocess.Popen | warm_start.WarmProcess], None] | None = None,
    warm: bool = False,
) -> dict[str, Any]:
    """Run one stage to completion (resuming an interrupted run of the same command); write its
    marker. `node` is set for the other nodes of a multi-node job: they only run the command.
    The command's output goes to the stage's log and to `output`; `started` gets its process;
    `warm`: start it from `warm_start`'s preloaded interpreter where it is one process."""
    main = node is None or node.rank == "0"
    fp = fingerprint(stage)
    earlier = _read(stage.started_marker)  # an interrupted run's, when it resumes
    # A stale finished stage starts afresh once; requeued, it resumes from the new run's checkpoint.
    rerun = (
        stage.stale_revision is not None
        and _revision(_read(stage.started_marker)) == stage.stale_revision
    )
    point = None if rerun else resume_point(stage, fp)
    cmd = stage.resume_command if point is not None and stage.resume_command else stage.command
    log = stage.log if main else stage.log.with_name(f"{stage.name}.node{node.rank}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    if main:
        if point is None:
            _set_aside_if_foreign(stage, fp, rerun)
        atomic_write_json(
            stage.started_marker,
            {
                "fingerprint": fp,
                "revision": code_revision(),
                "started": time.time(),
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "threads": stage.threads,
            },
        )
    note = f"  (resuming from {point})" if point is not None else ""
    if stage.threads is not None:
        note += f"  ({stage.threads} thread{'s' * (stage.threads > 1)} per process)"
    if point is not None and earlier.get("threads", stage.threads) != stage.threads:
        logger.warning(
            "%s: resumed with %s threads per process, started with %s: on the CPU its numbers "
            "may differ in the last digits from a run without the interruption",
            stage.name,
            stage.threads,
            earlier["threads"],
        )
    header = f"{stage.name}: {display(cmd, stage.resources)}{note}"
    logger.info(header)
    with open(log, "a") as f:
        f.write(f"\n{datetime.now():%Y-%m-%d %H:%M:%S} [experiment] {header}\n")
    start = time.perf_counter()
    rc = _relay(
        launch_argv(cmd, stage.resources, node or Node()),
        log,
        output,
        stage_env(stage),
        started,
        warm,
    )
    seconds = time.perf_counter() - start
    if rc != 0:
        raise StageFailed(f"stage {stage.name} failed (exit {rc}); log: {log}")
    if not main:
        return {"seconds": seconds}
    missing = [str(p) for p in stage.outputs if not p.exists()]
    if missing:
        raise StageFailed(
            f"stage {stage.name} exited 0 but did not write {missing}; log: {stage.log}"
        )
    atomic_write_json(
        stage.marker,
        {
            "fingerprint": fp,
            "revision": code_revision(),
            "command": shlex.split(display(cmd, stage.resources)),
            "seconds": round(seconds, 1),
            "finished": time.time(),
            "resumed_from": None if point is None else str(point),
            "threads": stage.threads,
            **({"threads_before_resume": earlier.get("threads")} if point is not None else {}),
        },
    )
    logger.info("%s: finished in %.0f s", stage.name, seconds)
    return {"seconds": seconds, "resumed_from": point}


def job_node(res: Resources) -> Node | None:
    """Inside a multi-node submitit job: this node's rank and the first node's address."""
    if res.nodes == 1:
        return None
    env = submitit.JobEnvironment()
    port = 20000 + int("".join(c for c in str(env.job_id) if c.isdigit()) or 0) % 20000
    return Node(rank=str(env.node), master_addr=env.hostnames[0], master_port=str(port))


class StageJob(submitit.helpers.Checkpointable):
    """A stage as a submitit job (FAIR's `run_with_submitit.py` pattern): `__call__` runs it,
    `checkpoint()` (called by submitit on preemption or time-out) requeues it; the requeued job
    resumes from the stage's checkpoint when the interrupted run left one."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage

    def __call__(self) -> dict[str, Any]:
        setup_logging()  # in a submitit job this is a fresh process
        return run_stage(self.stage, job_node(self.stage.resources))

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        point = resume_point(self.stage, fingerprint(self.stage))
        logger.info(
            "%s: requeued; %s",
            self.stage.name,
            f"will resume from {point}" if point else "no checkpoint yet, will start again",
        )
        return submitit.helpers.DelayedSubmission(type(self)(self.stage), *args, **kwargs)


def describe(stages: Sequence[Stage]) -> str:
    """Every command in dependency order with its resources (the `--dry-run` listing)."""
    lines = []
    for i, st in enumerate(stages, 1):
        after = f"; after {', '.join(st.deps)}" if st.deps else ""
        lines.append(f"# {i}. {st.name} [{st.resources.describe()}{after}]")
        if st.resume_command is not None:
            old, new = list(st.command.args), list(st.resume_command.args)
            added = [
                new[j1:j2]
                for op, _, _, j1, j2 in SequenceMatcher(a=old, b=new).get_opcodes()
                if op == "insert"
            ]
            lines.append(
                f"#    resumes from {st.resume_from.name} with: {shlex.join(sum(added, []))}"
            )
        lines.append(display(st.command, st.resources))
    return "\n".join(lines)
