"""Output folders. `check_output_folder` refuses one that cannot be (a file in the way, no
permission) before anything is written, for every tool that writes a folder.

One run per output folder: a fresh run into an OUTPUT_DIR that holds an earlier run first moves
that run's files into `OUTPUT_DIR/previous-<time>/`, so files of two runs never mix and no result
is destroyed. Pretraining (`als_det.engine.trainer`) and fine-tuning (`als_det.detection.trainer`)
both do this; `--resume` continues the run in the folder instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path


class OutputFolderError(ValueError):
    """An output folder that cannot be one: a file is in the way, or it cannot be written."""


def check_output_folder(folder: str | os.PathLike, what: str) -> Path:
    """Raise OutputFolderError (one line: `what`, e.g. "OUTPUT_DIR" or "--out", names the option)
    unless `folder` is a folder this process can write into, or one it can create: the nearest
    existing one of it and its parents must be a writable folder (an empty name is refused: it
    would be the current folder). Changes nothing."""
    if not str(folder).strip():
        raise OutputFolderError(f"{what} is empty: name the output folder")
    folder = Path(folder)
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"cannot be made: {existing} is a file"
        raise OutputFolderError(f"{what} {folder} {where}, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputFolderError(
            f"{what} {folder}: cannot write into {existing} (permission denied or a read-only "
            "file system)"
        )
    return folder


def set_aside_previous_run(
    out_dir: str | Path, patterns: Iterable[str], markers: Iterable[str]
) -> Path | None:
    """If `out_dir` holds any of `markers` (files only a run that started training writes), move
    every entry matching one of the glob `patterns` into `out_dir/previous-<time>/` and return that
    folder; otherwise change nothing and return None."""
    out_dir = Path(out_dir)
    if not any((out_dir / m).exists() for m in markers):
        return None
    old = sorted({p for pattern in patterns for p in out_dir.glob(pattern)})
    aside = out_dir / datetime.now().strftime("previous-%Y%m%d-%H%M%S-%f")
    aside.mkdir()
    for path in old:
        path.rename(aside / path.name)
    return aside


def set_aside_note(out_dir: str | Path, aside: Path) -> str:
    """What to tell the user after `set_aside_previous_run` moved a run."""
    return (
        f"note: {out_dir} held an earlier run; starting afresh, its files moved to {aside} "
        "(pass --resume to continue a run instead)"
    )
