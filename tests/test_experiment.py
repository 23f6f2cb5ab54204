"""The experiment runner without training: plan checks, the dry-run listing, command lines for
several processes and nodes, fingerprints, resume points, submitit's checkpoint hook, and how a
failed stage stops only its dependants (real subprocesses running tiny scripts)."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import submitit
import yaml
from tiny_runs import run_tool

from als_det.experiment import commands
from als_det.experiment.commands import Command, Node, launch_argv
from als_det.experiment.console import Console
from als_det.experiment.graph import build_graph
from als_det.experiment.launchers import SubmititLauncher, _parameters, run_local
from als_det.experiment.plan import PlanError, Resources, load_plan, parse_plan
from als_det.experiment.runner import dry_run, summary
from als_det.experiment.stages import (
    Stage,
    StageJob,
    config_chain,
    fingerprint,
    is_done,
    resume_point,
    run_stage,
)

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "configs/experiments/paper_r50.yaml"


def _raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: p.update(arms_typo={}), r"unknown key\(s\) \['arms_typo'\] in the plan"),
        (lambda p: p.update(baseline="nope"), "baseline 'nope' is not among the arms"),
        (
            lambda p: p["pretrain"]["resources"].update(gpus=8),
            r"unknown key\(s\) \['gpus'\] in pretrain.resources",
        ),
        (
            lambda p: p["arms"]["hard"].update(config="configs/pretrain/missing.yaml"),
            "arms.hard: config file",
        ),
        (lambda p: p.update(seeds=[]), "seeds must be a non-empty list"),
        (
            lambda p: p.update(report="demo"),
            "report: demo needs one evaluation over all runs and a detector",
        ),
        (
            lambda p: p["detection"].append(dict(p["detection"][0])),
            "detection names must be distinct",
        ),
        *(
            (
                lambda p, bad=bad: p["arms"].update({bad: p["arms"]["hard"]}),
                f"arms: the name {re.escape(repr(bad))} is not a plain name",
            )
            for bad in ("../../../escaped", "/tmp/abs", "a/b", "a\\b", "", ".", "..", ".hidden")
        ),
        (lambda p: p["arms"].update({None: p["arms"]["hard"]}), "arms: the name 'None' is not"),
        (
            lambda p: p["detection"][0].update(name="../up"),
            r"detection\[0\].name: the name '../up' is not a plain name",
        ),
    ],
)
def test_plan_errors_name_the_key(edit, message):
    raw = _raw(PAPER)
    raw["report"] = None
    edit(raw)
    if raw.get("report") == "demo":
        raw["detection"] = []
    with pytest.raises(PlanError, match=message):
        parse_plan(raw, "p.yaml")


def test_shipped_plans_build():
    for name, stages in (
        ("paper_r50", 3 + 1 + 3 + 3 + 3 + 1),
        ("demo", 1 + 3 + 1 + 3 + 3 + 1),
        ("smoke", 1 + 2 + 1 + 2 + 2 + 1),
    ):
        graph = build_graph(load_plan(REPO / f"configs/experiments/{name}.yaml"))
        assert len(graph.stages) == stages, name
        seen: set[str] = set()
        for st in graph.stages:  # dependency order
            assert set(st.deps) <= seen, st.name
            seen.add(st.name)


@pytest.mark.parametrize("option", ["--seeds", "--cpus", "--threads"])
def test_a_count_below_one_is_refused_before_anything_runs(option, capsys):
    # `make demo SEEDS=0` once ran the plan's own seeds, a whole demo, without a word
    with pytest.raises(SystemExit) as exit_info:
        run_tool("run_experiment", ["--plan", str(PAPER), "--dry-run", option, "0"])
    assert exit_info.value.code == 2
    assert f"argument {option}: must be at least 1, got 0" in capsys.readouterr().err


def test_dry_run_lists_every_command_in_order_with_resources():
    out = subprocess.run(
        [
            sys.executable,
            "tools/run_experiment.py",
            "--plan",
            str(PAPER),
            "--dry-run",
            "--seeds",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    names = [
        ln.split(". ", 1)[1].split(" [")[0]
        for ln in text.splitlines()
        if ln.startswith("# ") and ". " in ln
    ]
    assert names[:3] == ["pretrain_hard_s0", "pretrain_ls_s0", "pretrain_als_s0"]
    assert len(names) == 6 + 6 + 1 + 6 + 6 + 1 and names[-1] == "compare_faster_rcnn_R_50_FPN_1x"
    assert names.index("evaluate") > names.index("pretrain_als_s1")
    # a transfer per run, listed after the evaluation but needing only its pretraining
    assert names.index("transfer_hard_s0") == names.index("evaluate") + 1
    assert (
        "# 12. transfer_ls_s1 [1 node x 1 GPUs, 10 CPUs/process, 64 GB, 240 min; after "
        "pretrain_ls_s1]"
    ) in text
    assert (
        "python tools/transfer.py --checkpoint output/paper_r50/pretrain/ls_s1/last.pth --name "
        "ls_s1 --data datasets/downstream --out output/paper_r50/transfer/ls_s1 --workers 10"
    ) in text
    assert names.index("finetune_faster_rcnn_R_50_FPN_1x_als_s1") > names.index("convert_als_s1")
    assert (
        "torchrun --nproc_per_node=8 --standalone tools/pretrain.py --config-file "
        "configs/pretrain/imagenet_r50_als.yaml OUTPUT_DIR output/paper_r50/pretrain/als_s1 SEED 1"
    ) in text
    assert (
        "python tools/finetune_coco.py --num-gpus 8 --config-file "
        "configs/detection/faster_rcnn_R_50_FPN_1x.yaml"
    ) in text
    assert "1 node x 8 GPUs, 8 processes/node, 10 CPUs/process, 480 GB, 1440 min" in text
    assert "resumes from last.pth with: --resume\n" in text
    assert "resumes from last_checkpoint with: --resume" in text
    assert "--baseline hard_s0" in text  # evaluation ratios refer to the baseline arm's first seed


def test_multi_process_and_multi_node_command_lines():
    pre = commands.pretrain_command("c.yaml", {"SEED": 1, "SOLVER.STEPS": (30, 60)}, resume=True)
    assert pre.args == (
        "--resume",
        "--config-file",
        "c.yaml",
        "SEED",
        "1",
        "SOLVER.STEPS",
        "(30, 60)",
    )
    node = Node(rank="1", master_addr="n001", master_port="29511")
    two = Resources(nodes=2, gpus_per_node=8)
    argv = launch_argv(pre, two, node, python="py", torchrun=("torchrun",))
    assert argv[:6] == [
        "torchrun",
        "--nproc_per_node=8",
        "--nnodes=2",
        "--node_rank=1",
        "--master_addr=n001",
        "--master_port=29511",
    ]
    det = commands.finetune_command("d.yaml", ["--coco-root", "coco"], {"SEED": 0})
    argv = launch_argv(det, two, node, python="py")
    assert argv == [
        "py",
        "tools/finetune_coco.py",
        "--num-gpus",
        "8",
        "--num-machines",
        "2",
        "--machine-rank",
        "1",
        "--dist-url",
        "tcp://n001:29511",
        "--config-file",
        "d.yaml",
        "--coco-root",
        "coco",
        "SEED",
        "0",
    ]
    assert launch_argv(det, Resources(), python="py") == ["py", "tools/finetune_coco.py", *det.args]
    with pytest.raises(ValueError, match="runs as one process"):
        launch_argv(commands.convert_command("a.pth", "b.pkl"), Resources(gpus_per_node=2))


def test_slurm_parameters_carry_dependencies_and_resources(tmp_path, monkeypatch):
    plan = load_plan(PAPER)
    st = next(
        s for s in build_graph(plan).stages if s.name == "finetune_faster_rcnn_R_50_FPN_1x_ls"
    )
    params = _parameters(
        st, plan.name, {**plan.slurm, "partition": "gpu", "account": "lab"}, ["101", "102"]
    )
    assert params["slurm_additional_parameters"] == {
        "dependency": "afterok:101:102",
        "kill-on-invalid-dep": "yes",
    }
    assert (params["nodes"], params["tasks_per_node"], params["gpus_per_node"]) == (1, 1, 8)
    assert (
        params["cpus_per_task"] == 6 * 8
        and params["timeout_min"] == 720
        and params["mem_gb"] == 240
    )
    assert params["slurm_partition"] == "gpu" and params["slurm_account"] == "lab"
    # submitit's own SLURM executor accepts them and writes the sbatch file from them (it only
    # looks for an `srun` on PATH to agree to be built; nothing is submitted)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    executor = submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="slurm")
    executor.update_parameters(**params)
    sbatch = executor._executor._make_submission_file_text(
        "python -m submitit.core._submit x", "uid"
    )
    for line in (
        "--dependency=afterok:101:102",
        "--kill-on-invalid-dep=yes",
        "--gpus-per-node=8",
        "--ntasks-per-node=1",
        "--cpus-per-task=48",
        "--time=720",
        "--mem=240GB",
        "--partition=gpu",
        "--signal=USR2@120",
        "--job-name=paper_r50.finetune_faster_rcnn_R_50_FPN_1x_ls",
    ):
        assert f"#SBATCH {line}" in sbatch, line


def test_config_chain_follows_local_bases_only():
    demo = config_chain("configs/pretrain/demo_hard.yaml")
    assert [p.name for p in demo] == ["demo_hard.yaml", "Base-Demo.yaml"]
    det = config_chain("configs/detection/faster_rcnn_R_18_FPN_demo.yaml")
    assert [p.name for p in det] == [
        "faster_rcnn_R_18_FPN_demo.yaml",
        "faster_rcnn_R_50_FPN_1x.yaml",
        "Base-torchvision.yaml",
    ]


# --- stages running tiny scripts: real subprocesses, no training --------------------------------

STEPPER = """
import json, os, sys, time
from pathlib import Path
out, steps = Path(sys.argv[1]), int(sys.argv[2])
out.mkdir(exist_ok=True)
(out / "pid").write_text(str(os.getpid()))
state = out / "state.json"
start = json.loads(state.read_text())["step"] if "--resume" in sys.argv else 0
if start:
    print(f"resumed at step {start}", flush=True)
