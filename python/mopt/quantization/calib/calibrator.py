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

    def _kept_axes(self) -> list[int] | None:
        if self._axis is None:
            return None
        return [self._axis] if isinstance(self._axis, int) else list(self._axis)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_bits={self._num_bits}, axis={self._axis})"
