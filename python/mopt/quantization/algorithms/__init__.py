"""Calibration algorithms: the registry, max calibration, the shared layer-wise driver and
decoder replay, and one module per method (each registers itself on import)."""

from . import collect, registry  # noqa: F401
from . import awq, calib_histogram, gptq, lsq, smoothquant  # noqa: F401
from .registry import algorithm_function, calibration_algorithms, register_calibration_algorithm

__all__ = ["algorithm_function", "calibration_algorithms", "register_calibration_algorithm"]
