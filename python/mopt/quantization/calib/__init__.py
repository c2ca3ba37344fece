"""Calibrators: turn activation statistics into amax (mtq.calib)."""

from .calibrator import _Calibrator
from .max import MaxCalibrator

__all__ = ["MaxCalibrator", "_Calibrator"]
