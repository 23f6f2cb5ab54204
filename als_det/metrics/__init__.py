"""Metrics from logits/probabilities and labels; knows nothing of models or data."""

from als_det.metrics.calibration import (
    calibration_metrics,
    calibration_metrics_from_logits,
    fit_temperature,
    split_indices,
    temperature_degeneracy,
    temperature_scaling_report,
)

__all__ = [
    "calibration_metrics",
    "calibration_metrics_from_logits",
    "fit_temperature",
    "split_indices",
    "temperature_degeneracy",
    "temperature_scaling_report",
]
