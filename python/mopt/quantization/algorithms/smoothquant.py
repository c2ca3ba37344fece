"""SmoothQuant calibration: ``algorithm="smoothquant"`` or ``{"method": "smoothquant",
"alpha": 1.0, "debug": False}`` (SPEC §1, §5); ``"alpha": "auto"`` searches alpha per layer.

For every quantized ``nn.Linear`` whose input and weight quantizers are 8-bit integers with a
per-tensor static input amax, the per-channel max |x| of its inputs is streamed from a forward
pre-hook into ``mopt._C.SmoothQuantLayer`` (memory: one vector per layer); the scales
``s = clamp(w_max^(1-alpha) / act_amax^alpha, 1e-4, 1e4)`` are folded: the input quantizer's
``pre_quant_scale`` becomes ``s``, ``W[:, j] /= s_j`` (saved first with ParameterBackup, so a failed
``mtq.quantize`` restores it), the weight amax is recalibrated and the input amax set to
``max(act_amax * s)``. All other quantizers get max calibration in the same pass. The statistics
and the math are the C++ solver; the pass and the write-back are the shared layer-wise driver
(``layerwise.py``); which layers it smooths is decided in C++ (``_C.smoothquant_skip_reason``).

With ``{"method": "smoothquant", "alpha": "auto", "alpha_step": 0.1, "max_tokens_per_batch": 64}``
a second pass over ``forward_loop`` scores each alpha of the grid 0, step, ..., 1 per layer: the
output error against the float layer of the smoothed layer with its input and weight quantized
by their own configs, on up to ``max_tokens_per_batch`` tokens of each batch; the first minimum
wins (the solver's C++ ``search``; the searched layers compute in float during that pass).

Layers it cannot smooth (other formats, per-channel or static asymmetric inputs) keep max
calibration,
with a warning naming them; a layer the forward loop never reaches is left unsmoothed with a
warning; NaN/Inf activations raise RuntimeError naming the layer.

Debug information: with ``debug=True`` each smoothed layer keeps a :class:`SmoothQuantDebug` as
``module.smoothquant`` (alpha, per-channel act_amax and weight max, the scales, the input amax).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Callable

import torch
from torch import nn

from ... import _C
from ..nn.modules.tensor_quantizer import TensorQuantizer
from .collect import weight_only_calibrate
from .layerwise import (
    QuantizersOff,
    SolvedLayer,
    apply_update,
    recalibrate_weight,
    replace_amax,
    solvable_linears,
    solve,
    solver_pass,
)
from .registry import register_calibration_algorithm

__all__ = ["SmoothQuantDebug", "smoothquant"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class SmoothQuantDebug:
    """What SmoothQuant computed for one layer (``module.smoothquant`` with ``debug=True``)."""

    alpha: float  # the alpha used (the searched one with alpha="auto")
    act_amax: torch.Tensor  # [in] max |x| per channel (inputs as the weight saw them)
    weight_max: torch.Tensor  # [in] max over output rows of |W| before smoothing
    scale: torch.Tensor  # [in] s; the weight columns were divided by it
    pre_quant_scale: torch.Tensor  # [in] the input quantizer's pre_quant_scale afterwards
    input_amax: torch.Tensor  # [] the per-tensor input amax afterwards
    alphas: list[float] | None = None  # alpha="auto": the alphas tried
    losses: torch.Tensor | None = None  # alpha="auto": their summed output errors (fp64)


def _core(q: nn.Module):
    return q.core if isinstance(q, TensorQuantizer) else None


def _solver(name: str, module: nn.Module, alpha: float | str, alpha_step: float | None,
            max_tokens_per_batch: int | None):
    if alpha == "auto":
        return _C.SmoothQuantLayer(module.weight, module.input_quantizer.core,
                                   module.weight_quantizer.core, float(alpha_step),
                                   int(max_tokens_per_batch), name)
    return _C.SmoothQuantLayer(module.weight, float(alpha), name)


def smoothquant(model: nn.Module, forward_loop: Callable | None = None,
                alpha: float | str = 1.0, debug: bool = False, alpha_step: float | None = None,
                max_tokens_per_batch: int | None = None) -> None:
    """Calibrates `model` with SmoothQuant (see the module docstring)."""
    if forward_loop is None:
        raise ValueError("smoothquant needs forward_loop: it smooths with activation statistics")
    search = alpha == "auto"
    if search:
        alpha_step = 0.1 if alpha_step is None else alpha_step
        max_tokens_per_batch = 64 if max_tokens_per_batch is None else max_tokens_per_batch
    layers = []
    for name, module in solvable_linears(model, "smoothquant"):
        iq = module.input_quantizer
        if not iq.is_enabled:
            continue
        reason = _C.smoothquant_skip_reason(name, _core(iq), _core(module.weight_quantizer))
        if reason is not None:
            warnings.warn(reason, stacklevel=3)
            continue
        layers.append(SolvedLayer(name, module, _solver(name, module, alpha, alpha_step,
                                                         max_tokens_per_batch)))

    # The smoothed input quantizers stay out of the max pass: their amax comes from the
    # per-channel statistics. Disabled, a quantizer still applies an earlier pre_quant_scale, so
    # the solver sees the input as the weight sees it.
    for layer in layers:
        layer.module.input_quantizer.disable()
    try:
        solver_pass(model, forward_loop, layers, 0, calibrate_others=True)
    finally:
        for layer in layers:
            layer.module.input_quantizer.enable()
    if search:  # the searched layers compute in float, as in the first pass
        with QuantizersOff(layers):
            solver_pass(model, forward_loop,
                        [layer for layer in layers if layer.solver.pass_batches(0) > 0], 1)

    smoothed = 0
    for layer in layers:
        module, solver = layer.module, layer.solver
        if solver.pass_batches(0) == 0:
            warnings.warn(f"smoothquant: layer '{layer.name}' was not reached by forward_loop; it "
                          "is not smoothed and its input quantizer stays uncalibrated",
                          stacklevel=3)
            continue
        if search and solver.pass_batches(1) == 0:
            warnings.warn(f"smoothquant: layer '{layer.name}' was reached by the first call of "
                          "forward_loop but not by the second (forward_loop must forward the "
                          "same data each call); it is not smoothed and gets max calibration",
                          stacklevel=3)
            if module.input_quantizer.is_static:
                replace_amax(module.input_quantizer, solver.act_amax.amax())
            recalibrate_weight(module)
            continue
        # the solver reads module.weight, so its debug view is taken before the weight changes
        weight_max, scale = (solver.weight_max(), solver.scale()) if debug else (None, None)
        update = solve(layer)
        apply_update(module, update)
        if debug:
            module.smoothquant = SmoothQuantDebug(
                alpha=solver.alpha, act_amax=solver.act_amax, weight_max=weight_max,
                scale=scale, pre_quant_scale=module.input_quantizer.pre_quant_scale,
                input_amax=module.input_quantizer.amax,
                alphas=list(solver.alphas) if search else None,
                losses=solver.losses if search else None)
        smoothed += 1
    weight_only_calibrate(model, only_uncalibrated=True)
    logger.info("Smoothed %d modules", smoothed)


register_calibration_algorithm("smoothquant", smoothquant)
