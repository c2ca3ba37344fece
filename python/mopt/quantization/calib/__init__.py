"""Calibrators: turn activation statistics into amax (mtq.calib)."""

from .calibrator import _Calibrator
from .histogram import HistogramCalibrator
from .max import MaxCalibrator
from .mse import MseCalibrator

__all__ = ["HistogramCalibrator", "MaxCalibrator", "MseCalibrator", "_Calibrator"]
