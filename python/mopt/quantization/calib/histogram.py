"""Histogram calibrator: entropy, percentile and MSE amax from histograms of |x| (C++ core)."""

from __future__ import annotations

import warnings

import torch

from ... import _C
from .calibrator import _Calibrator

__all__ = ["HistogramCalibrator"]

_METHODS = ("entropy", "percentile", "mse")


class HistogramCalibrator(_Calibrator):
    """Streams histograms of |x| and turns them into amax (SPEC §5).

    The first batch fixes ``num_bins`` bins over [0, max|x|]; a later batch with a larger max
    appends bins of the same width; counts accumulate, so memory stays one histogram per channel
    whatever the number of batches. ``compute_amax(method)`` picks amax by:

    * ``"entropy"``: least KL divergence between the clipped histogram and its
      2^(num_bits-1+unsigned)-level quantization (candidates from ``start_bin`` every ``stride``
      bins; ties to the larger amax),
    * ``"percentile"``: the bin edge where the cumulative share reaches ``percentile`` / 100,
    * ``"mse"``: the bin centre minimizing the count-weighted fake-quantization MSE.

    Collection runs on the tensor's device (CPU and CUDA kernels); the amax searches run in C++.
    Ours: ``axis`` gives one histogram per channel (the reference raises NotImplementedError).
    ``grow_method`` is deprecated and ignored, as in the reference; collection always bins like
    the reference's default ``torch_hist=True``.
    """

    def __init__(self, num_bits: int | tuple = 8, axis: int | tuple | list | None = None,
                 unsigned: bool = False, num_bins: int = 2048, grow_method: str | None = None,
                 skip_zeros: bool = False, torch_hist: bool = True) -> None:
        super().__init__(num_bits, axis, unsigned)
        if grow_method is not None:
            warnings.warn("HistogramCalibrator: grow_method is deprecated and ignored",
                          DeprecationWarning, stacklevel=2)
        if not torch_hist:
            warnings.warn(
                "HistogramCalibrator: torch_hist=False is ignored; mopt bins |x| over [0, max] "
                "with its own kernels, as torch_hist=True does", UserWarning, stacklevel=2)
        if isinstance(num_bins, bool) or not isinstance(num_bins, int):
            raise TypeError(f"num_bins must be an int, got {num_bins!r}")
        self._num_bins = num_bins
        self._skip_zeros = bool(skip_zeros)
        self._torch_hist = torch_hist
        self._impl = None
        self._impl_axis = None
        self._new_core(self._kept_axes())  # validates the arguments now

    def _new_core(self, axes) -> _C.HistogramCalibrator:
        self._impl = _C.HistogramCalibrator(self._num_bits, axes, bool(self._unsigned),
                                            self._num_bins, self._skip_zeros)
        self._impl_axis = axes
        return self._impl

    def _has_data(self) -> bool:
        return self._impl.channels > 0

    @torch.no_grad()
    def collect(self, x: torch.Tensor) -> None:
        """Adds |x| of one batch to the histogram(s)."""
        self._core().collect(x)

    def compute_amax(self, method: str | None = None, *, stride: int = 1, start_bin: int = 128,
                     percentile: float = 99.99) -> torch.Tensor | None:
        """amax from the collected histogram(s) by `method` ("entropy", "percentile", "mse");
        None when nothing was collected."""
        if method is None:
            raise TypeError(
                "HistogramCalibrator.compute_amax needs a method: 'entropy', 'percentile' or "
                "'mse' (e.g. quantizer.load_calib_amax('entropy'), or calibrate with "
                "algorithm='entropy' / 'percentile' / 'histogram_mse')")
        if not isinstance(method, str) or method not in _METHODS:
            raise TypeError(f"Unknown calibration method {method!r}; expected one of {_METHODS}")
        return self._impl.compute_amax(method, stride=stride, start_bin=start_bin,
                                       percentile=percentile)

    def reset(self) -> None:
        """Forgets every histogram."""
        self._impl.reset()

    @property
    def _calib_hist(self) -> torch.Tensor | list | None:
        """Counts per bin (int64, CPU): one tensor per tensor, a list per channel."""
        return self._per_channel(self._impl.histogram)

    @property
    def _calib_bin_edges(self) -> torch.Tensor | list | None:
        """Bin edges (fp32, CPU), like the counts."""
        return self._per_channel(self._impl.bin_edges)

    def _per_channel(self, fn):
        n = self._impl.channels
        if n == 0:
            return None
        if self._impl_axis is None:
            return fn(0)
        return [fn(c) for c in range(n)]

    def __str__(self) -> str:
        edges = self._calib_bin_edges
        if isinstance(edges, torch.Tensor):
            s = f"[{edges[0]:.3f}, ..., {edges[-1]:.3f}]({len(edges)})"
        elif isinstance(edges, list):
            s = f"{len(edges)} channels"
        else:
            s = "None"
        return f"HistogramCalibrator(calib_bin_edges={s})"

    def __repr__(self) -> str:
        return (f"HistogramCalibrator(num_bits={self._num_bits}, axis={self._axis}, "
                f"unsigned={self._unsigned}, num_bins={self._num_bins}, "
                f"skip_zeros={self._skip_zeros})")
