"""MSE calibrator: the amax multiplier with the least quantization error (the C++ class).

``collect(x)`` adds, for every candidate multiplier m in ``linspace(start_multiplier,
stop_multiplier, num_steps)``, the error ``error_func(x, quant_func(x, amax * m))`` (default:
squared error) summed over every axis but `axis`; ``compute_amax()`` returns the initial amax
times the best multiplier of each channel. ``quant_func`` and ``error_func`` may be any Python
callables.
"""

from ... import _C

__all__ = ["MseCalibrator"]

MseCalibrator = _C.MseCalibrator
MseCalibrator.__module__ = __name__
