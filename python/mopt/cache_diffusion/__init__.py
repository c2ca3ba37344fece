"""mopt.cache_diffusion (``import mopt.cache_diffusion as mtc``): cache the denoiser of a
diffusion pipeline across its steps (SPEC §4).

* ``mtc.cachify.prepare(pipe, config_list)`` / ``enable`` / ``disable`` / ``reset_status`` /
  ``infer(pipe)``: ModelOpt's block caching API; each cached block asks a C++ cache policy
  (``include/mopt/cache/policy.h``) at every call whether to run or to reuse (or forecast) its
  features.
* ``SDXL_DEFAULT_CONFIG``, ``PIXART_DEFAULT_CONFIG``, ``SD3_DEFAULT_CONFIG``: ModelOpt's schedules.
* ``mtc.models``: the real DDPMs mopt measures caching on (``load_ddpm``); ``mtc.metrics``:
  PSNR, SSIM and the classifier-feature Frechet distance (C++).
* ``mtc.calibrate(pipe, budget, calib_seeds)``: the cheapest policy meeting a PSNR budget.
"""

from __future__ import annotations

from . import cachify, metrics, models
from .calibrate import CalibrationResult, calibrate
from .config import (
    PIXART_DEFAULT_CONFIG,
    SD3_DEFAULT_CONFIG,
    SDXL_DEFAULT_CONFIG,
    CacheConfigList,
)
from .module import CachedModule

__all__ = [
    "cachify",
    "metrics",
    "models",
    "calibrate",
    "CalibrationResult",
    "CachedModule",
    "CacheConfigList",
    "SDXL_DEFAULT_CONFIG",
    "PIXART_DEFAULT_CONFIG",
    "SD3_DEFAULT_CONFIG",
]
