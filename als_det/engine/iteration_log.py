"""Where a long epoch's time goes: every `TRAIN.LOG_PERIOD` iterations a plain log line and
TensorBoard scalars (`OUTPUT_DIR/tb/iterations`) with images/s, the share of step time spent
waiting for data, the run's ETA and peak memory.

The line is written with tqdm's progress bar cleared first (`tqdm.external_write_mode`), so the
stage logs of `tools/run_experiment.py`, which keep only the final redraw of a bar, keep it whole.
"""

from __future__ import annotations

import logging
import resource
import time
from datetime import timedelta
from pathlib import Path

import torch
from tqdm import tqdm

logger = logging.getLogger(__name__)


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(GiB, what it is): the CUDA caching allocator's peak on a GPU, else this process's peak
    resident set size (Linux reports it in KiB; DataLoader workers not included)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "CUDA max allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process peak RSS"


class IterationLog:
    """The per-iteration figures of one run (rank 0 only: `enabled=False` elsewhere).

    images/s is the global rate (this rank's images times `world_size`: every rank steps the same
    batch size); the data wait of an iteration is the time from the end of the previous step until
    the batch is in hand (on `DATA.DECODE device` that includes the decode, except GPU work still
    queued when the batch is handed over, which shows in the step time); the ETA extrapolates
    this epoch's mean iteration time over the iterations left in the run (evaluation excluded).
    """

    def __init__(
        self,
        out_dir: str | Path,
        period: int,
        epochs: int,
        iters_per_epoch: int,
        device: torch.device,
        world_size: int,
        start_epoch: int = 0,
        enabled: bool = True,
    ) -> None:
        self.period, self.epochs, self.iters = period, epochs, iters_per_epoch
        self.device, self.world_size = device, world_size
        self.enabled = enabled and period > 0
        self.tb = None
        if self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(
                str(Path(out_dir) / "tb" / "iterations"),
                purge_step=start_epoch * iters_per_epoch + 1,
            )
        self.epoch = 0

    def start_epoch(self, epoch: int) -> None:
        """`epoch` is 1-based."""
        self.epoch = epoch
        self.epoch_start = self.window_start = time.perf_counter()
        self.window_images, self.window_wait = 0, 0.0

    def step(self, it: int, images: int, wait_s: float) -> None:
        """Iteration `it` (0-based) of the epoch took `images` and waited `wait_s` for them."""
        if not self.enabled:
            return
        self.window_images += images
        self.window_wait += wait_s
        if (it + 1) % self.period == 0:
            self._emit(it + 1)

    def _emit(self, done: int) -> None:
        now = time.perf_counter()
        span = max(now - self.window_start, 1e-9)
        rate = self.window_images * self.world_size / span
        wait = self.window_wait / span
        left = (self.iters - done) + (self.epochs - self.epoch) * self.iters
        eta = (now - self.epoch_start) / done * max(0, left)
        memory, kind = peak_memory(self.device)
        line = (
            f"epoch {self.epoch}/{self.epochs} iter {done}/{self.iters}: {rate:.1f} img/s, "
            f"data wait {100 * wait:.0f}% of step time, ETA {timedelta(seconds=round(eta))} "
            f"(training), peak memory {memory:.2f} GiB ({kind})"
        )
        with tqdm.external_write_mode():
            logger.info(line)
        step = (self.epoch - 1) * self.iters + done
        for key, value in (
            ("images_per_s", rate),
            ("data_wait_fraction", wait),
            ("eta_s", eta),
            ("peak_memory_gib", memory),
        ):
            self.tb.add_scalar(f"iter/{key}", value, step)
        self.tb.flush()
        self.window_start, self.window_images, self.window_wait = now, 0, 0.0

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
