"""User-facing quantization entry points (SPEC §1)."""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable

import torch
from torch import nn

from ..opt.conversion import apply_mode, check_mode
from .config import QuantizeConfig
from .conversion import apply_model_plugins, apply_quant_cfg_full, replace_quant_module
from .model_calib import calibrate, calibration_steps
from .nn.modules.tensor_quantizer import SequentialQuantizer, TensorQuantizer
from .utils import ParameterBackup, matches, stored_tensor, named_quantizers, quantized_modules

__all__ = [
    "quantize",
    "calibrate",
    "print_quant_summary",
    "disable_quantizer",
    "enable_quantizer",
    "fold_weight",
    "postprocess_amax",
]


def _wrap_forward_loop(forward_loop: Callable | None) -> Callable | None:
    if forward_loop is None:
        return None
    if not callable(forward_loop):
        raise TypeError(f"forward_loop must be callable, got {type(forward_loop).__name__}")
    try:
        params = inspect.signature(forward_loop).parameters
    except (TypeError, ValueError):
        return forward_loop
    if len(params) == 0:
        warnings.warn(
            "forward_loop without arguments is deprecated; define forward_loop(model)",
            DeprecationWarning,
            stacklevel=3,
        )
        return lambda model: forward_loop()
    return forward_loop


def _algorithm_for(model: nn.Module, algorithm: Any, forward_loop: Callable | None) -> Any:
    """The algorithm quantize() runs: the config's, or max calibration when the config names no
    algorithm (MX recipes need none) yet enables static quantizers, whose amax must come from the
    data (W4A8_MXFP4_FP8's FP8 inputs); calibrate(algorithm=None) itself still calibrates
    nothing."""
    if forward_loop is None or calibration_steps(algorithm):
        return algorithm
    if any(q.needs_calibration for _, q in named_quantizers(model)):
        return "max"
    return algorithm


def quantize(model: nn.Module, config: dict, forward_loop: Callable | None = None) -> nn.Module:
    """Quantizes `model` in place and returns it.

    Converts every registered module type (nn.Linear, nn.Conv2d, ...) into its quantized version,
    applies ``config["quant_cfg"]`` (each matched entry resets all attributes), then calibrates
    with ``config["algorithm"]`` running ``forward_loop(model)``. On any error the model is put
    back as it was: classes, quantizers and any parameter an algorithm changed.
    """
    apply_model_plugins(model)  # before validation: the config may name classes they register
    config = QuantizeConfig(config)
    check_mode(model, "quantize")
    forward_loop = _wrap_forward_loop(forward_loop)
    converted: list[nn.Module] = []
    backup = ParameterBackup()
    try:
        with backup.recording():
            n = replace_quant_module(model, converted)
            apply_quant_cfg_full(model, config["quant_cfg"])
            print(f"Inserted {n} quantizers")
            calibrate(model, _algorithm_for(model, config["algorithm"], forward_loop),
                      forward_loop)
    except BaseException:
        backup.restore()
        for module in converted:
            module._unsetup()
        raise
    apply_mode(model, "quantize", config)
    return model


def print_quant_summary(model: nn.Module, output_dir: str | None = None) -> None:
    """Prints one line per quantizer, then how many there are; with `output_dir`, writes them
    to ``output_dir/.quant_summary.txt`` instead."""
    lines = [f"{name:80} {module}" for name, module in model.named_modules()
             if isinstance(module, TensorQuantizer)]
    lines.append(f"{len(lines)} TensorQuantizers found in model")
    if output_dir:
        import os

        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, ".quant_summary.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        print(f"Quant summary saved to {path}")
    else:
        print("\n".join(lines))


def disable_quantizer(model: nn.Module, wildcard_or_filter_func: str | Callable) -> None:
    """Disables the quantizers whose names match."""
    _toggle(model, wildcard_or_filter_func, False)


def enable_quantizer(model: nn.Module, wildcard_or_filter_func: str | Callable) -> None:
    """Enables the quantizers whose names match."""
    _toggle(model, wildcard_or_filter_func, True)


def _toggle(model: nn.Module, pattern: str | Callable, enable: bool) -> None:
    for name, module in model.named_modules():
        if isinstance(module, (TensorQuantizer, SequentialQuantizer)) and matches(name, pattern):
            module.enable() if enable else module.disable()


def fold_weight(model: nn.Module, keep_attrs: bool = False) -> None:
    """Bakes each fake-quantized weight into the weight and disables its weight quantizer.

    The pre_quant_scale is dropped (it is baked in, and mopt applies a pre_quant_scale even on a
    disabled quantizer); the amax stays either way (`keep_attrs` is accepted for ModelOpt)."""
    with torch.no_grad():
        for _, module in quantized_modules(model):
            wq = getattr(module, "weight_quantizer", None)
            if wq is None or getattr(module, "weight", None) is None or not wq.is_enabled:
                continue
            stored_tensor(module, "weight").copy_(wq(module.weight))
            for q in (list(wq) if isinstance(wq, SequentialQuantizer) else [wq]):
                q.pre_quant_scale = None
                q.disable()


def postprocess_amax(model: nn.Module, key: str | Callable,
                     post_process_fn: Callable[[torch.Tensor], torch.Tensor]) -> nn.Module:
    """Replaces the amax of every matching quantizer by ``post_process_fn(amax)``. Every new
    amax is computed and checked (finite, non-negative) before any is set, so an error changes
    nothing."""
    updates = []
    for name, q in named_quantizers(model):
        if matches(name, key) and q.amax is not None:
            new = post_process_fn(q.amax.clone())
            if not isinstance(new, torch.Tensor):
                raise TypeError(f"postprocess_amax: post_process_fn returned "
                                f"{type(new).__name__} for '{name}', expected a tensor")
            q.core.amax_to_store(new, None, True)
            updates.append((q, new))
    for q, new in updates:
        if new.shape != q.amax.shape:
            q.reset_amax()
        q._store_amax(new, validate=False)  # validated above
    return model


