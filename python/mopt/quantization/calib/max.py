"""Max calibrator: running max of |x| over every dim but the kept axes (C++ core)."""

from __future__ import annotations

import torch

from ... import _C
from .calibrator import _Calibrator

__all__ = ["MaxCalibrator"]


class MaxCalibrator(_Calibrator):
    """Running elementwise max of |x| reduced over all dims but `axis`.

    Memory stays one amax tensor whatever the number of batches. ``track_amax`` also keeps each
    batch's amax in ``_amaxs``. A batch whose reduced shape differs from the first raises
    ``RuntimeError("amax shape changed!")``.
    """

    def __init__(self, num_bits: int = 8, axis: int | tuple | list | None = None,
                 unsigned: bool = False, track_amax: bool = False) -> None:
        super().__init__(num_bits, axis, unsigned)
        self._track_amax = track_amax
        self._impl = None
        self._impl_axis = None

    def _new_core(self, axes) -> _C.MaxCalibrator:
        bits = self._num_bits if isinstance(self._num_bits, int) else 1 + sum(self._num_bits)
        return _C.MaxCalibrator(bits, axes, self._unsigned, self._track_amax)

    def _has_data(self) -> bool:
        return self._impl.compute_amax() is not None

    def collect(self, x: torch.Tensor) -> None:
        """Folds one batch into the running amax."""
        self._core().collect(x)

    def compute_amax(self) -> torch.Tensor | None:
        """The running amax, or None when nothing was collected."""
        return None if self._impl is None else self._impl.compute_amax()

    def reset(self) -> None:
        """Forgets everything collected."""
        if self._impl is not None:
            self._impl.reset()

    @property
    def _calib_amax(self) -> torch.Tensor | None:
        return self.compute_amax()

    @property
    def _amaxs(self) -> list[torch.Tensor]:
        return [] if self._impl is None else list(self._impl.amaxs)
