"""SmoothQuant calibration: ``algorithm="smoothquant"`` or ``{"method": "smoothquant",
"alpha": 1.0, "debug": False}`` (SPEC §1, §5).

For every quantized ``nn.Linear`` whose input and weight quantizers are 8-bit integers with a
per-tensor static input amax, the per-channel max |x| of its inputs is streamed from a forward
pre-hook into ``mopt._C.SmoothQuantLayer`` (memory: one vector per layer); the scales
``s = clamp(w_max^(1-alpha) / act_amax^alpha, 1e-4, 1e4)`` are folded: the input quantizer's
``pre_quant_scale`` becomes ``s``, ``W[:, j] /= s_j`` (saved first with ParameterBackup, so a failed
``mtq.quantize`` restores it), the weight amax is recalibrated and the input amax set to
``max(act_amax * s)``. All other quantizers get max calibration in the same pass.

Layers it cannot smooth (other formats, per-channel or dynamic inputs) keep max calibration,
with a warning naming them; a layer the forward loop never reaches is left unsmoothed with a
warning; NaN/Inf activations raise RuntimeError naming the layer.

Debug information: with ``debug=True`` each smoothed layer keeps a :class:`SmoothQuantDebug` as
``module.smoothquant`` (alpha, per-channel act_amax and weight max, the scales, the input amax).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable, Iterator

import torch
from torch import nn

from ... import _C
from ..model_calib import (
    enable_stats_collection,
    finish_stats_collection,
    register_calibration_algorithm,
    weight_only_calibrate,
)
from ..nn.modules.quant_module import QuantModule
from ..nn.modules.tensor_quantizer import SequentialQuantizer, TensorQuantizer
from ..utils import ParameterBackup

__all__ = ["SmoothQuantDebug", "smoothquant"]


@dataclasses.dataclass
class SmoothQuantDebug:
    """What SmoothQuant computed for one layer (``module.smoothquant`` with ``debug=True``)."""

    alpha: float
    act_amax: torch.Tensor  # [in] max |x| per channel (inputs as the weight saw them)
    weight_max: torch.Tensor  # [in] max over output rows of |W| before smoothing
    scale: torch.Tensor  # [in] s; the weight columns were divided by it
    pre_quant_scale: torch.Tensor  # [in] the input quantizer's pre_quant_scale afterwards
    input_amax: torch.Tensor  # [] the per-tensor input amax afterwards


def quantized_linears(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Quantized nn.Linear layers (y = x W^T + b) with input and weight quantizers."""
    for name, module in model.named_modules():
        if (
            isinstance(module, QuantModule)
            and isinstance(module, nn.Linear)
            and hasattr(module, "weight_quantizer")
            and hasattr(module, "input_quantizer")
        ):
            yield name, module


def input_pre_hook(fn: Callable[[torch.Tensor], None]) -> Callable:
    """A forward pre-hook (with_kwargs=True) that passes the layer's input to `fn`."""

    def hook(module, args, kwargs):
        x = args[0] if args else kwargs.get("input")
        if isinstance(x, torch.Tensor):
            with torch.no_grad():
                fn(x)

    return hook


def run_with_input_hooks(model: nn.Module, forward_loop: Callable,
                         hooks: list[tuple[nn.Module, Callable[[torch.Tensor], None]]],
                         calibrate_others: bool = False) -> None:
    """Runs ``forward_loop(model)`` without gradients with ``fn(input)`` called before each
    ``module`` of `hooks` computes; with `calibrate_others`, every quantizer in calibration mode
    collects statistics in the same pass (max calibration)."""
    handles = [module.register_forward_pre_hook(input_pre_hook(fn), with_kwargs=True)
               for module, fn in hooks]
    if calibrate_others:
        enable_stats_collection(model)
    try:
        with torch.no_grad():
            forward_loop(model)
    finally:
        for h in handles:
            h.remove()
        if calibrate_others:
            finish_stats_collection(model)


