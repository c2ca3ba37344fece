"""Max calibrator: running max of |x| over every dim but the kept axes (the C++ class)."""

from ... import _C

__all__ = ["MaxCalibrator"]

MaxCalibrator = _C.MaxCalibrator
MaxCalibrator.__module__ = __name__