for step in range(start + 1, steps + 1):
    time.sleep(0.2)
    print(f"step {step}", flush=True)  # before the state: a step in state.json has been printed
    state.write_text(json.dumps({"step": step}))
(out / "done").write_text("ok")
"""


def _stage(tmp: Path, name: str, script: str, *args: str, deps=(), resumable=False) -> Stage:
    tool = tmp / f"{name}.py"
    tool.write_text(textwrap.dedent(script))
    out = tmp / name
    out.mkdir(exist_ok=True)
    cmd = Command(str(tool), (str(out), *args))
    return Stage(
        name=name,
        kind="test",
        command=cmd,
        resources=Resources(),
        state_dir=tmp / ".stages",
        log=tmp / "logs" / f"{name}.log",
        deps=tuple(deps),
        inputs=(tool,),
        outputs=(out / "done",),
        owns=out,
        resume_command=Command(str(tool), (str(out), *args, "--resume")) if resumable else None,
        resume_from=out / "state.json" if resumable else None,
    )


def test_resume_point_needs_the_same_command(tmp_path):
    st = _stage(tmp_path, "train", STEPPER, "3", resumable=True)
    fp = fingerprint(st)
    assert resume_point(st, fp) is None
    (tmp_path / "train" / "state.json").write_text('{"step": 2}')
    assert resume_point(st, fp) is None  # no record that this command started it
    st.state_dir.mkdir()
    st.started_marker.write_text(json.dumps({"fingerprint": fp}))
    assert resume_point(st, fp) == tmp_path / "train" / "state.json"
    result = run_stage(st)
    assert result["resumed_from"] == tmp_path / "train" / "state.json"
    assert (
        "resumed at step 2" in st.log.read_text()
        and "step 1" not in st.log.read_text().splitlines()
    )
    assert is_done(st)
    # the same stage with another command is not done, and a fresh run sets the old output aside
    changed = _stage(tmp_path, "train", STEPPER, "2", resumable=True)
    assert not is_done(changed) and resume_point(changed, fingerprint(changed)) is None
    run_stage(changed)
    assert len(list(tmp_path.glob("train.previous-*"))) == 1


def test_checkpoint_hook_requeues_the_same_stage(tmp_path):
    st = _stage(tmp_path, "train", STEPPER, "3", resumable=True)
    delayed = StageJob(st).checkpoint()
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert isinstance(delayed.function, StageJob) and delayed.function.stage == st


FAIL = "import sys; print('something went wrong', flush=True); sys.exit(3)"


def test_failed_stage_stops_only_its_dependants(tmp_path, capsys):
    bad = _stage(tmp_path, "bad", FAIL)
    after_bad = _stage(tmp_path, "after_bad", STEPPER, "1", deps=["bad"])
    after_that = _stage(tmp_path, "after_that", STEPPER, "1", deps=["after_bad"])
    good = _stage(tmp_path, "good", STEPPER, "3")
    outcome = run_local([bad, after_bad, after_that, good], cpus=2, threads=1)  # bad beside good
    assert outcome.ran == ["good"] and list(outcome.failed) == ["bad"]
    assert outcome.blocked == {"after_bad": "bad", "after_that": "bad"}
    assert f"stage bad failed (exit 3); log: {bad.log}" == outcome.failed["bad"]
    assert "something went wrong" in bad.log.read_text()
    text = summary(outcome)
    assert "not run because bad failed: after_bad, after_that" in text
    out = capsys.readouterr().out  # relayed to the terminal too, each line named
    assert "bad        | something went wrong\n" in out and "good       | step 3\n" in out


# Two stages that each wait for the other to have started: they finish only side by side.
BESIDE = """
import os, sys, time
from pathlib import Path
out, other = Path(sys.argv[1]), Path(sys.argv[2])
(out / "threads").write_text(os.environ.get("OMP_NUM_THREADS", "unset"))
deadline = time.time() + 60
while not (other / "threads").exists():
    if time.time() > deadline:
        sys.exit("the other stage never ran beside this one")
    time.sleep(0.05)
