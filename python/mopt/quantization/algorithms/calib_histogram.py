"""Calibration algorithms from histograms (``entropy``, ``percentile``, ``histogram_mse``) and the
MSE amax search (``mse``), SPEC §1 ``calibrate`` and §5.

* ``entropy`` / ``percentile`` / ``histogram_mse`` (ours: the reference cannot reach its histogram
  calibrator through ``algorithm``): every static activation quantizer collects a histogram of
  |x| during ``forward_loop`` and takes its amax from it; weight quantizers keep max calibration
  (TensorRT's recipe) unless their config already asks for ``calibrator: "histogram"``.
* ``mse``: max calibration, then for every static quantizer the multiplier of its amax on
  ``linspace(start_multiplier, stop_multiplier, num_steps)`` with the least squared error of its
  fake-quantized output, per channel, accumulated over the calibration batches.

The original calibrators are restored afterwards, so a later ``calibrate`` starts afresh.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..calib import HistogramCalibrator, MseCalibrator
from ..model_calib import ForwardLoop, max_calibrate, register_calibration_algorithm
from ..nn.modules.tensor_quantizer import TensorQuantizer
from ..utils import named_quantizers, quantized_modules

__all__ = ["entropy_calibrate", "histogram_mse_calibrate", "mse_calibrate", "percentile_calibrate"]

# Keyword options of each histogram algorithm: collection options, then compute_amax options.
_COLLECT_OPTIONS = {"num_bins": 2048, "skip_zeros": False}
_AMAX_OPTIONS = {
    "entropy": {"stride": 1, "start_bin": 128},
    "percentile": {"percentile": 99.99},
    "mse": {"stride": 1, "start_bin": 128},
}


def _is_static_target(q: TensorQuantizer) -> bool:
    return q.is_enabled and q.is_static and q._calibrator is not None


def _is_weight_quantizer(name: str) -> bool:
    # "...weight_quantizer" or a member of a SequentialQuantizer "...weight_quantizer.0"
    return "weight_quantizer" in name.split(".")


def _split_options(algorithm: str, method: str, options: dict) -> tuple[dict, dict]:
    allowed = {**_COLLECT_OPTIONS, **_AMAX_OPTIONS[method]}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for algorithm {algorithm!r}; accepted: {sorted(allowed)}"
        )
    merged = {**allowed, **options}
    for key in ("num_bins", "stride", "start_bin"):
        v = merged.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ValueError(f"{algorithm} option {key} must be a non-negative int, got {v!r}")
    if "start_bin" in merged and merged["start_bin"] >= merged["num_bins"]:
        raise ValueError(
            f"{algorithm}: start_bin {merged['start_bin']} leaves no candidate among "
            f"num_bins={merged['num_bins']} bins"
        )
    p = merged.get("percentile", 0.0)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 100:
        raise ValueError(f"{algorithm} option percentile must be in [0, 100], got {p!r}")
    collect = {k: merged[k] for k in _COLLECT_OPTIONS}
    amax = {k: merged[k] for k in _AMAX_OPTIONS[method]}
    return collect, amax


class _DefaultMethodHistogramCalibrator(HistogramCalibrator):
    """A HistogramCalibrator whose ``compute_amax()`` without a method uses the algorithm's, so
    the generic max-calibration flow (forward loop, weights of unreached layers) can load it."""

    def __init__(self, method: str, amax_options: dict, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._default_method = method
        self._default_options = amax_options

    def compute_amax(self, method: str | None = None, **options: Any) -> torch.Tensor | None:
        if method is None:
            method, options = self._default_method, {**self._default_options, **options}
        return super().compute_amax(method, **options)


def _histogram_calibrate(algorithm: str, method: str, model: nn.Module,
                         forward_loop: ForwardLoop | None, **options: Any) -> None:
    collect_opts, amax_opts = _split_options(algorithm, method, options)
    targets = []
    for name, q in named_quantizers(model):
        if not _is_static_target(q):
            continue
        configured = isinstance(q._calibrator, HistogramCalibrator)
        if _is_weight_quantizer(name) and not configured:
            continue  # weights keep max calibration
        if q._kind not in ("int", "minifloat"):
            continue  # NVFP4/MX/NF4 keep a max-calibrated tensor scale
        if method == "entropy" and q._kind != "int":
            raise NotImplementedError(
                f"algorithm 'entropy' needs integer quantizers; '{name}' uses num_bits "
                f"{q.num_bits} (use 'percentile' or 'histogram_mse')"
            )
        targets.append(q)
    # Built before any quantizer changes, so bad options leave the model untouched.
    calibrators = [
        _DefaultMethodHistogramCalibrator(
            method, amax_opts, num_bits=q.num_bits, axis=q._calibrator._axis,
            unsigned=q.unsigned, **collect_opts)
        for q in targets
    ]
    originals = [q._calibrator for q in targets]
    try:
        for q, cal in zip(targets, calibrators):
            q._calibrator = cal
        max_calibrate(model, forward_loop)
    finally:
        for q, cal in zip(targets, originals):
            q._calibrator = cal


def entropy_calibrate(model: nn.Module, forward_loop: ForwardLoop | None = None,
                      **options: Any) -> None:
    """amax of least KL divergence (options: stride, start_bin, num_bins, skip_zeros)."""
    _histogram_calibrate("entropy", "entropy", model, forward_loop, **options)


def percentile_calibrate(model: nn.Module, forward_loop: ForwardLoop | None = None,
                         **options: Any) -> None:
    """amax at a percentile of |x| (options: percentile, num_bins, skip_zeros)."""
    _histogram_calibrate("percentile", "percentile", model, forward_loop, **options)


def histogram_mse_calibrate(model: nn.Module, forward_loop: ForwardLoop | None = None,
                            **options: Any) -> None:
    """amax of least MSE over the histogram's bin centres (options: stride, start_bin,
    num_bins, skip_zeros)."""
    _histogram_calibrate("histogram_mse", "mse", model, forward_loop, **options)


def _collect_unreached_weights(model: nn.Module, pending: set[int]) -> None:
    # Weights of layers the forward loop never reached are searched on the weight itself.
    for _, module in quantized_modules(model):
        wq = getattr(module, "weight_quantizer", None)
        weight = getattr(module, "weight", None)
        if wq is None or weight is None:
            continue
        quantizers = list(wq) if isinstance(wq, nn.Sequential) else [wq]
        if not any(id(q) in pending for q in quantizers):
            continue
        x = weight
        for q in quantizers:
            if id(q) in pending:
                q.collect(x)
            x = q(x)


@torch.no_grad()
def mse_calibrate(model: nn.Module, forward_loop: ForwardLoop | None = None,
                  num_steps: int | None = None, start_multiplier: float = 0.25,
                  stop_multiplier: float = 4.0, step_size: float | None = None) -> None:
    """Max calibration, then per channel the amax multiplier with the least output MSE.

    `num_steps` (default 10) candidates on [start_multiplier, stop_multiplier]; `step_size`
    (nvidia-modelopt >= 0.41's form) gives ceil((stop - start) / step_size) + 1 steps instead.
    """
    if num_steps is not None and step_size is not None:
        raise ValueError("give num_steps or step_size for algorithm 'mse', not both")
    if step_size is not None:
        if not step_size > 0:
            raise ValueError(f"mse step_size must be > 0, got {step_size}")
        num_steps = math.ceil((stop_multiplier - start_multiplier) / step_size) + 1
    if num_steps is None:
        num_steps = 10
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"mse num_steps must be an int >= 1, got {num_steps!r}")
    if not 0 <= start_multiplier <= stop_multiplier:
        raise ValueError(
            f"mse multipliers must satisfy 0 <= start_multiplier <= stop_multiplier, got "
            f"{start_multiplier} and {stop_multiplier}"
        )
    max_calibrate(model, forward_loop)
    # A NaN/Inf amax is left for calibrate's check, which names the layer.
    targets = [
        q for _, q in named_quantizers(model)
        if _is_static_target(q) and q.amax is not None and q._kind in ("int", "minifloat")
        and bool(torch.isfinite(q.amax).all()) and bool((q.amax >= 0).all())
    ]
    # Built before any quantizer changes, so bad options leave the model untouched.
    calibrators = [
        MseCalibrator._for_quantizer(q, num_steps, start_multiplier, stop_multiplier)
        for q in targets
    ]
    originals = [q._calibrator for q in targets]
    static = [q for _, q in named_quantizers(model) if _is_static_target(q)]
    flags = [(q._if_quant, q._if_calib) for q in static]
    try:
        for q, cal in zip(targets, calibrators):
            q._calibrator = cal
        # As in max calibration, the forward runs unquantized through the static quantizers.
        for q in static:
            q.disable_quant()
        for q in targets:
            q.enable_calib()
        try:
            if forward_loop is not None:
                forward_loop(model)
        finally:
            for q, (if_quant, if_calib) in zip(static, flags):
                q._if_quant, q._if_calib = if_quant, if_calib
        _collect_unreached_weights(
            model, {id(q) for q, cal in zip(targets, calibrators) if cal._losses_sum is None}
        )
        for q, cal in zip(targets, calibrators):
            amax = cal.compute_amax()
            if amax is not None:
                q.amax = amax.to(q.amax.device)
    finally:
        for q, cal in zip(targets, originals):
            q._calibrator = cal


register_calibration_algorithm("entropy", entropy_calibrate)
register_calibration_algorithm("percentile", percentile_calibrate)
register_calibration_algorithm("histogram_mse", histogram_mse_calibrate)
register_calibration_algorithm("mse", mse_calibrate)
