"""Logging for every tool and run: the console, and a plain-text log file in the output folder.

`setup_logging()` is the first thing every `tools/` entry point does: the suite's loggers (and
detectron2's and fvcore's, whose messages the fine-tune tool shows) write to stderr in one plain
format (no colour codes), at INFO on rank 0 and at WARNING on the other ranks. stdout is left to
what a tool produces (a table, a command listing), so it can be piped. A run that owns an
output folder (pretraining, evaluation, fine-tuning) calls `setup_logging(folder)` once the folder
may be written: from then on every record, DEBUG included, also goes to `folder/log.txt` (rank 0;
appended), and the console shows a record of many lines (a config or model dump) as its first
line and a pointer to the file. A tool that stops on an error writes the traceback there too.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOGGERS = ("als_det", "detectron2", "fvcore")
LOG_NAME = "log.txt"
CONSOLE_LINES = 8  # longer records are cut on the console while a log file holds them


class _Formatter(logging.Formatter):
    """`[time name]: message`, with the level in front when it is WARNING or worse."""

    def __init__(self) -> None:
        super().__init__("[%(asctime)s %(name)s]: %(message)s", datefmt="%m/%d %H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        return text if record.levelno <= logging.INFO else f"{record.levelname} {text}"


class _ConsoleFormatter(_Formatter):
    """While a log file is open, a long record shows its first line and where the rest is."""

    log_path: Path | None = None

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        lines = text.splitlines()
        if self.log_path is None or len(lines) <= CONSOLE_LINES:
            return text
        return f"{lines[0]} [{len(lines) - 1} more lines in {self.log_path}]"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record comes (a test's capture, a redirect)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


_console = _StderrHandler()
_console.setFormatter(_ConsoleFormatter())
_file: logging.FileHandler | None = None


def current_rank() -> int:
    """This process's rank as torchrun sets it (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def setup_logging(output_dir: str | Path | None = None, rank: int | None = None) -> Path | None:
    """Console logging for this process (`rank`: default torchrun's RANK, else 0) and, with
    `output_dir`, its `log.txt` on rank 0 (replacing the file of an earlier run in this process).
    Returns the log file's path, if any. Calling it again only updates what it is given."""
    global _file
    rank = current_rank() if rank is None else rank
    _console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    for name in LOGGERS:
        log = logging.getLogger(name)
        log.setLevel(logging.DEBUG)
        if _console not in log.handlers:
            log.addHandler(_console)
    if output_dir is None or rank != 0:
        return None
    path = Path(output_dir) / LOG_NAME
    if _file is not None and Path(_file.baseFilename) == path.resolve():
        return path
    close_log_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    _file = logging.FileHandler(path, mode="a", encoding="utf-8")
    _file.setFormatter(_Formatter())
    for name in LOGGERS:
        logging.getLogger(name).addHandler(_file)
    _console.formatter.log_path = path
    return path


def log_path() -> Path | None:
    """The log file records go to now, if any."""
    return None if _file is None else Path(_file.baseFilename)


def close_log_file() -> None:
    """Stop writing the current log file (the console stays)."""
    global _file
    if _file is None:
        return
    for name in LOGGERS:
        logging.getLogger(name).removeHandler(_file)
    _file.close()
    _file = None
    _console.formatter.log_path = None


class _Keep(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def held_records() -> Iterator[list[logging.LogRecord]]:
    """The suite's records logged inside the block (shown on the console as usual), kept for
    `write_to_log_file`: a run checks everything before it writes into its folder, and its
    log.txt still holds what those checks said."""
    records: list[logging.LogRecord] = []
    keep = _Keep(records)
    for name in LOGGERS:
        logging.getLogger(name).addHandler(keep)
    try:
        yield records
    finally:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(keep)


def write_to_log_file(records: list[logging.LogRecord]) -> None:
    """Write records kept by `held_records` into the log file set up since (if any)."""
    if _file is not None:
        for record in records:
            _file.handle(record)
