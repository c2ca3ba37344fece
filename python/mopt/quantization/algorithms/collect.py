"""Max calibration and the statistics collection every algorithm builds on.

Each quantizer's core decides whether it takes part (``needs_calibration``: enabled, static, with
a calibrator), what its calibrator sees and how amax comes out; this module switches the model's
quantizers between collecting and quantizing around a ``forward_loop`` pass.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from torch import nn

from ..utils import named_quantizers, quantized_modules
from .registry import register_calibration_algorithm

__all__ = [
    "ForwardLoop",
    "enable_stats_collection",
    "finish_stats_collection",
    "abort_stats_collection",
    "weight_only_calibrate",
    "weight_stages",
    "max_calibrate",
]

ForwardLoop = Callable[[nn.Module], Any]


def enable_stats_collection(model: nn.Module) -> None:
    """Puts every quantizer that needs calibration in collect-only mode."""
    for _, q in named_quantizers(model):
        if q.needs_calibration:
            q.disable_quant()
            q.enable_calib()


def finish_stats_collection(model: nn.Module, method: str | None = None, **kwargs) -> None:
    """Loads amax from each calibrating quantizer (``compute_amax(method, **kwargs)`` for
    histogram calibrators) and switches it back to quantizing."""
    for _, q in named_quantizers(model):
        if not q.is_calib_enabled:
            continue
        if q.calibrator is not None:
            if method is None:
                q.load_calib_amax()
            else:
                q.load_calib_amax(method, **kwargs)
        q.disable_calib()
        q.enable_quant()


def abort_stats_collection(model: nn.Module) -> None:
    """Switches calibrating quantizers back to quantizing and drops what they collected (the
    forward loop failed part-way: a partial statistic must not become an amax)."""
    for _, q in named_quantizers(model):
        if not q.is_calib_enabled:
            continue
        q.core.reset_calibrator()
        q.disable_calib()
        q.enable_quant()


def weight_stages(model: nn.Module):
    """(layer name, layer, weight, weight quantizer stages) of every quantized layer with a
    weight (the stages of a SequentialQuantizer in order, or the one quantizer)."""
    for name, module in quantized_modules(model):
        wq = getattr(module, "weight_quantizer", None)
        weight = getattr(module, "weight", None)
        if wq is None or weight is None:
            continue
        yield name, module, weight, list(wq) if isinstance(wq, nn.Sequential) else [wq]


def weight_only_calibrate(model: nn.Module, only_uncalibrated: bool = False) -> None:
    """Calibrates weight quantizers from the weights themselves (no data needed). With
    `only_uncalibrated`, only layers the forward loop never reached, with a warning naming
    each."""
    for name, module, weight, quantizers in weight_stages(model):
        pending = [q for q in quantizers if q.needs_calibration
                   and (not only_uncalibrated or q.amax is None)]
        if not pending:
            continue
        if only_uncalibrated:
            warnings.warn(
                f"mopt: layer '{name}' ({type(module).__name__}) was not reached by the "
                "forward loop; its weight quantizer is calibrated from the weight alone",
                stacklevel=3,
            )
        with torch.no_grad():
            x = weight
            for q in quantizers:
                if q in pending:
                    q.reset_amax()
                    q.collect(x)
                    q.load_calib_amax()
                x = q(x)


def collect_and_load(model: nn.Module, forward_loop: ForwardLoop) -> None:
    """Runs `forward_loop` with every quantizer that needs calibration collecting, then loads
    their amax; on failure what they collected is dropped."""
    enable_stats_collection(model)
    try:
        with torch.no_grad():
            forward_loop(model)
    except BaseException:
        abort_stats_collection(model)
        raise
    with warnings.catch_warnings():
        # a weight quantizer the loop never reached is reported once, by weight_only_calibrate
        warnings.filterwarnings("ignore", message=r"mopt: quantizer '[^']*weight_quantizer[^']*' "
                                r"collected no data")
        finish_stats_collection(model)


def max_calibrate(model: nn.Module, forward_loop: ForwardLoop | None = None) -> None:
    """Max calibration: running max of |x| per quantizer; weights only without forward_loop."""
    if forward_loop is None:
        weight_only_calibrate(model)
        return
    collect_and_load(model, forward_loop)
    weight_only_calibrate(model, only_uncalibrated=True)


register_calibration_algorithm("max", max_calibrate)
