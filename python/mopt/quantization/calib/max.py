"""Max calibrator: running max of |x| over every dim but the kept axes (the C++ class)."""

from ... import _C
from ..._compat import refused_method

__all__ = ["MaxCalibrator"]

MaxCalibrator = _C.MaxCalibrator
MaxCalibrator.__module__ = __name__

# ModelOpt's track_amax history: the C++ calibrator does not keep it.
if not hasattr(MaxCalibrator, "amaxs"):
    MaxCalibrator.amaxs = property(refused_method(
        "MaxCalibrator.amaxs", "the per-batch amax history (track_amax=True); the C++ "
        "MaxCalibrator keeps only the running max"))
