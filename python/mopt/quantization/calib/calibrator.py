"""The calibrator protocol (mtq.calib._Calibrator).

The built-in calibrators are the C++ classes of ``mopt._C`` (one implementation for Python and
C++): a quantizer's calibrator is the same object on both sides. ``_Calibrator`` is the base a
Python calibrator may derive from (any object with ``collect(x)``, ``compute_amax()`` and
``reset()`` works too); the quantizer writes the kept axes of each input to its ``_axis``.
"""

from __future__ import annotations

import abc

import torch

from ... import _C

__all__ = ["_Calibrator"]


class _Calibrator(abc.ABC):  # noqa: B024 (the built-ins register as virtual subclasses)
    """Base of calibrators: ``collect(x)`` per batch, ``compute_amax(...)`` once, ``reset()``."""

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

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_bits={self._num_bits}, axis={self._axis})"


for _builtin in (_C.MaxCalibrator, _C.HistogramCalibrator, _C.MseCalibrator):
    _Calibrator.register(_builtin)