def recalibrate_weight(module: nn.Module, first: int = 0) -> None:
    """Max-calibrates the weight quantizer(s) of `module` on its current weight, from stage
    `first` of a SequentialQuantizer on (each stage sees the previous stages' output)."""
    wq = module.weight_quantizer
    stages = list(wq) if isinstance(wq, SequentialQuantizer) else [wq]
    with torch.no_grad():
        x = module.weight
        for i, q in enumerate(stages):
            if i >= first and q.is_enabled and q.is_static and q._calibrator is not None:
                q.reset_amax()
                q.collect(x)
                q.load_calib_amax()
            x = q(x)


def set_input_amax(quantizer: TensorQuantizer, amax: torch.Tensor) -> None:
    """Replaces a per-tensor input amax (its shape may differ from the calibrated one)."""
    quantizer.reset_amax()
    quantizer.amax = amax.detach().float()


def _is_int8(q: nn.Module) -> bool:
    return isinstance(q, TensorQuantizer) and not isinstance(q.num_bits, (tuple, list)) \
        and q.num_bits == 8


def _unsupported_reason(module: nn.Module) -> str | None:
    iq, wq = module.input_quantizer, module.weight_quantizer
    if not _is_int8(iq) or not _is_int8(wq):
        return "SmoothQuant smooths 8-bit integer weights and activations only"
    if not iq.is_static or iq.axis is not None or iq.block_sizes is not None:
        return "SmoothQuant needs a static per-tensor input quantizer"
    return None


def smoothquant(model: nn.Module, forward_loop: Callable | None = None, alpha: float = 1.0,
                debug: bool = False) -> None:
    """Calibrates `model` with SmoothQuant (see the module docstring)."""
    if forward_loop is None:
        raise ValueError("smoothquant needs forward_loop: it smooths with activation statistics")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothquant alpha must be a number in [0, 1], got {alpha!r}")
    targets = []
    for name, module in quantized_linears(model):
        iq = module.input_quantizer
        if not iq.is_enabled:
            continue
        reason = _unsupported_reason(module)
        if reason is not None:
            warnings.warn(f"smoothquant: layer '{name}' is not smoothed ({reason}); it gets max "
                          "calibration", stacklevel=3)
            continue
        targets.append((name, module, _C.SmoothQuantLayer(module.weight, float(alpha), name)))

    # The smoothed input quantizers stay out of the max pass: their amax comes from the
    # per-channel statistics. Disabled, a quantizer still applies an earlier pre_quant_scale, so
    # the hook sees the input as the weight sees it.
    hooks = []
    for _, module, layer in targets:
        iq = module.input_quantizer
        iq.disable()
        hooks.append((module, lambda x, iq=iq, layer=layer: layer.collect(iq(x))))
    try:
        run_with_input_hooks(model, forward_loop, hooks, calibrate_others=True)
    finally:
        for _, module, _ in targets:
            module.input_quantizer.enable()

    smoothed = 0
    for name, module, layer in targets:
        iq = module.input_quantizer
        if layer.num_batches == 0:
            warnings.warn(f"smoothquant: layer '{name}' was not reached by forward_loop; it is not "
                          "smoothed and its input quantizer stays uncalibrated", stacklevel=3)
            continue
        # the layer reads module.weight, so its debug view is taken before the weight changes
        weight_max, scale = (layer.weight_max(), layer.scale()) if debug else (None, None)
        result = layer.compute(iq.pre_quant_scale)
        ParameterBackup.save(module, "weight")
        with torch.no_grad():
            module.weight.copy_(result.weight)
        iq.pre_quant_scale = result.pre_quant_scale.to(module.weight.dtype)
        set_input_amax(iq, result.input_amax)
        recalibrate_weight(module)
        if debug:
            module.smoothquant = SmoothQuantDebug(
                alpha=float(alpha), act_amax=layer.act_amax, weight_max=weight_max,
                scale=scale, pre_quant_scale=result.pre_quant_scale,
                input_amax=result.input_amax)
        smoothed += 1
    weight_only_calibrate(model, only_uncalibrated=True)
    print(f"Smoothed {smoothed} modules")


register_calibration_algorithm("smoothquant", smoothquant)
