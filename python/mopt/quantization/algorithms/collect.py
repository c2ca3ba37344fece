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

from ... import _C
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
    "calibrates_from_weights",
    "calibrate_from_weights",
    "layer_weight_quantizers",
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


def _reads_layer_weight(module: nn.Module, weight: Any) -> bool:
    # The library's forward hands `module.weight` to the weight quantizer as it is. A forward of
    # the class's or the instance's own (accelerate wraps it), a tensor subclass (FSDP2's
    # DTensor), a meta weight (offloaded) or an empty one (ZeRO-3 and FSDP1 keep a 0-element
    # placeholder outside forward) may not be what the weight quantizer sees in a forward.
    from ..nn.modules.quant_module import QuantLinearConvBase

    return (type(module).forward is QuantLinearConvBase.forward
            and "forward" not in vars(module)
            and type(weight) in (torch.Tensor, nn.Parameter)
            and not weight.is_meta and weight.numel() > 0)


def layer_weight_quantizers(model: nn.Module) -> set[int]:
    """ids of the quantizers (SequentialQuantizer stages too) that see their layer's weight,
    read from the layer, exactly as the layer's forward passes it. A layer under a forward
    pre-hook (its own or an ancestor's: FSDP2 and DeepSpeed ZeRO-3 gather weights there) is left
    out."""
    hooked: set[int] = set()
    if torch.nn.modules.module._global_forward_pre_hooks:
        hooked = {id(m) for m in model.modules()}
    for m in model.modules():
        if m._forward_pre_hooks:
            hooked.update(id(sub) for sub in m.modules())
    return {id(q) for _, module, weight, quantizers in weight_stages(model)
            if id(module) not in hooked and _reads_layer_weight(module, weight)
            for q in quantizers}


def calibrates_from_weights(model: nn.Module) -> bool:
    """True when max calibration needs no forward_loop (``_C.max_calibration_from_weights``):
    only weight quantizers that see their layer's weight need calibration."""
    readable = layer_weight_quantizers(model)
    quantizers = [q for _, q in named_quantizers(model)]
    return _C.max_calibration_from_weights([q.core for q in quantizers],
                                           [id(q) in readable for q in quantizers])


def calibrate_from_weights(model: nn.Module) -> None:
    """Max calibration as one forward pass would do it, without the data: every quantizer that
    needs calibration collects (quantization off) while each layer's weight goes through its
    weight quantizer, stages in order."""
    enable_stats_collection(model)
    try:
        with torch.no_grad():
            for _, module, weight, quantizers in weight_stages(model):
                if any(q.is_calib_enabled for q in quantizers):
                    module.weight_quantizer(weight)
    except BaseException:
        abort_stats_collection(model)
        raise
    finish_stats_collection(model)


def max_calibrate(model: nn.Module, forward_loop: ForwardLoop | None = None,
                  skip_forward_without_activation_calib: bool = True) -> None:
    """Max calibration: running max of |x| per quantizer; weights only without forward_loop.

    When only weight quantizers need calibration (``calibrates_from_weights``) and
    `skip_forward_without_activation_calib` (ModelOpt's option; its default is False), they are
    calibrated from the weights and `forward_loop` is not run: the same amax, without the passes
    over the data (one line says so)."""
    if forward_loop is None:
        weight_only_calibrate(model)
        return
    if skip_forward_without_activation_calib and calibrates_from_weights(model):
        print(_C.MAX_CALIBRATION_FROM_WEIGHTS_NOTE)
        calibrate_from_weights(model)
        return
    collect_and_load(model, forward_loop)
    weight_only_calibrate(model, only_uncalibrated=True)


register_calibration_algorithm("max", max_calibrate)