print("both running", flush=True)
(out / "done").write_text("ok")
"""

# A stage that notes whether another one ran while it did (a shared folder of running flags).
ALONE = """
import sys, time
from pathlib import Path
out, flags = Path(sys.argv[1]), Path(sys.argv[2])
flags.mkdir(exist_ok=True)
mine = flags / out.name
mine.touch()
time.sleep(0.3)
others = sorted(p.name for p in flags.iterdir() if p != mine)
mine.unlink()
(out / "done").write_text(" ".join(others) or "alone")
"""


def _quiet(stages) -> Console:
    return Console([st.name for st in stages], stream=io.BytesIO(), live=False)


def test_local_launcher_runs_independent_stages_side_by_side_within_the_cpus(tmp_path):
    a = _stage(tmp_path, "a", BESIDE, str(tmp_path / "b"))
    b = _stage(tmp_path, "b", BESIDE, str(tmp_path / "a"))
    console = _quiet([a, b])
    outcome = run_local([a, b], cpus=2, threads=1, console=console)
    assert sorted(outcome.ran) == ["a", "b"], outcome
    for st in (a, b):  # the thread count is the stage's environment and its record
        assert (tmp_path / st.name / "threads").read_text() == "1"
        assert json.loads(st.marker.read_text())["threads"] == 1
    lines = console.stream.getvalue().decode().splitlines()
    assert sorted(lines) == ["a | both running", "b | both running"]

    # the budget: two stages of 2 threads in 2 CPUs, or of 1 thread in 1 CPU, run one at a time
    flags = tmp_path / "flags"
    for cpus, threads in ((2, 2), (1, 1)):
        stages = [_stage(tmp_path, f"x{i}_{cpus}", ALONE, str(flags)) for i in range(3)]
        outcome = run_local(stages, cpus=cpus, threads=threads, console=_quiet(stages))
        assert len(outcome.ran) == 3
        for st in stages:
            assert (st.outputs[0]).read_text() == "alone"
            assert json.loads(st.marker.read_text())["threads"] == threads

    # stages that ask for GPUs run one at a time, however many CPUs there are
    gpu = Resources(gpus_per_node=1, cpus_per_proc=1)
    stages = [
        dataclasses.replace(_stage(tmp_path, f"g{i}", ALONE, str(flags)), resources=gpu)
        for i in range(3)
    ]
    outcome = run_local(stages, cpus=8, threads=1, console=_quiet(stages))
    assert sorted(outcome.ran) == ["g0", "g1", "g2"], outcome
    assert [st.outputs[0].read_text() for st in stages] == ["alone"] * 3


# A script that runs stages needs multiprocessing's main guard: warm starts use its forkserver.
INTERRUPTED = """
import signal, sys
from pathlib import Path
# Ctrl-C as a terminal delivers it, whatever this process inherited: a pytest worker that ran other
# tests first can hand its children SIGINT ignored or blocked (CI saw the runner ignore it)
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
sys.path.insert(0, sys.argv[2])
from test_experiment import STEPPER, _stage
from als_det.experiment.launchers import run_local
if __name__ == "__main__":
    tmp = Path(sys.argv[1])
    stages = [_stage(tmp, name, STEPPER, "15", resumable=True) for name in ("one", "two")]
    try:
        run_local(stages, cpus=2, threads=1)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
