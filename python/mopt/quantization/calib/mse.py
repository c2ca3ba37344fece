"""MSE calibrator: the amax multiplier with the least quantization error (C++ core)."""

from __future__ import annotations

from typing import Callable

import torch

from ... import _C
from .calibrator import _Calibrator

__all__ = ["MseCalibrator"]

QuantFunc = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class MseCalibrator(_Calibrator):
    """Per-tensor or per-channel search of ``amax * m`` for m in
    ``linspace(start_multiplier, stop_multiplier, num_steps)``.

    ``collect(x)`` adds, for every candidate, the error ``error_func(x, quant_func(x, amax * m))``
    (default: squared error) summed over every axis but `axis`; ``compute_amax()`` returns the
    initial amax times the best multiplier of each channel (the smaller one on ties). The loop,
    the losses and the arg-min run in C++; `quant_func` and `error_func` may be any Python
    callables.
    """

    def __init__(self, amax: torch.Tensor, axis: int | tuple | list | None = None,
                 num_steps: int = 10, start_multiplier: float = 0.25,
                 stop_multiplier: float = 4.0, quant_func: QuantFunc | None = None,
                 error_func: QuantFunc | None = None) -> None:
        super().__init__(num_bits=None, axis=axis, unsigned=None)
        if amax is None:
            raise ValueError("MseCalibrator needs an initial amax (run max calibration first)")
        if isinstance(num_steps, bool) or not isinstance(num_steps, int):
            raise TypeError(f"num_steps must be an int, got {num_steps!r}")
        for name, fn in (("quant_func", quant_func), ("error_func", error_func)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
        self._initial_amax = torch.as_tensor(amax).detach()
        self._num_steps = num_steps
        self._start_multiplier = float(start_multiplier)
        self._stop_multiplier = float(stop_multiplier)
        self._quant_func = quant_func
        self._error_func = error_func
        self._cfg_json = None  # set by _for_quantizer: the quant_func runs in C++
        self._impl = None
        self._impl_axis = None
        self._new_core(self._kept_axes())  # validates the arguments now

    @classmethod
    def _for_quantizer(cls, quantizer, num_steps: int = 10, start_multiplier: float = 0.25,
                       stop_multiplier: float = 4.0) -> MseCalibrator:
        """A calibrator searching around ``quantizer.amax`` with the quantizer's own format,
        applied to the quantizer's calibration view (pre-quant scale and blocks included)."""
        cal = cls.__new__(cls)
        _Calibrator.__init__(cal, num_bits=None, axis=quantizer._calibrator._axis, unsigned=None)
        cal._initial_amax = quantizer.amax.detach().clone()
        cal._num_steps = num_steps
        cal._start_multiplier = float(start_multiplier)
        cal._stop_multiplier = float(stop_multiplier)
        cal._quant_func = None
        cal._error_func = None
        cal._cfg_json = quantizer._cfg_json
        cal._impl = None
        cal._impl_axis = None
        cal._new_core(cal._kept_axes())
        return cal

    def _new_core(self, axes) -> _C.MseCalibrator:
        if self._cfg_json is not None:
            self._impl = _C.MseCalibrator.for_quantizer(
                self._initial_amax, axes, self._num_steps, self._start_multiplier,
                self._stop_multiplier, self._cfg_json)
        else:
            self._impl = _C.MseCalibrator(self._initial_amax, axes, self._num_steps,
                                          self._start_multiplier, self._stop_multiplier,
                                          self._quant_func, self._error_func)
        self._impl_axis = axes
        return self._impl

    def _has_data(self) -> bool:
        return bool(self._impl.losses)

    @torch.no_grad()
    def collect(self, x: torch.Tensor) -> None:
        """Adds every candidate's error on one batch."""
        self._core().collect(x)

    @torch.no_grad()
    def compute_amax(self, verbose: bool = False) -> torch.Tensor | None:
        """Initial amax times the best multiplier per channel; None before any collect."""
        amax = self._impl.compute_amax()
        if verbose and amax is not None:
            ratio = amax / self._initial_amax.to(amax.device)
            if ratio.numel() == 1:
                print(f"MSE Calibrator: best_amax/initial_amax ratio = {ratio.item():.4f}")
            else:
                print(f"MSE Calibrator: best_amax/initial_amax ratio - mean: "
                      f"{ratio.mean().item():.4f}, min: {ratio.min().item():.4f}, "
                      f"max: {ratio.max().item():.4f}")
        return amax

    def reset(self) -> None:
        """Forgets the accumulated losses (the initial amax stays)."""
        self._impl.reset()

    @property
    def _candidates(self) -> torch.Tensor | None:
        return self._impl.candidates

    @property
    def _losses_sum(self) -> list[torch.Tensor] | None:
        losses = self._impl.losses
        return list(losses) if losses else None

    def __repr__(self) -> str:
        return (f"MseCalibrator(axis={self._axis}, num_steps={self._num_steps}, "
                f"start_multiplier={self._start_multiplier}, "
                f"stop_multiplier={self._stop_multiplier})")
