"""Starting the fine-tuning processes: detectron2's `launch` on GPUs, gloo processes on the CPU,
and joining a job that torchrun started.

detectron2 0.6's `launch` spawns one process per GPU and asserts CUDA; newer detectron2 versions
fall back to gloo without a GPU, which `launch_processes` does here for `--num-gpus N` on a CPU
machine. Under torchrun (which users know from pretraining) every process joins torchrun's group
instead of starting a world of its own, so `torchrun --nproc_per_node 2 tools/finetune_coco.py`
is one job of two processes, not two jobs writing one OUTPUT_DIR. In both cases detectron2's
per-machine process group (`comm._LOCAL_PROCESS_GROUP`) is made as its `launch` makes it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch
from detectron2.engine.launch import _find_free_port
from detectron2.utils import comm

logger = logging.getLogger(__name__)

TIMEOUT = timedelta(minutes=30)


class LaunchError(ValueError):
    """Process options that contradict each other; the message gives the command to use."""


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """detectron2's process options, as its `default_argument_parser` defines them."""
    group = parser.add_argument_group("processes (detectron2's launch)")
    group.add_argument(
        "--num-gpus",
        type=int,
        default=1,
        metavar="N",
        help="processes per machine: one per GPU (without CUDA: N CPU processes)",
    )
    group.add_argument(
        "--num-machines", type=int, default=1, metavar="N", help="total number of machines"
    )
    group.add_argument(
        "--machine-rank",
        type=int,
        default=0,
        metavar="RANK",
        help="the rank of this machine (unique per machine)",
    )
    # detectron2's deterministic port per user: an orphaned earlier job shows as a port in use
    port = 2**15 + 2**14 + hash(os.getuid() if sys.platform != "win32" else 1) % 2**14
    group.add_argument(
        "--dist-url",
        default=f"tcp://127.0.0.1:{port}",
        metavar="URL",
        help="initialization URL of the process group (tcp://HOST:PORT of machine 0)",
    )


def torchrun_world() -> tuple[int, int, int, int] | None:
    """(rank, world size, local rank, processes per machine) when torchrun started this process."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or "LOCAL_WORLD_SIZE" not in os.environ:
        return None
    return (
        int(os.environ["RANK"]),
        int(os.environ["WORLD_SIZE"]),
        int(os.environ["LOCAL_RANK"]),
        int(os.environ["LOCAL_WORLD_SIZE"]),
    )


def join_process_group(
    backend: str, init_method: str, rank: int, world_size: int, local_rank: int, per_machine: int
) -> None:
    """`dist.init_process_group`, then detectron2's per-machine group and device, as its `launch`
    does."""
    dist.init_process_group(
        backend=backend, init_method=init_method, world_size=world_size, rank=rank, timeout=TIMEOUT
    )
    if world_size % per_machine:
        raise LaunchError(f"{world_size} processes do not split into machines of {per_machine}")
    for machine in range(world_size // per_machine):
        group = dist.new_group(list(range(machine * per_machine, (machine + 1) * per_machine)))
        if machine == rank // per_machine:
            comm._LOCAL_PROCESS_GROUP = group
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    comm.synchronize()


def _cpu_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple,
) -> None:
    join_process_group(
        "gloo",
        dist_url,
        machine_rank * per_machine + local_rank,
        world_size,
        local_rank,
        per_machine,
    )
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()


def launch_processes(
    main_func: Callable[..., Any],
    args: tuple,
    num_gpus: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = "auto",
) -> None:
    """Run `main_func(*args)` on every process of the job, however it is started (see the module
    doc)."""
    world = torchrun_world()
    if world is not None:
        if num_gpus > 1 or num_machines > 1:
            raise LaunchError(
                "torchrun already starts the processes: drop --num-gpus/--num-machines, or run "
                "without torchrun: python tools/finetune_coco.py --num-gpus N ..."
            )
        rank, world_size, local_rank, per_machine = world
        if world_size == 1:
            main_func(*args)
            return
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        join_process_group(backend, "env://", rank, world_size, local_rank, per_machine)
        try:
            main_func(*args)
        finally:
            dist.destroy_process_group()
        return
    world_size = num_gpus * num_machines
    if world_size > 1 and not torch.cuda.is_available():
        if dist_url == "auto":
            if num_machines > 1:
                raise LaunchError("--dist-url auto works on one machine only; give tcp://HOST:PORT")
            dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
        logger.warning("no CUDA: --num-gpus %d starts %d CPU processes (gloo)", num_gpus, num_gpus)
        mp.start_processes(
            _cpu_worker,
            nprocs=num_gpus,
            start_method="spawn",
            args=(main_func, world_size, num_gpus, machine_rank, dist_url, args),
        )
        return
    launch(
        main_func,
        num_gpus,
        num_machines=num_machines,
        machine_rank=machine_rank,
        dist_url=dist_url,
        args=args,
    )
