"""Stages started from a warm interpreter.

Before its first line of work, every tool imports torch, torchvision and detectron2: about 5 s of
CPU per process on a 2-core machine, most of what a smoke-sized stage costs (the shipped sweep
starts over a hundred such processes). The local launcher therefore starts single-process stages
through multiprocessing's forkserver with those modules preloaded (`set_forkserver_preload`, the
use its authors intend): the server imports them once, and each stage is a fork of it that runs
the tool as `python tools/X.py ARGS` would, through `runpy`, with its own argv, environment,
working folder, thread count and output pipe. torchrun launches and submitit jobs start a fresh
interpreter as before; a fine-tune with `--num-gpus N` starts warm, and detectron2's launch
spawns its N workers afresh. `ALS_DET_WARM_START=0` turns this off. As with any multiprocessing
start method but fork, a script that runs stages (tools/run_experiment.py does) needs the
`if __name__ == "__main__":` guard: each child imports the script's module.

The server lives as long as the runner: every stage of one invocation runs the code that was on
disk when the runner started (and records that code's revision, computed once in the server).
"""

from __future__ import annotations

import atexit
import io
import multiprocessing
import multiprocessing.connection
import os
import runpy
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PRELOAD = ["als_det.experiment.warm_preload"]
ENV = "ALS_DET_WARM_START"

_context: Any = None


def enabled() -> bool:
    return (
        os.environ.get(ENV, "1") != "0" and "forkserver" in multiprocessing.get_all_start_methods()
    )


def can_start(argv: Sequence[str]) -> bool:
    """`python SCRIPT ARGS` with this interpreter: a tool that one process runs."""
    return len(argv) >= 2 and argv[0] == sys.executable and argv[1].endswith(".py")


def _forkserver() -> Any:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


class WarmProcess:
    """The part of `subprocess.Popen` that the stage relay uses: `stdout` (bytes, `read1`),
    `poll`, `wait`, `terminate`, `kill`; the return code is negative for a signal, as Popen's."""

    def __init__(
        self, argv: Sequence[str], cwd: Path, env: Mapping[str, str], block: signal.Signals
    ) -> None:
        ctx = _forkserver()
        reader, writer = ctx.Pipe(duplex=False)
        self.process = ctx.Process(
            target=_run_tool,
            args=(list(argv[1:]), str(cwd), dict(env), int(block), writer),
            daemon=False,
        )
        self.process.start()
        writer.close()
        self.stdout = open(os.dup(reader.fileno()), "rb")
        reader.close()
        self.pid = self.process.pid
        self._lock = threading.Lock()  # the exit status is read once, by one thread

    def poll(self) -> int | None:
        with self._lock:
            return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        with self._lock:
            self.process.join(timeout)
            code = self.process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(f"stage process {self.pid}", timeout or 0)
        return code

    def terminate(self) -> None:
        self.process.terminate()

    def kill(self) -> None:
        self.process.kill()


def _run_tool(
    argv: list[str],
    cwd: str,
    env: dict[str, str],
    block: int,
    out: multiprocessing.connection.Connection,
) -> None:
    """In the forked child: what `python argv[0] argv[1:]` does in `cwd` with `env`, its output
    (stdout and stderr, unbuffered) into `out`, signal `block` blocked."""
    os.dup2(out.fileno(), 1)
    os.dup2(out.fileno(), 2)
    out.close()
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    # A forkserver child inherits "forkserver" as its default start method; a fresh interpreter has
    # the platform's (fork on Linux before Python 3.14), and with the forkserver every DataLoader
    # worker would import torch again, every epoch (10 s per epoch for 4 workers on a GPU machine).
    multiprocessing.set_start_method(None, force=True)
    import torch  # preloaded: the thread count a fresh interpreter would take from its environment

    if env.get("OMP_NUM_THREADS", "").isdigit():
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    signal.pthread_sigmask(signal.SIG_BLOCK, {block})  # as `_relay` does for a fresh process
    script = str(Path(argv[0]).resolve())
    sys.argv = argv
    sys.path[0] = os.path.dirname(script)
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        atexit._run_exitfuncs()  # what interpreter exit does: detectron2 closes its log files
