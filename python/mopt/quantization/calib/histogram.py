"""Histogram calibrator: entropy, percentile and MSE amax from histograms of |x| (the C++
class; SPEC §5).

The first batch fixes ``num_bins`` bins over [0, max|x|]; a later batch with a larger max appends
bins of the same width; counts accumulate, so memory stays one histogram per channel whatever
the number of batches. Ours: ``axis`` gives one histogram per channel (the reference raises
NotImplementedError). ``grow_method`` is deprecated and ignored, as in the reference.
"""

from ... import _C

__all__ = ["HistogramCalibrator"]

HistogramCalibrator = _C.HistogramCalibrator
HistogramCalibrator.__module__ = __name__
