"""Calibrators: turn activation statistics into amax (mtq.calib)."""

from .calibrator import _Calibrator
from .histogram import HistogramCalibrator
from .max import MaxCalibrator
from .mse import MseCalibrator

__all__ = ["HistogramCalibrator", "MaxCalibrator", "MseCalibrator", "_Calibrator"]

from ..._compat import define_refusals as _define_refusals  # noqa: E402

__all__ += _define_refusals(globals(), "modelopt.torch.quantization.calib", {
    "BiasCalibrator": ("class", "affine-bias calibration (the `bias` of a KV-cache quantizer "
                       "is not calibrated by mopt)"),
    "NVFP4ActHeadroomCalibrator": ("class", "NVFP4 activation-headroom calibration"),
    "NVFP4MSECalibrator": ("class", "MSE search over static NVFP4 per-block scales; use "
                           "algorithm 'mse' with MseCalibrator"),
    "calibrate_weights": ("function", "ModelOpt's standalone weight calibration; mtq.calibrate "
                          "without forward_loop calibrates the weights"),
})
