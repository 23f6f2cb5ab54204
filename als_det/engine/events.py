"""A pretraining run's per-epoch metrics, written in one place: `OUTPUT_DIR/metrics.jsonl` (one JSON
object per epoch, rewritten atomically), TensorBoard (`OUTPUT_DIR/tb/`) and the console line.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from als_det.io import atomic_write_text

logger = logging.getLogger(__name__)


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    """The console summary of one epoch's row."""
    val = (
        (
            f", val top1 {row['val_top1']:.3f} top5 {row['val_top5']:.3f} nll {row['val_nll']:.3f} "
            f"ece {row['val_ece']:.3f}"
        )
        if "val_top1" in row
        else ""
    )
    cov = "n/a" if row["mean_coverage"] is None else f"{row['mean_coverage']:.3f}"
    return (
        f"epoch {row['epoch']}/{epochs}: loss {row['train_loss']:.4f}, mean e {row['mean_e']:.3f}, "
        f"mean crop coverage {cov}, {row['images_per_s']:.0f} img/s, bad images "
        f"{row['bad_images']}, no-box skips {row['skipped_no_box']}{val} "
        f"({row['epoch_time_s']:.1f} s)"
    )


class MetricsWriter:
    """Writes each epoch's row to metrics.jsonl, TensorBoard and the console (on rank 0 only:
    `enabled=False` elsewhere). A resumed run starts from the earlier `history`; TensorBoard
    events after `start_epoch` (from an interrupted attempt) are purged."""

    def __init__(
        self,
        out_dir: str | Path,
        epochs: int,
        history: list[dict[str, Any]],
        start_epoch: int,
        enabled: bool = True,
    ) -> None:
        self.path = Path(out_dir) / "metrics.jsonl"
        self.epochs, self.history, self.enabled = epochs, list(history), enabled
        self.tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(out_dir) / "tb"), purge_step=start_epoch + 1)

    def resume(self, checkpoint_row: dict[str, Any] | None) -> None:
        """On resume: metrics.jsonl becomes `history` (rows up to the checkpoint's epoch) plus the
        checkpoint's own row (`metrics_row`) where a kill after the checkpoint left it unwritten."""
        if not self.enabled:
            return
        last = self.history[-1]["epoch"] if self.history else 0
        if checkpoint_row is not None and checkpoint_row["epoch"] > last:
            logger.info(
                "epoch %d's metrics row restored from the checkpoint", checkpoint_row["epoch"]
            )
            self.write(checkpoint_row)
        else:
            self._write_file()

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.history.append(row)
        self._write_file()
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.tb.add_scalar(key, value, row["epoch"])
        self.tb.flush()
        logger.info(epoch_line(row, self.epochs))

    def _write_file(self) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.history))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
