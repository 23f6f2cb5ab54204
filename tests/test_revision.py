"""The code revision every record carries (`als_det.revision`): a git commit with a dirty flag in a
checkout, a digest of the package elsewhere; and the runner saying when a finished stage came from
other code. Everything runs on copies of the sources in pytest's folder: the checkout these tests
run from is never edited."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from als_det.experiment.commands import Command
from als_det.experiment.plan import Resources
from als_det.experiment.stages import Stage
from als_det.experiment.sweep import Cell, cell_revisions, revisions_section
from als_det.revision import code_revision, revision_of

REPO = Path(__file__).resolve().parents[1]


def _copy_sources(dst: Path, folders=("als_det", "tools", "configs")) -> Path:
    """The working tree's files (tracked and untracked, not ignored) under `folders`."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "--", *folders],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for rel in listed:
        if (REPO / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)
    return dst


def _git(cwd: Path, *args: str) -> str:
    env = dict(
        os.environ,
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def _commit_all(root: Path) -> str:
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "copy")
    return _git(root, "rev-parse", "HEAD")


def is_dirty(revision: str) -> bool:
    return "+dirty." in revision


def _edit(path: Path, line: str = "# edited") -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


def test_this_process_has_a_revision_of_either_kind():
    rev = code_revision()
    assert rev.startswith(("git:", "sources:")) and rev == code_revision()


def test_git_checkout_commit_and_dirty_flag(tmp_path):
    root = _copy_sources(tmp_path / "repo", ("als_det", "tools"))
    (root / "configs").mkdir()
    (root / "configs" / "x.yaml").write_text("SEED: 1\n")
    commit = _commit_all(root)
    package = root / "als_det"
    assert revision_of(package) == f"git:{commit}"

    _edit(root / "configs" / "x.yaml")  # configs are recorded in full, not part of the revision
    assert revision_of(package) == f"git:{commit}"

    _edit(package / "engine" / "loops.py")
    first = revision_of(package)
    assert first.startswith(f"git:{commit}+dirty.") and is_dirty(first)
    _edit(package / "engine" / "loops.py", "# edited again")
    second = revision_of(package)
    assert is_dirty(second) and second != first  # two edits of one commit differ

    _git(root, "checkout", "--", "als_det/engine/loops.py")
    assert revision_of(package) == f"git:{commit}"
    (root / "tools" / "new_tool.py").write_text("print(1)\n")  # untracked code counts
    assert is_dirty(revision_of(package))
    (root / "tools" / "new_tool.py").unlink()
    (package / "cli.py").rename(package / "cli2.py")
    assert is_dirty(revision_of(package))


def test_outside_git_a_digest_of_the_package(tmp_path):
    package = _copy_sources(tmp_path / "site", ("als_det",)) / "als_det"
    first = revision_of(package)
    assert first.startswith("sources:") and len(first) == len("sources:") + 64
    (package / "__pycache__").mkdir(exist_ok=True)
    (package / "__pycache__" / "x.cpython-310.pyc").write_bytes(b"\0")
    assert revision_of(package) == first  # byte code is not source
    _edit(package / "metrics" / "intervals.py")
    assert revision_of(package) not in (first, "") and not is_dirty(revision_of(package))


def test_a_package_inside_an_unrelated_checkout_is_a_digest(tmp_path):
    """An installed wheel in a virtual environment inside some checkout: git does not track it."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "README").write_text("x\n")
    _commit_all(root)
    package = _copy_sources(root / ".venv" / "site", ("als_det",)) / "als_det"
    assert revision_of(package).startswith("sources:")


def _stage(state: Path, name: str, revision: str | None) -> Stage:
    st = Stage(
        name, "pretrain", Command("tools/x.py", ()), Resources(), state, state / f"{name}.log"
    )
    state.mkdir(parents=True, exist_ok=True)
    record = {"fingerprint": "f"} | ({} if revision is None else {"revision": revision})
    st.marker.write_text(json.dumps(record))
    return st


def test_the_sweep_report_lists_every_revision(tmp_path):
    state = tmp_path / ".stages"
    cells = [
        Cell(
            f"hard_e1_s{seed}",
            "hard",
            seed,
            1,
            _stage(state, f"pretrain_hard_e1_s{seed}", "git:a"),
            _stage(state, f"evaluate_hard_e1_s{seed}", rev),
        )
        for seed, rev in ((0, "git:a"), (1, "git:b+dirty.c"), (2, None))
    ]
    revisions = cell_revisions(cells)
    assert revisions == {
        "git:a": ["pretrain_hard_e1_s0", "evaluate_hard_e1_s0", "pretrain_hard_e1_s1"]
        + ["pretrain_hard_e1_s2"],
        "git:b+dirty.c": ["evaluate_hard_e1_s1"],
        "unrecorded": ["evaluate_hard_e1_s2"],
    }
    text = revisions_section(revisions)
    assert "3 code revisions" in text and "- `git:b+dirty.c`: evaluate_hard_e1_s1" in text
    assert revisions_section({"git:a": ["x"]}) == "Code revision of every cell: `git:a`.\n"


def _tiny_plan(root: Path) -> Path:
    """The smoke plan cut to its data and one pretraining: the stages whose records matter here."""
    raw = yaml.safe_load((REPO / "configs/experiments/smoke.yaml").read_text())
    raw.update(arms={"hard": raw["arms"]["hard"]}, evaluate=None, detection=[], report=None)
    plan = root / "configs" / "experiments" / "tiny.yaml"
    plan.write_text(yaml.safe_dump(raw))
    return plan


def _run(root: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    plan = root / "configs/experiments/tiny.yaml"
    cmd = [sys.executable, "tools/run_experiment.py", "--plan", str(plan), "--out", str(out)]
    done = subprocess.run(
        [*cmd, *extra], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["git", "sources"])
def test_a_source_edit_between_two_runs_is_named_then_rerun(tmp_path, kind):
    root = _copy_sources(tmp_path / "repo")
    _tiny_plan(root)
    commit = _commit_all(root) if kind == "git" else None
    out = tmp_path / "out"
    _run(root, out)
    run_json = json.loads((out / "pretrain" / "hard" / "run.json").read_text())
    record = json.loads((out / ".stages" / "pretrain_hard.json").read_text())
    assert run_json["revision"] == record["revision"]
    assert record["revision"] == (f"git:{commit}" if commit else revision_of(root / "als_det"))

    _edit(root / "als_det" / "engine" / "loops.py")
    second = _run(root, out)
    warning = [ln for ln in second.stderr.splitlines() if "another code revision" in ln]
    assert len(warning) == 1 and "pretrain_hard (" + record["revision"] in warning[0], (
        second.stderr[-3000:]
    )
    assert "--rerun-other-revisions" in warning[0]
    assert "0 stage(s) ran, 2 reused" in second.stderr

    third = _run(root, out, "--rerun-other-revisions")
    assert "2 stage(s) ran, 0 reused" in third.stderr
    new = json.loads((out / ".stages" / "pretrain_hard.json").read_text())["revision"]
    assert new != record["revision"] and new == revision_of(root / "als_det")
    assert json.loads((out / "pretrain" / "hard" / "run.json").read_text())["revision"] == new
    assert list((out / "pretrain").glob("hard.previous-*")), "the earlier run is kept aside"
    fourth = _run(root, out)
    assert "another code revision" not in fourth.stderr
