"""The command line every tool shares: its shape, its help page, and how a user error ends."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_runs import tiny_coco, tool_module

from als_det.config import load_config

REPO = Path(__file__).resolve().parents[1]
TOOLS = sorted(p.stem for p in (REPO / "tools").glob("[!_]*.py"))
CONFIG_TOOLS = {"pretrain", "generate_data", "finetune_coco"}
DEMO = "configs/pretrain/demo_als.yaml"


def _parser(name: str) -> argparse.ArgumentParser:
    return tool_module(name)["build_parser"]()


@pytest.mark.parametrize("name", TOOLS)
def test_every_tool_has_the_shared_shape_and_documents_every_option(name):
    parser = _parser(name)
    dests = {a.dest for a in parser._actions}
    assert "debug" in dests
    assert (name in CONFIG_TOOLS) == ({"config_file", "opts"} <= dests)
    for action in parser._actions:
        if action.help != argparse.SUPPRESS and action.dest != "help":
            assert action.help, f"{name}: {action.option_strings or action.dest} has no help text"
    assert (REPO / "tools" / f"{name}.py").stat().st_mode & 0o111, (
        f"tools/{name}.py is not executable"
    )


@pytest.mark.parametrize("name", TOOLS)
def test_a_python_without_the_environment_gets_a_hint(name):
    """No site-packages (-S) and no PYTHONPATH (-E): als_det cannot be imported."""
    done = subprocess.run(
        [sys.executable, "-S", "-E", f"tools/{name}.py", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.endswith(
        "has no als_det or torch: run `make setup`, then `source .venv/bin/activate`\n"
    )


def test_help_shows_defaults():
    text = _parser("evaluate").format_help()
    assert (
        "(default: black)" in text
        and "(default: 64)" in text
        and "(default: output/evaluate)" in text
    )
    assert "(default: 1)" in _parser("finetune_coco").format_help()  # --num-gpus


@pytest.mark.parametrize("name", TOOLS)
def test_help_shows_the_usage_examples_as_written(name):
    """Every line of a tool's docstring, its `\\` continuations included, is in its --help as
    written."""
    tool = tool_module(name)
    help_lines = tool["build_parser"]().format_help().splitlines()
    doc_lines = [line.rstrip() for line in tool["__doc__"].strip().splitlines()]
    for i, line in enumerate(doc_lines):
        if line.endswith(" \\"):
            at = help_lines.index(line)  # ValueError if the line was rewrapped
            assert help_lines[at + 1] == doc_lines[i + 1], f"{name}: continuation of {line!r} lost"
    assert set(filter(None, doc_lines)) <= set(help_lines)


def test_documented_pretraining_folders_are_the_configs_output_dirs():
    """`output/pretrain/NAME/...` in the docs and tool examples is what
    configs/pretrain/NAME.yaml writes."""
    pages = [
        REPO / "README.md",
        REPO / "pretrained" / "README.md",
        *(REPO / "docs").glob("*.md"),
        *(REPO / "tools").glob("*.py"),
    ]
    found = {m for page in pages for m in re.findall(r"output/pretrain/(\w+)/", page.read_text())}
    assert found, "no documented pretraining folder (pattern out of date?)"
    for name in found:
        config = REPO / "configs" / "pretrain" / f"{name}.yaml"
        assert config.is_file(), f"output/pretrain/{name}/ is documented but no config writes it"
        assert load_config(str(config)).OUTPUT_DIR == f"output/pretrain/{name}"


def test_config_file_aliases_and_trailing_overrides():
    parse = _parser("pretrain").parse_args
    new = parse(["--resume", "--config-file", DEMO, "SOLVER.EPOCHS", "2", "SEED", "3"])
    old = parse(["--config", DEMO, "--resume", "--opts", "SOLVER.EPOCHS", "2", "SEED", "3"])
    assert new.config_file == old.config_file == DEMO and new.resume and old.resume
    assert new.opts == old.opts == ["SOLVER.EPOCHS", "2", "SEED", "3"]
    assert parse(["--config", DEMO, "SEED", "3", "--opts", "SOLVER.EPOCHS", "2"]).opts == [
        "SEED",
        "3",
        "SOLVER.EPOCHS",
        "2",
    ]
    # --resume is a flag: what follows it is never its value
    assert parse(["--config", DEMO, "--resume", "SEED", "3"]).opts == ["SEED", "3"]
    assert parse(["--config", DEMO, "--resume-from", "a.pth"]).resume_from == "a.pth"


def test_an_option_among_the_overrides_or_an_odd_override_is_one_clear_error():
    with pytest.raises(
        ValueError, match="--resume comes after the config overrides .* put options before them"
    ):
        load_config(DEMO, ["SEED", "3", "--resume"])
    with pytest.raises(ValueError, match=r"KEY VALUE pairs, got \['SEED'\]"):
        load_config(DEMO, ["SEED"])
    done = subprocess.run(
        [sys.executable, "tools/pretrain.py", "--config-file", DEMO, "SEED", "3", "--resume"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "put options before them: tools/pretrain.py --resume ... --config-file" in done.stderr
    with pytest.raises(ValueError, match="config overrides: Non-existent key: SOLVER.EPOCH"):
        load_config(DEMO, ["SOLVER.EPOCH", "3"])


def test_optional_values_never_swallow_the_next_token():
    parse = _parser("finetune_coco").parse_args
    args = parse(["--coco-root", "coco", "--resume", "MODEL.WEIGHTS", "w.pkl"])
    assert args.coco_root == "coco" and args.resume and args.opts == ["MODEL.WEIGHTS", "w.pkl"]
    with pytest.raises(SystemExit):
        parse(
            ["--coco-root"]
        )  # a value is required, so a following token is never taken by surprise


def test_a_user_error_is_one_line_and_its_traceback_stays_in_the_log(tmp_path, capsys):
    js, img = tiny_coco(tmp_path / "data", anns=[])
    out = tmp_path / "run"
    argv = [
        "--dataset",
        f"tiny={js}:{img}",
        "--train-dataset",
        "tiny",
        "--test-dataset",
        "tiny",
        "OUTPUT_DIR",
        str(out),
    ]
    assert tool_module("finetune_coco")["main"](argv) == 2
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert (
        len(err) == 1
        and err[0].startswith(f"error: {js}: no usable box")
        and "Traceback" not in stderr
    )
    # refused before the run writes anything (its folder included); an error once the run has
    # started keeps its traceback in log.txt (tests/test_finetune_faults.py, the full disk)
    assert err[0].endswith("(--debug shows the traceback)") and not out.exists()
    with pytest.raises(ValueError, match="no usable box"):
        tool_module("finetune_coco")["main"](["--debug", *argv])
    assert tool_module("pretrain")["main"](["--config-file", DEMO, "SOLVER.EPOCH", "3"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: config overrides: Non-existent key: SOLVER.EPOCH (--debug shows the traceback)"
    )


def test_no_known_harmless_warning_on_start():
    run = subprocess.run(
        [sys.executable, "tools/finetune_coco.py", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and run.stderr == "" and "--config-file FILE" in run.stdout
