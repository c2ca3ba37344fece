"""Calibration algorithms from histograms (``entropy``, ``percentile``, ``histogram_mse``) and the
MSE amax search (``mse``), SPEC §1 ``calibrate`` and §5.

* ``entropy`` / ``percentile`` / ``histogram_mse`` (ours: the reference cannot reach its histogram
  calibrator through ``algorithm``): every static activation quantizer collects a histogram of
  |x| during ``forward_loop`` and takes its amax from it; weight quantizers keep max calibration
  (TensorRT's recipe) unless their config already asks for ``calibrator: "histogram"``.
* ``step_percentile``: for diffusion denoisers, every static activation quantizer keeps its amax
  per sampling step and takes a percentile over the steps (C++ ``StepAmaxCalibrator``).
* ``mse``: max calibration, then for every static quantizer the multiplier of its amax on
  ``linspace(start_multiplier, stop_multiplier, num_steps)`` with the least squared error of its
  fake-quantized output, per channel, accumulated over the calibration batches.

The original calibrators are restored afterwards, so a later ``calibrate`` starts afresh.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ... import _C
from ..utils import named_quantizers
from .collect import ForwardLoop, max_calibrate, weight_stages
from .registry import register_calibration_algorithm

__all__ = ["entropy_calibrate", "histogram_mse_calibrate", "mse_calibrate", "percentile_calibrate",
           "step_percentile_calibrate"]


def _is_weight_quantizer(name: str) -> bool:
    # "...weight_quantizer" or a member of a SequentialQuantizer "...weight_quantizer.0"
    return "weight_quantizer" in name.split(".")


class _SwappedCalibrators:
    """Puts calibrators into quantizers for the block and the originals back afterwards."""

    def __init__(self, pairs: list[tuple[Any, Any]]) -> None:
        self.pairs = pairs
        self.originals: list[Any] = []

    def __enter__(self) -> _SwappedCalibrators:
        self.originals = [q.calibrator for q, _ in self.pairs]
        try:
            for q, cal in self.pairs:
                q.calibrator = cal  # an asymmetric quantizer refuses a non-min/max calibrator
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for (q, _), cal in zip(self.pairs, self.originals):
            q.calibrator = cal


def _histogram_calibrate(algorithm: str, method: str, model: nn.Module,
                         forward_loop: ForwardLoop | None, num_bins: int = 2048,
                         skip_zeros: bool = False, **amax_options: Any) -> None:
    targets = []
    for name, q in named_quantizers(model):
        if not q.needs_calibration:
            continue
        configured = isinstance(q.calibrator, _C.HistogramCalibrator)
        if _is_weight_quantizer(name) and not configured:
            continue  # weights keep max calibration
        fmt = q.format
        if not fmt["histogram_calibration"]:
            continue  # NVFP4/MX/NF4 keep a max-calibrated tensor scale
        if method == "entropy" and not fmt["entropy_calibration"]:
            raise NotImplementedError(
                f"algorithm 'entropy' needs integer quantizers; '{name}' uses num_bits "
                f"{q.num_bits} (use 'percentile' or 'histogram_mse')"
            )
        targets.append(q)
    # Built before any quantizer changes, so bad options leave the model untouched.
    calibrators = []
    for q in targets:
        cal = _C.HistogramCalibrator(num_bits=q.num_bits, axis=q.calibrator._axis,
                                     unsigned=q.unsigned, num_bins=num_bins,
                                     skip_zeros=skip_zeros)
        cal.set_default_method(method, **amax_options)
        calibrators.append(cal)
    with _SwappedCalibrators(list(zip(targets, calibrators))):
        max_calibrate(model, forward_loop, skip_forward_without_activation_calib=False)


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
    for _, _, weight, quantizers in weight_stages(model):
        if not any(id(q) in pending for q in quantizers):
            continue
        x = weight
        for q in quantizers:
            if id(q) in pending:
                q.collect(x)
            x = q(x)


@torch.no_grad()
def mse_calibrate(model: nn.Module, forward_loop: ForwardLoop | None = None,
                  num_steps: int = 10, start_multiplier: float = 0.25,
                  stop_multiplier: float = 4.0) -> None:
    """Max calibration, then per channel the amax multiplier with the least output MSE over
    `num_steps` candidates on [start_multiplier, stop_multiplier] (``step_size``, ModelOpt
    >= 0.41's form, is turned into num_steps when the config is parsed)."""
    max_calibrate(model, forward_loop, skip_forward_without_activation_calib=False)
    static = [q for _, q in named_quantizers(model) if q.needs_calibration]
    # A NaN/Inf amax is left for calibrate's check, which names the layer.
    targets = [
        q for q in static
        if q.amax is not None and q.format["histogram_calibration"]
        and bool(torch.isfinite(q.amax).all()) and bool((q.amax >= 0).all())
    ]
    # Built before any quantizer changes, so bad options leave the model untouched.
    calibrators = [q.core.make_mse_calibrator(q.amax, num_steps, start_multiplier,
                                              stop_multiplier) for q in targets]
    modes = [q.mode for q in static]
    with _SwappedCalibrators(list(zip(targets, calibrators))):
        # As in max calibration, the forward runs unquantized through the static quantizers.
        for q in static:
            q.disable_quant()
        for q in targets:
            q.enable_calib()
        try:
            if forward_loop is not None:
                forward_loop(model)
        finally:
            for q, mode in zip(static, modes):
                q.set_mode(mode)
        _collect_unreached_weights(
            model, {id(q) for q, cal in zip(targets, calibrators) if not cal._has_data()})
        for q in targets:
            amax = q.core.compute_amax()
            if amax is not None:
                q.amax = amax.to(q.amax.device)


def step_percentile_calibrate(model: nn.Module, forward_loop: ForwardLoop | None = None,
                              num_steps: int = 0, percentile: float = 50.0,
                              collect: str = "max") -> None:
    """Static activation amax as a `percentile` (0-100) of per-step amaxes, for a model a
    sampler calls once per step (a diffusion denoiser): `forward_loop` makes whole sampling runs
    of `num_steps` calls each; call i is step i mod num_steps; a step's calls combine by
    `collect` ("max" or "mean"). Weights keep max calibration. (C++ ``StepAmaxCalibrator``;
    options checked by the C++ parser.)"""
    targets = [q for name, q in named_quantizers(model)
               if q.needs_calibration and not _is_weight_quantizer(name)
               and q.format["histogram_calibration"]]
    # Built before any quantizer changes, so bad options leave the model untouched.
    calibrators = [_C.StepAmaxCalibrator(num_bits=q.num_bits, axis=q.calibrator._axis,
                                         unsigned=q.unsigned, num_steps=num_steps,
                                         percentile=percentile, collect=collect)
                   for q in targets]
    with _SwappedCalibrators(list(zip(targets, calibrators))):
        max_calibrate(model, forward_loop, skip_forward_without_activation_calib=False)


register_calibration_algorithm("entropy", entropy_calibrate)
register_calibration_algorithm("percentile", percentile_calibrate)
register_calibration_algorithm("histogram_mse", histogram_mse_calibrate)
register_calibration_algorithm("mse", mse_calibrate)
register_calibration_algorithm("step_percentile", step_percentile_calibrate)
