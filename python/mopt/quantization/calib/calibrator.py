"""Calibrator protocol shared by every calibrator."""

from __future__ import annotations

import torch

__all__ = ["_Calibrator"]


class _Calibrator:
    """Base of calibrators: ``collect(x)`` per batch, ``compute_amax(...)`` once, ``reset()``.

    ``_axis`` holds the axes kept in amax; a quantizer with static blocks sets it to the axes of
    its block view before the first ``collect``.
    """

    def __init__(self, num_bits: int = 8, axis: int | tuple | list | None = None,
                 unsigned: bool = False) -> None:
        self._num_bits = num_bits
        self._axis = axis
        self._unsigned = unsigned

    def collect(self, x: torch.Tensor) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement collect()")

    def compute_amax(self, *args, **kwargs) -> torch.Tensor | None:
        raise NotImplementedError(f"{type(self).__name__} does not implement compute_amax()")

    def reset(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement reset()")

    # Calibrators backed by a C++ calibrator (max, histogram, MSE) build it with _new_core for
    # the kept axes and rebuild it when the axes change before any data arrived.
    _impl = None
    _impl_axis = None

    def _new_core(self, axes: list[int] | None):
        raise NotImplementedError(f"{type(self).__name__} has no C++ calibrator")

    def _has_data(self) -> bool:
        raise NotImplementedError(f"{type(self).__name__} has no C++ calibrator")

    def _core(self):
        axes = self._kept_axes()
        if self._impl is None or axes != self._impl_axis:
            if self._impl is not None and self._has_data():
                raise RuntimeError("amax shape changed! (the calibrator's axis changed mid-way)")
            self._impl = self._new_core(axes)
            self._impl_axis = axes
        return self._impl

    def _kept_axes(self) -> list[int] | None:
        if self._axis is None:
            return None
        return [self._axis] if isinstance(self._axis, int) else list(self._axis)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_bits={self._num_bits}, axis={self._axis})"
