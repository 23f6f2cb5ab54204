"""als_det: Adaptive Label Smoothing transfer-learning detection benchmark suite."""

__version__ = "0.1.0"
