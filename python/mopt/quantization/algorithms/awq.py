"""AWQ calibration: ``awq_lite`` (activation-aware scale search), ``awq_clip`` (weight clipping
search) and ``awq_full`` (both) for quantized ``nn.Linear`` layers (SPEC §1, §5), with any weight
format (INT4 blocks, NVFP4, the INT4 stage of W4A8, ...): the searches quantize through the
weight quantizer's own config in C++ (``mopt._C.AwqLiteLayer`` / ``AwqClipLayer``); this module
installs forward pre-hooks, runs ``forward_loop`` and writes the results back.

* ``awq_lite`` (``alpha_step`` 0.1) runs ``forward_loop`` twice: pass 1 streams mean and max |x|
  per input channel, pass 2 evaluates every alpha on every batch (no activation is stored). The
  best scale s is folded: ``W *= s`` (saved first with ParameterBackup), the input quantizer's
  ``pre_quant_scale`` becomes ``1 / s`` (composed with any earlier one), the weight amax is
  recalibrated and a static per-tensor input amax set to ``max(act_amax / s)``.
* ``awq_clip`` (``max_co_batch_size`` 1024, ``max_tokens_per_batch`` 64, ``min_clip_ratio`` 0.5,
  ``shrink_step`` 0.05) runs ``forward_loop`` once and sets the weight amax to the best fraction
  of its max calibration per (output channel, input block), or per tensor for formats whose only
  calibrated amax is per tensor (NVFP4). Weights without blocks are left to max calibration.
* ``awq_full`` = ``awq_lite`` then ``awq_clip`` (three passes).

During the passes the layers compute in float (their quantizers off), as in the reference; every
other quantizer of the model gets max calibration in the first pass. A SequentialQuantizer weight
(W4A8) is searched with its first stage; the later stages are then max-calibrated on the output
of the earlier ones (ours: the reference recalibrates the first stage too and so drops the
clipping). ``forward_loop`` must forward the same data every time it is called.

Fallbacks, each with a warning naming the layer: a layer that a pass never reaches keeps max
calibration; a static per-channel input quantizer cannot take a folded scale, so that layer keeps
max calibration; awq_clip skips weight formats without a calibrated amax (MX, NF4) and amax
shapes other than per tensor or per (row, input block). NaN/Inf activations or weights raise
RuntimeError naming the layer. Without ``forward_loop`` only the weights are max-calibrated.

Debug information: with ``{"method": ..., "debug": True}`` each searched layer keeps
``module.awq_lite`` (:class:`AwqLiteDebug`: alphas, losses, best alpha, scales, statistics) and/or
``module.awq_clip`` (:class:`AwqClipDebug`: ratios, losses, chosen ratio and amax per block).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Callable

import torch
from torch import nn

from ... import _C
from ..nn.modules.tensor_quantizer import SequentialQuantizer, TensorQuantizer
from .collect import max_calibrate, weight_only_calibrate
from .layerwise import (
    QuantizersOff,
    SolvedLayer,
    apply_update,
    quantized_linears,
    solvable_linears,
    recalibrate_weight,
    replace_amax,
    solve,
    solver_pass,
)
from .registry import register_calibration_algorithm

__all__ = ["AwqLiteDebug", "AwqClipDebug", "awq_lite", "awq_clip", "awq_full"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class AwqLiteDebug:
    """What awq_lite computed for one layer (``module.awq_lite`` with ``debug=True``)."""

    alphas: list[float]
    losses: torch.Tensor  # [n_alphas] summed per-batch output MSE
    best_alpha: float
    scale: torch.Tensor  # [in] s of the best alpha; W was multiplied by it
    pre_quant_scale: torch.Tensor  # [in] the input quantizer's pre_quant_scale afterwards
    act_scale: torch.Tensor  # [in] mean |x| per channel
    act_amax: torch.Tensor  # [in] max |x| per channel
    weight_scale: torch.Tensor  # [in] mean over rows of |W| / block max |W|
    block_size: int
    num_tokens: int
    num_search_steps: int


@dataclasses.dataclass
class AwqClipDebug:
    """What awq_clip computed for one layer (``module.awq_clip`` with ``debug=True``)."""

    ratios: list[float]
    losses: torch.Tensor  # [n_ratios, *amax shape]
    ratio: torch.Tensor  # chosen ratio per amax element
    amax: torch.Tensor  # the clipped amax now in the weight quantizer
    max_amax: torch.Tensor  # the max-calibrated amax it started from
    per_tensor: bool
    num_tokens: int


def _warn(msg: str) -> None:
    warnings.warn(msg, stacklevel=4)


def _awq_lite(model: nn.Module, forward_loop: Callable, alpha_step: float,
              debug: bool) -> list[nn.Module]:
    layers: list[SolvedLayer] = []
    for name, module in solvable_linears(model, "awq_lite"):
        wq, iq = module.weight_quantizer, module.input_quantizer
        if not isinstance(wq, TensorQuantizer) or not wq.is_enabled:
            continue
        input_quantized = iq.is_enabled
        reason = _C.awq_lite_skip_reason(name, iq.core) if input_quantized else None
        if reason is not None:
            _warn(reason)
            continue
        try:
            solver = _C.AwqLiteLayer(module.weight, wq.core, float(alpha_step), name)
        except ValueError as e:
            raise ValueError(f"awq_lite: layer '{name}': {e}") from e
        layers.append(SolvedLayer(name, module, solver, input_quantized))
    if not layers:  # nothing to search: the other quantizers still get their max calibration
        max_calibrate(model, forward_loop, skip_forward_without_activation_calib=False)
        return []

    with QuantizersOff(layers):
        logger.info("awq_lite: caching activation statistics...")
        solver_pass(model, forward_loop, layers, 0, calibrate_others=True)
        searched = [layer for layer in layers if layer.solver.pass_batches(0) > 0]
        logger.info("awq_lite: searching parameters...")
        solver_pass(model, forward_loop, searched, 1)

    done = []
    for layer in layers:
        module, solver = layer.module, layer.solver
        iq = module.input_quantizer
        if solver.pass_batches(1) == 0:
            if solver.pass_batches(0) == 0:
                _warn(f"awq_lite: layer '{layer.name}' was not reached by forward_loop; it gets "
                      "max calibration of its weight only")
            else:
                _warn(f"awq_lite: layer '{layer.name}' was reached by the first call of "
                      "forward_loop but not by the second (forward_loop must forward the same "
                      "data each call); it gets max calibration")
                if layer.input_quantized and iq.is_static:
                    replace_amax(iq, solver.act_amax.amax())
            recalibrate_weight(module)
            continue
        result = solver.compute(iq.pre_quant_scale) if debug else None
        apply_update(module, solve(layer))
        if debug:
            module.awq_lite = AwqLiteDebug(
                alphas=list(solver.alphas), losses=solver.losses, best_alpha=result.alpha,
                scale=result.scale, pre_quant_scale=result.folded.pre_quant_scale,
                act_scale=solver.act_scale, act_amax=solver.act_amax,
                weight_scale=solver.weight_scale, block_size=solver.block_size,
                num_tokens=solver.num_tokens, num_search_steps=solver.num_search_steps)
        done.append(module)
    return done


def _awq_clip(model: nn.Module, forward_loop: Callable, max_co_batch_size: int,
              max_tokens_per_batch: int, min_clip_ratio: float, shrink_step: float,
              debug: bool) -> list[nn.Module]:
    layers: list[SolvedLayer] = []
    max_amax: dict[int, torch.Tensor] = {}
    for name, module in quantized_linears(model):
        wq, iq = module.weight_quantizer, module.input_quantizer
        if not isinstance(wq, TensorQuantizer) or not wq.is_enabled or wq.block_sizes is None:
            continue
        reason = _C.awq_clip_skip_reason(name, wq.core)
        if reason is not None:
            _warn(reason)
            continue
        with torch.no_grad():
            wq.reset_amax()
            wq.collect(module.weight)
            wq.load_calib_amax()
        try:
            solver = _C.AwqClipLayer(
                module.weight, wq.amax, wq.core, max_co_batch_size=max_co_batch_size,
                max_tokens_per_batch=max_tokens_per_batch, min_clip_ratio=float(min_clip_ratio),
                shrink_step=float(shrink_step), name=name)
        except NotImplementedError as e:
            _warn(f"awq_clip: layer '{name}' is not clipped ({e}); it keeps max calibration")
            continue
        max_amax[id(module)] = wq.amax.clone()
        input_quantized = iq.is_enabled
        if input_quantized and iq.is_static:
            iq.reset_amax()  # recalibrated on the clip pass, batch by batch like the reference
        iq.disable_calib()
        iq.enable_quant()
        layers.append(SolvedLayer(name, module, solver, input_quantized))
    if not layers:
        max_calibrate(model, forward_loop, skip_forward_without_activation_calib=False)
        return []

    with QuantizersOff(layers):
        logger.info("awq_clip: estimating parameters...")
        solver_pass(model, forward_loop, layers, 0, calibrate_others=True)

    done = []
    for layer in layers:
        module, solver = layer.module, layer.solver
        if solver.pass_batches(0) == 0:
            _warn(f"awq_clip: layer '{layer.name}' was not reached by forward_loop; its weight "
                  "keeps max calibration")
            continue
        result = solver.compute() if debug else None
        apply_update(module, solve(layer))
        if debug:
            module.awq_clip = AwqClipDebug(
                ratios=list(solver.ratios), losses=result.losses, ratio=result.ratio,
                amax=result.amax, max_amax=max_amax[id(module)], per_tensor=solver.per_tensor,
                num_tokens=solver.num_tokens)
        done.append(module)
    return done


def _finish(model: nn.Module, searched: list[nn.Module]) -> None:
    # Later SequentialQuantizer stages (W4A8's FP8) see the searched first stage's output.
    for module in searched:
        if isinstance(module.weight_quantizer, SequentialQuantizer):
            recalibrate_weight(module, first=1)
    weight_only_calibrate(model, only_uncalibrated=True)


def _no_forward_loop(model: nn.Module, method: str) -> None:
    warnings.warn(f"{method} needs forward_loop for activation statistics; without it only the "
                  "weights get max calibration", stacklevel=3)
    weight_only_calibrate(model)


def awq_lite(model: nn.Module, forward_loop: Callable | None = None, alpha_step: float = 0.1,
             debug: bool = False) -> None:
    """AWQ lite: per-layer search of the activation-aware scale exponent (module docstring)."""
    if forward_loop is None:
        return _no_forward_loop(model, "awq_lite")
    with SequentialQuantizer.convert_to_single_quantizer(model):
        searched = _awq_lite(model, forward_loop, alpha_step, debug)
    _finish(model, searched)


def awq_clip(model: nn.Module, forward_loop: Callable | None = None,
             max_co_batch_size: int = 1024, max_tokens_per_batch: int = 64,
             min_clip_ratio: float = 0.5, shrink_step: float = 0.05,
             debug: bool = False) -> None:
    """AWQ clip: per (output channel, input block) search of the clipped weight amax."""
    if forward_loop is None:
        return _no_forward_loop(model, "awq_clip")
    with SequentialQuantizer.convert_to_single_quantizer(model):
        searched = _awq_clip(model, forward_loop, max_co_batch_size, max_tokens_per_batch,
                             min_clip_ratio, shrink_step, debug)
    _finish(model, searched)


def awq_full(model: nn.Module, forward_loop: Callable | None = None, alpha_step: float = 0.1,
             max_co_batch_size: int = 1024, max_tokens_per_batch: int = 64,
             min_clip_ratio: float = 0.5, shrink_step: float = 0.05,
             debug: bool = False) -> None:
    """AWQ lite followed by AWQ clip on the scaled weights."""
    if forward_loop is None:
        return _no_forward_loop(model, "awq_full")
    with SequentialQuantizer.convert_to_single_quantizer(model):
        searched = _awq_lite(model, forward_loop, alpha_step, debug)
        searched += _awq_clip(model, forward_loop, max_co_batch_size, max_tokens_per_batch,
                              min_clip_ratio, shrink_step, debug)
    _finish(model, list({id(m): m for m in searched}.values()))


register_calibration_algorithm("awq_lite", awq_lite)
register_calibration_algorithm("awq_clip", awq_clip)
register_calibration_algorithm("awq_full", awq_full)
