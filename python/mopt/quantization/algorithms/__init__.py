"""Calibration algorithms beyond max; each module registers itself on import."""

from . import awq, smoothquant  # noqa: F401,E402
from . import gptq  # noqa: F401,E402
from . import calib_histogram  # noqa: F401,E402
