"""The layer-wise driver of the per-layer algorithms (SmoothQuant, AWQ, GPTQ) on nn.Module trees.

Each algorithm builds a C++ ``mopt._C.LayerSolver`` per quantized ``nn.Linear`` (the statistics,
their reduction across processes and the math live there); this module runs the passes over
``forward_loop`` with forward pre-hooks that hand each solver its layer's input in the form the
solver asks for (``solver.input_mode``), and writes the solver's update back into the layer.
The C++ API's driver (src/torch/calibrate.cpp) does the same steps on LibTorch modules.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ... import _C
from ..nn.modules.quant_module import QuantModule
from ..nn.modules.tensor_quantizer import SequentialQuantizer, TensorQuantizer
from ..utils import ParameterBackup, stored_tensor
from .collect import collect_and_load

__all__ = [
    "SolvedLayer",
    "quantized_linears",
    "input_pre_hook",
    "run_with_input_hooks",
    "solver_pass",
    "QuantizersOff",
    "recalibrate_weight",
    "replace_amax",
    "apply_update",
    "solve",
]


@dataclasses.dataclass
class SolvedLayer:
    """A linear layer with the solver calibrating it."""

    name: str
    module: nn.Module
    solver: Any  # a mopt._C.LayerSolver
    input_quantized: bool = True


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


def solvable_linears(model: nn.Module, algorithm: str) -> Iterator[tuple[str, nn.Module]]:
    """quantized_linears minus the layers whose weight is shared with another (tied weights),
    which an algorithm that scales or updates weights must leave alone (warning naming them)."""
    layers = list(quantized_linears(model))
    reasons = _C.tied_weight_skip_reasons(algorithm, [n for n, _ in layers],
                                          [m.weight for _, m in layers])
    for (name, module), reason in zip(layers, reasons):
        if reason is not None:
            warnings.warn(reason, stacklevel=4)
            continue
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
    try:
        if calibrate_others:
            collect_and_load(model, forward_loop)
        else:
            with torch.no_grad():
                forward_loop(model)
    finally:
        for h in handles:
            h.remove()


def _solver_input(layer: SolvedLayer, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as its solver wants it (see mopt._C.SolverInput)."""
    iq = layer.module.input_quantizer
    mode = layer.solver.input_mode
    if mode == _C.SolverInput.RUNNING_AMAX and layer.input_quantized:
        # the weight sees inputs quantized with the running amax, as in the reference
        if iq.is_static:
            iq.collect(x)
            iq.load_calib_amax()
        iq.enable()
        try:
            return iq(x)
        finally:
            iq.disable()
    return iq(x)  # FLOAT: disabled, the pre_quant_scale only; QUANTIZED: the quantizer's output


def solver_pass(model: nn.Module, forward_loop: Callable, layers: list[SolvedLayer],
                pass_index: int, calibrate_others: bool = False) -> None:
    """Pass `pass_index` of the solvers of `layers` over ``forward_loop``; every solver ends
    the pass (combining the ranks' statistics when calibrating across processes)."""
    hooks = [(layer.module,
              lambda x, layer=layer: layer.solver.collect_pass(pass_index, _solver_input(layer, x)))
             for layer in layers]
    run_with_input_hooks(model, forward_loop, hooks, calibrate_others)
    for layer in layers:
        layer.solver.finish_pass(pass_index)


class QuantizersOff:
    """Disables the weight and input quantizers of the searched layers during the passes (the
    layers then compute in float, applying any earlier pre_quant_scale) and restores them."""

    def __init__(self, layers: list[SolvedLayer]) -> None:
        self.layers = layers

    def __enter__(self) -> QuantizersOff:
        for layer in self.layers:
            layer.module.weight_quantizer.disable()
            layer.module.input_quantizer.disable()
        return self

    def __exit__(self, *exc) -> None:
        for layer in self.layers:
            layer.module.weight_quantizer.enable()
            if layer.input_quantized:
                layer.module.input_quantizer.enable()


def recalibrate_weight(module: nn.Module, first: int = 0) -> None:
    """Max-calibrates the weight quantizer(s) of `module` on its current weight, from stage
    `first` of a SequentialQuantizer on (each stage sees the previous stages' output)."""
    wq = module.weight_quantizer
    stages = list(wq) if isinstance(wq, SequentialQuantizer) else [wq]
    with torch.no_grad():
        x = module.weight
        for i, q in enumerate(stages):
            if i >= first and q.is_enabled and q.is_static and q.calibrator is not None:
                q.reset_amax()
                q.collect(x)
                q.load_calib_amax()
            x = q(x)


def replace_amax(quantizer: TensorQuantizer, amax: torch.Tensor) -> None:
    """Sets amax, replacing a stored one of another shape."""
    current = quantizer.amax
    if current is not None and current.shape != amax.shape:
        quantizer.reset_amax()
    quantizer.amax = amax.detach().float()


def apply_update(module: nn.Module, update: dict) -> None:
    """Writes a solver's update (weight, pre_quant_scale, input_amax, weight_amax with
    weight_zero_point, recalibrate_weight) into the layer; the weight is saved first, so a
    failed mtq.quantize restores it."""
    iq, wq = module.input_quantizer, module.weight_quantizer
    if update["weight"] is not None:
        ParameterBackup.save(module, "weight")
        with torch.no_grad():
            stored_tensor(module, "weight").copy_(update["weight"])
    if update["pre_quant_scale"] is not None:
        iq.pre_quant_scale = update["pre_quant_scale"]
    if update["input_amax"] is not None and iq.is_enabled and iq.is_static:
        replace_amax(iq, update["input_amax"])
    if update["weight_amax"] is not None:
        replace_amax(wq, update["weight_amax"])
    if update.get("weight_zero_point") is not None:
        wq.zero_point = update["weight_zero_point"]
    if update["recalibrate_weight"]:
        recalibrate_weight(module)


def solve(layer: SolvedLayer) -> dict:
    """The solver's update from the layer's current quantizer state."""
    wq = layer.module.weight_quantizer
    weight_amax = wq.amax if isinstance(wq, TensorQuantizer) else None
    with torch.no_grad():
        return layer.solver.solve(layer.module.input_quantizer.pre_quant_scale, weight_amax)
