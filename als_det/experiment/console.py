"""One terminal for the stages that the local launcher runs side by side.

Each stage's output is cut into lines, and each line is printed whole with the stage's name in
front, so two stages never garble one line. Progress bars (tqdm's redraws: text after a "\\r"
that no "\\n" has ended yet) are drawn for one stage only, the one that started first of those
running, and only when the output is a terminal; every other stage shows the final version of
each line, as its log keeps it (`stages.FinalRedraws`). The stage logs hold the full output.
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
from collections.abc import Callable, Iterable
from typing import BinaryIO

from als_det.experiment.stages import FinalRedraws


class _Lines:
    """The file a stage's `FinalRedraws` writes its finished lines into: the console."""

    def __init__(self, console: Console, name: str) -> None:
        self.console, self.name = console, name

    def write(self, line: bytes) -> None:
        self.console._print(self.name, line)


class Console:
    def __init__(
        self, names: Iterable[str], stream: BinaryIO | None = None, live: bool | None = None
    ) -> None:
        """`names`: every stage that may run (the prefixes are as wide as the longest); `live`:
        draw one stage's progress bar (default: when `stream` is a terminal)."""
        self.stream = stream if stream is not None else sys.stdout.buffer
        self.live = self.stream.isatty() if live is None else live
        self.width = max((len(n) for n in names), default=0)
        self.lock = threading.RLock()
        self.running: dict[str, FinalRedraws] = {}  # in the order the stages started
        self.drawn = 0  # characters of the progress bar now on the terminal's last line

    def prefix(self, name: str) -> str:
        return f"{name.ljust(self.width)} | "

    def open(self, name: str) -> Callable[[bytes], None]:
        """A running stage's output sink (`stages.run_stage`'s `output`)."""
        with self.lock:
            self.running[name] = FinalRedraws(_Lines(self, name))

        def write(chunk: bytes) -> None:
            with self.lock:
                self.running[name].write(chunk)
                self._draw()

        return write

    def close(self, name: str) -> None:
        """The stage ended: its unfinished last line is printed, as its log keeps it."""
        with self.lock:
            self.running.pop(name).close()
            self._draw()

    def clear(self, record: logging.LogRecord | None = None) -> bool:
        """Take the progress bar off the terminal (before a log record is written: used as a
        logging filter, hence the record and the True)."""
        with self.lock:
            if self.drawn:
                self.stream.write(b"\r" + b" " * self.drawn + b"\r")
                self.stream.flush()
                self.drawn = 0
        return True

    def _print(self, name: str, line: bytes) -> None:
        self.clear()
        self.stream.write(self.prefix(name).encode() + line.rstrip(b"\n") + b"\n")
        self.stream.flush()

    def _draw(self) -> None:
        """The first running stage's progress bar, cut to the terminal's width."""
        if not self.live:
            return
        name, lines = next(iter(self.running.items()), (None, None))
        bar = lines.pending.rstrip(b"\r").rsplit(b"\r", 1)[-1] if lines else b""
        text = ""
        if name is not None and bar.strip():
            columns = shutil.get_terminal_size().columns
            text = (self.prefix(name) + bar.decode(errors="replace"))[: columns - 1]
        if not text and not self.drawn:
            return
        padding = " " * max(0, self.drawn - len(text))
        self.stream.write(("\r" + text + padding).encode())
        self.stream.flush()
        self.drawn = len(text)