"""


def test_ctrl_c_stops_every_running_stage_and_the_next_run_resumes_them(tmp_path, caplog):
    runner = tmp_path / "runner.py"
    runner.write_text(INTERRUPTED)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    proc = subprocess.Popen(
        [sys.executable, str(runner), str(tmp_path), str(REPO / "tests")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    states = [tmp_path / name / "state.json" for name in ("one", "two")]
    deadline = time.time() + 60
    while not all(s.is_file() for s in states):  # both stages running side by side
        assert time.time() < deadline and proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # the runner only, as `kill -INT`: it must stop its children
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130 and "interrupted" in out, out
    for name, state in zip(("one", "two"), states):
        assert json.loads(state.read_text())["step"] < 15
        with pytest.raises(ProcessLookupError):
            os.kill(int((tmp_path / name / "pid").read_text()), 0)

    # resumed with another thread count: said, and recorded beside the one it started with
    stages = [_stage(tmp_path, name, STEPPER, "15", resumable=True) for name in ("one", "two")]
    with caplog.at_level(logging.WARNING, logger="als_det"):
        outcome = run_local(stages, cpus=4, threads=2, console=_quiet(stages))
    assert sorted(outcome.ran) == ["one", "two"]
    for st in stages:
        log = st.log.read_text()
        assert "resumed at step" in log and log.splitlines().count("step 15") == 1
        record = json.loads(st.marker.read_text())
        assert (record["threads"], record["threads_before_resume"]) == (2, 1)
        assert f"{st.name}: resumed with 2 threads per process, started with 1" in caplog.text


def test_console_names_every_line_and_draws_one_progress_bar():
    stream = io.BytesIO()
    console = Console(["pretrain", "ev"], stream=stream, live=True)
    first, second = console.open("pretrain"), console.open("ev")
    first(b"epoch 1:  10%|#")
    second(b"loading\nbar of ev 10%\r")
    first(b"\repoch 1:  50%|#####")
    second(b"bar of ev 90%\rev done\n")
    first(b"\r" + b" " * 20 + b"\rtrained\n")
    console.close("pretrain")
    second(b"after 1\rafter 2")
    console.close("ev")
    raw = stream.getvalue()
    assert b"bar of ev" not in raw  # the second stage's bar is never drawn
    assert b"pretrain | epoch 1:  50%|#####" in raw  # the first one's is, as it redraws
    screen = [ln.rsplit(b"\r", 1)[-1].rstrip() for ln in raw.split(b"\n")]
    assert [ln for ln in screen if ln] == [
        b"ev       | loading",
        b"ev       | ev done",
        b"pretrain | trained",
        b"ev       | after 2",
    ]
    # not a terminal: the final version of each line only, as the stage logs keep it
    stream = io.BytesIO()
    console = Console(["a"], stream=stream, live=False)
    console.open("a")(b"x 10%\rx 100%\nlast")
    console.close("a")
    assert stream.getvalue() == b"a | x 100%\na | last\n"


def test_submitit_local_jobs_fail_block_and_requeue(tmp_path):
    """Real submitit jobs: a failure cancels what needs it; submitit's preemption signal makes a job
    checkpoint and requeue, and the requeued job resumes where the first one stopped."""
    bad = _stage(tmp_path, "bad", FAIL)
    after_bad = _stage(tmp_path, "after_bad", STEPPER, "1", deps=["bad"])
    train = _stage(tmp_path, "train", STEPPER, "12", resumable=True)
    launcher = SubmititLauncher(
        [bad, after_bad, train], tmp_path / ".submitit", "local", "t", {}, poll_s=0.2
    )
    outcome = launcher.run()
    assert list(outcome.failed) == ["bad"] and outcome.blocked == {"after_bad": "bad"}
    assert f"log: {bad.log}" in outcome.failed["bad"] and "job log:" in outcome.failed["bad"]
    assert outcome.ran == ["train"] and is_done(train)

    # preemption: SIGUSR2 to the job -> StageJob.checkpoint -> requeue -> resume from state.json

    st = _stage(tmp_path, "long", STEPPER, "15", resumable=True)
    launcher = SubmititLauncher([st], tmp_path / ".submitit", "local", "t", {}, poll_s=0.2)
    launcher._schedule(scheduler_dependencies=False)
    deadline = time.time() + 60
    while not ((tmp_path / "long" / "state.json").is_file() and st.started_marker.is_file()):
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(json.loads(st.started_marker.read_text())["pid"], signal.SIGUSR2)
    outcome = launcher.run()
    assert outcome.ran == ["long"], outcome
    log = st.log.read_text()
    assert "resumed at step" in log and log.splitlines().count("step 1") == 1
    job_log = "".join(p.read_text() for p in (tmp_path / ".submitit").glob("*_log.out"))
    assert "requeued; will resume from" in job_log


def test_several_nodes_need_slurm(tmp_path):
    from als_det.experiment.runner import run_experiment

    raw = _raw(PAPER)
    raw["out"] = str(tmp_path / "out")
    raw["pretrain"]["resources"]["nodes"] = 4
    plan = parse_plan(raw, "p.yaml")
    for launcher in ("local", "submitit-local"):
        with pytest.raises(
            ValueError, match="pretrain_hard, pretrain_ls, pretrain_als ask for several nodes"
        ):
            run_experiment(plan, launcher)
    assert not (tmp_path / "out").exists()
    assert '--nnodes=4 "--node_rank=$NODE_RANK" "--master_addr=$MASTER_ADDR"' in dry_run(plan)


def test_sweep_shape_per_run_evaluation_and_no_detection():
    """What a sweep needs: one evaluation per run (a failed cell stops only its own), no
    detection."""
    raw = _raw(REPO / "configs/experiments/smoke.yaml")
    raw.update(detection=[], report=None, seeds=[0, 1])
    raw["evaluate"]["per_run"] = True
    raw["arms"]["als_emax05"] = {
        "config": "configs/pretrain/demo_als.yaml",
        "overrides": {"LABELS.E_MAX": 0.5},
    }
    graph = build_graph(parse_plan(raw, "sweep.yaml"))
    names = [st.name for st in graph.stages]
    assert not any(n.startswith(("convert", "finetune", "compare")) for n in names)
    ev = {st.name: st for st in graph.stages if st.kind == "evaluate"}
    assert sorted(ev) == sorted(
        f"evaluate_{a}_s{s}" for a in ("hard", "als", "als_emax05") for s in (0, 1)
    )
    cell = ev["evaluate_als_emax05_s1"]
    assert cell.deps == ("pretrain_als_emax05_s1",)
    assert cell.outputs[0].parts[-3:] == ("evaluation", "als_emax05_s1", "metrics.json")
    pre = next(st for st in graph.stages if st.name == "pretrain_als_emax05_s1")
    assert pre.command.args[-8:] == (
        "LABELS.E_MAX",
        "0.5",
        "OUTPUT_DIR",
        pre.command.args[-5],
        "SEED",
        "1",
        "DATA.ROOT",
        pre.command.args[-1],
    )


def test_fingerprint_covers_what_a_stage_computes_not_how_the_command_line_spells_it(tmp_path):
    cmd = commands.pretrain_command("configs/pretrain/demo_als.yaml", {"SEED": 1})
    respelled = Command(cmd.tool, ("--config-file", *cmd.args[1:]), cmd.launch, cmd.spec)
    other_seed = commands.pretrain_command("configs/pretrain/demo_als.yaml", {"SEED": 2})
    st = _stage(tmp_path, "train", STEPPER, "3")

    def fp(c: Command) -> str:
        return fingerprint(dataclasses.replace(st, command=c))

    assert fp(cmd) == fp(respelled) != fp(other_seed)
    assert fp(cmd) == fp(
        commands.pretrain_command("configs/pretrain/demo_als.yaml", {"SEED": 1}, resume=True)
    )


def test_stage_logs_keep_only_the_final_redraw_of_progress_bars() -> None:
    import io

    from als_det.experiment.stages import FinalRedraws

    buf = io.BytesIO()
    log = FinalRedraws(buf)
    for chunk in (
        b"start\nepoch 1:  10%|#",
        b"  | 1/10\repoch 1:  50%|##### | 5/10\r",
        b"epoch 1: 100%|##########| 10/10\n",
        b"bar\r      \r[12:00 trainer]: epoch 1/2 done\r\n",
        b"tail 1\rtail 2",
    ):
        log.write(chunk)
    log.close()
    assert buf.getvalue() == (
        b"start\nepoch 1: 100%|##########| 10/10\n[12:00 trainer]: epoch 1/2 done\ntail 2\n"
    )


PROBE = """
import json, os, signal, sys
from pathlib import Path
out = Path(sys.argv[1])
print("to stdout")
print("to stderr", file=sys.stderr)
(out / "probe.json").write_text(json.dumps({
    "torch_preloaded": "torch" in sys.modules,
    "argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0],
    "env": os.environ.get("PROBE_VALUE"), "unbuffered": os.environ.get("PYTHONUNBUFFERED"),
    "threads": __import__("torch").get_num_threads(),
    "usr2_blocked": signal.SIGUSR2 in signal.pthread_sigmask(signal.SIG_BLOCK, []),
    "start_method": __import__("multiprocessing").get_start_method(),
}))
(out / "done").write_text("ok")
sys.exit(int(sys.argv[2]))
"""


@pytest.mark.parametrize("warm", ["1", "0"])
def test_a_local_stage_runs_as_python_would_warm_or_cold(tmp_path, monkeypatch, warm):
    """The local launcher starts single-process tools from the forkserver that preloaded torch
    (`ALS_DET_WARM_START=0`: a fresh interpreter); either way the tool sees its own argv, working
    folder, environment and thread count, its output reaches the log and its exit status the
    runner."""
    monkeypatch.setenv("ALS_DET_WARM_START", warm)
    monkeypatch.setenv("PROBE_VALUE", "seen")
    stages = [
        dataclasses.replace(
            _stage(tmp_path, f"ok{n}", PROBE, "0"), resources=Resources(cpus_per_proc=n)
        )
        for n in (1, 2)
    ]
    failing = _stage(tmp_path, "failing", PROBE, "5")
    outcome = run_local([*stages, failing], cpus=2, console=_quiet([*stages, failing]))
    assert sorted(outcome.ran) == ["ok1", "ok2"]
    assert outcome.failed["failing"] == f"stage failing failed (exit 5); log: {failing.log}"
    for n, st in zip((1, 2), stages):
        probe = json.loads((tmp_path / st.name / "probe.json").read_text())
        assert probe["torch_preloaded"] is (warm == "1")
        assert probe["argv"] == [str(tmp_path / f"{st.name}.py"), str(tmp_path / st.name), "0"]
        assert (probe["cwd"], probe["path0"]) == (str(REPO), str(tmp_path))
        assert (probe["env"], probe["unbuffered"], probe["threads"]) == ("seen", "1", n)
        assert probe["usr2_blocked"]  # submitit's preemption signal is for the job, not the tool
        # DataLoader workers start as a fresh interpreter's would, not through the forkserver
        # (which re-imports torch in every worker, every epoch)
        assert probe["start_method"] == multiprocessing.get_start_method()
        log = st.log.read_text()
        assert "to stdout" in log and "to stderr" in log
