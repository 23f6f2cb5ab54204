"""The command line of every stage: one function per `tools/` entry point, and one place that
wraps a command for several processes (torchrun, or detectron2's own `--num-gpus` launcher).

A stage runs exactly what a user would type, from the repository root. When an entry point's
command line changes, the function for that tool is the only thing to edit here.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from als_det.experiment.plan import Resources

# How a tool runs several processes: "torchrun" (it reads torchrun's environment), "detectron2"
# (it spawns them itself through detectron2.engine.launch), or "single" (one process only).
LAUNCH_KINDS = ("torchrun", "detectron2", "single")


@dataclass(frozen=True)
class Command:
    tool: str  # path of the entry point, relative to the repository root
    args: tuple[str, ...]
    launch: str = "single"
    # What the stage computes (config, overrides, inputs), in a form that does not depend on how
    # the tool's command line spells it; empty: the arguments themselves.
    spec: tuple[Any, ...] = ()

    def identity(self) -> list[Any]:
        """What a stage's fingerprint covers: the tool and what it is asked to compute, neither the
        launcher nor the spelling of its options (a command-line change keeps finished stages)."""
        return [self.tool, *(self.spec or self.args)]


@dataclass(frozen=True)
class Node:
    """Where this copy of a multi-node command runs (strings, so a dry run can show variables)."""

    rank: str = "0"
    master_addr: str = "127.0.0.1"
    master_port: str = "29500"


def override_args(overrides: Mapping[str, Any]) -> list[str]:
    """{KEY: value} -> [KEY, str]; non-strings as Python literals (what yacs' merge_from_list
    reads)."""
    return [
        a
        for key, value in overrides.items()
        for a in (key, value if isinstance(value, str) else repr(value))
    ]


def generate_command(config: str, overrides: Mapping[str, Any]) -> Command:
    opts = override_args(overrides)
    return Command(
        "tools/generate_data.py",
        ("--config-file", config, *opts),
        spec=("config", config, "overrides", tuple(opts)),
    )


def pretrain_command(config: str, overrides: Mapping[str, Any], resume: bool = False) -> Command:
    opts = override_args(overrides)
    args = [*(["--resume"] if resume else []), "--config-file", config, *opts]
    return Command(
        "tools/pretrain.py",
        tuple(args),
        "torchrun",
        spec=("config", config, "overrides", tuple(opts)),
    )


def _checkpoints_command(
    tool: str,
    checkpoints: Mapping[str, str],
    data: str,
    out: str,
    baseline: str | None,
    extra: Sequence[str],
    launch: str = "single",
) -> Command:
    """A tool that reads named checkpoints and a data set: evaluate and transfer."""
    args = [a for name, path in checkpoints.items() for a in ("--checkpoint", path, "--name", name)]
    args += ["--data", data, "--out", out]
    if baseline:
        args += ["--baseline", baseline]
    return Command(
        tool,
        tuple(args + list(extra)),
        launch,
        spec=(
            "checkpoints",
            tuple(checkpoints.items()),
            "data",
            data,
            "out",
            out,
            "baseline",
            baseline,
            "options",
            tuple(extra),
        ),
    )


def evaluate_command(
    checkpoints: Mapping[str, str], data: str, out: str, baseline: str | None, extra: Sequence[str]
) -> Command:
    return _checkpoints_command(
        "tools/evaluate.py", checkpoints, data, out, baseline, extra, "torchrun"
    )


def transfer_command(
    checkpoints: Mapping[str, str], data: str, out: str, baseline: str | None, extra: Sequence[str]
) -> Command:
    return _checkpoints_command("tools/transfer.py", checkpoints, data, out, baseline, extra)


def convert_command(checkpoint: str, output: str) -> Command:
    return Command(
        "tools/convert_to_d2.py",
        (checkpoint, output, "--verify", "--force"),
        spec=("checkpoint", checkpoint, "output", output, "verified"),
    )


def finetune_command(
    config: str, extra: Sequence[str], overrides: Mapping[str, Any], resume: bool = False
) -> Command:
    opts = override_args(overrides)
    args = ["--config-file", config, *extra, *(["--resume"] if resume else []), *opts]
    return Command(
        "tools/finetune_coco.py",
        tuple(args),
        "detectron2",
        spec=("config", config, "options", tuple(extra), "overrides", tuple(opts)),
    )


def compare_command(run_dirs: Sequence[str], baseline: str, out: str) -> Command:
    return Command(
        "tools/compare.py",
        (*run_dirs, "--baseline", baseline, "--out", out),
        spec=("runs", tuple(run_dirs), "baseline", baseline, "out", out),
    )


def launch_argv(
    cmd: Command,
    res: Resources,
    node: Node = Node(),
    python: str = sys.executable,
    torchrun: Sequence[str] = (sys.executable, "-m", "torch.distributed.run"),
) -> list[str]:
    """The argv that runs `cmd` on one node with `res.processes` processes per node."""
    many = res.processes > 1 or res.nodes > 1
    if cmd.launch == "torchrun" and many:
        prefix = [*torchrun, f"--nproc_per_node={res.processes}"]
        if res.nodes == 1:
            prefix.append("--standalone")
        else:
            prefix += [
                f"--nnodes={res.nodes}",
                f"--node_rank={node.rank}",
                f"--master_addr={node.master_addr}",
                f"--master_port={node.master_port}",
            ]
        return [*prefix, cmd.tool, *cmd.args]
    if cmd.launch == "detectron2" and many:
        dist = ["--num-gpus", str(res.processes)]
        if res.nodes > 1:
            dist += [
                "--num-machines",
                str(res.nodes),
                "--machine-rank",
                node.rank,
                "--dist-url",
                f"tcp://{node.master_addr}:{node.master_port}",
            ]
        return [python, cmd.tool, *dist, *cmd.args]
    if many:
        raise ValueError(
            f"{cmd.tool} runs as one process; its resources ask for {res.processes} "
            f"per node on {res.nodes} node(s)"
        )
    return [python, cmd.tool, *cmd.args]


def display(cmd: Command, res: Resources) -> str:
    """The command as a user types it (`python`, `torchrun`); other nodes' values as variables."""
    node = Node(rank="$NODE_RANK", master_addr="$MASTER_ADDR", master_port="$MASTER_PORT")
    argv = launch_argv(cmd, res, node, python="python", torchrun=("torchrun",))
    return " ".join(f'"{a}"' if "$" in a else shlex.quote(a) for a in argv)
