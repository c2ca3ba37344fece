"""GPTQ calibration (``{"method": "gptq", "block_size": 128, "percdamp": 0.01, "act_order":
False}``) for quantized ``nn.Linear`` layers with integer, minifloat or NVFP4 weight quantizers.

The math (streamed Hessians and their reduction across processes, dampening, Cholesky
factorizations, the blockwise column loop with lazy batch updates, and a column quantizer that
follows the weight quantizer config exactly) is the C++ layer solver ``mopt._C.GptqLayer``
(``include/mopt/algorithms/gptq.h``); the decoder-layer replay is ``decoder.py`` and the passes
and write-back the shared ``layerwise.py``. This module decides what runs when:

* Decoder models (Hugging Face ``model.layers`` / ``transformer.h`` / ... lists of identical
  blocks that the model chains directly): one ``forward_loop`` pass in float records each call's
  input to the first decoder layer and the keyword arguments (masks, rotary tables) of every layer;
  in that pass only the first layer computes, the later ones hand its output on unchanged.
  Then, one decoder layer at a time: max-calibrate its activation quantizers on its inputs,
  accumulate the Hessians of its linear layers (hooks, weight quantizers off), run GPTQ on each,
  and recompute the layer's outputs with the quantized weights as the next layer's inputs. Memory:
  one layer's inputs for all calibration samples plus the Hessians (in_features^2 fp32 each) of
  one layer. Quantizers and linear layers outside the decoder layers are handled afterwards in one
  more ``forward_loop`` pass. A stored KV cache is dropped from the recorded arguments.
* Other models (or ``layerwise=False``, ours): max-calibrate every activation quantizer in one
  pass, then accumulate every Hessian in a second pass (memory: the sum of in_features^2 fp32 over
  all quantized linear layers) and quantize each layer from the float activations.

Fallbacks and errors: a linear layer that no calibration token reached keeps max calibration of
its weight (RTN) with a warning naming it; if the dampened Hessian is not positive definite the
dampening is raised tenfold until it is (warning with the value used), and an error names the
layer when even ``percdamp = 1`` fails; NaN/Inf in a Hessian or weight raises RuntimeError naming
the layer. Weight formats GPTQ cannot follow (MX, NF4, SequentialQuantizer stages, unsigned,
dynamic non-NVFP4) raise NotImplementedError before any weight changes. Weight quantizers of other
module types (convolutions) get max calibration, with a warning.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Callable

import torch
from torch import nn

from ... import _C
from ..nn.modules.quant_module import QuantModule
from ..nn.modules.tensor_quantizer import SequentialQuantizer, TensorQuantizer
from .collect import weight_only_calibrate
from .decoder import (
    DECODER_PATHS,
    LayerRecorder,
    OnlyFirstLayerComputes,
    decoder_layers,
    hidden_out,
    run_layer,
)
from .layerwise import (
    SolvedLayer,
    apply_update,
    quantized_linears,
    solvable_linears,
    recalibrate_weight,
    solve,
    solver_pass,
)
from .registry import register_calibration_algorithm

__all__ = ["decoder_layers", "gptq"]

logger = logging.getLogger(__name__)


def _warn(msg: str) -> None:
    warnings.warn(msg, stacklevel=4)


def _targets(model: nn.Module, opts: dict) -> dict[str, SolvedLayer]:
    """A GPTQ solver per quantized linear layer with an enabled weight quantizer, every one
    checked before any change."""
    targets = {}
    for name, module in solvable_linears(model, "gptq"):
        wq = module.weight_quantizer
        if not wq.is_enabled:
            continue
        single = wq if isinstance(wq, TensorQuantizer) else None
        _C.gptq_check_layer(name, None if single is None else single.core,
                            single is not None and single.pre_quant_scale is not None)
        if module.weight.is_meta:
            raise NotImplementedError(f"gptq: layer '{name}' has its weight on the meta device")
        targets[name] = SolvedLayer(name, module, _C.GptqLayer(module.weight, wq.core, **opts,
                                                               name=name))
    return targets


class _Disabled:
    """Disables the given quantizers inside the block and restores each one's enable flag."""

    def __init__(self, quantizers: list[TensorQuantizer]) -> None:
        self.quantizers = quantizers
        self.saved: list[bool] = []

    def __enter__(self) -> _Disabled:
        self.saved = [q.is_enabled for q in self.quantizers]
        for q in self.quantizers:
            q.disable()
        return self

    def __exit__(self, *exc) -> None:
        for q, was_enabled in zip(self.quantizers, self.saved):
            if was_enabled:
                q.enable()


def _quantizers_in(module: nn.Module) -> list[TensorQuantizer]:
    return [m for m in module.modules() if isinstance(m, TensorQuantizer)]


def _calibrate_and_solve(quantizers: list[TensorQuantizer], layers: list[SolvedLayer],
                         run: Callable[[], None], stats: dict) -> None:
    """GPTQ for `layers` with `run()` forwarding the calibration data through their scope;
    `quantizers` (the scope's quantizers) that need calibration get max calibration first."""
    weight_qs = [layer.module.weight_quantizer for layer in layers]
    weight_ids = {id(q) for q in weight_qs}
    to_calibrate = [q for q in quantizers if id(q) not in weight_ids and q.needs_calibration]
    with _Disabled(weight_qs), torch.no_grad():
        if to_calibrate:
            for q in to_calibrate:
                q.disable_quant()
                q.enable_calib()
            try:
                run()
            finally:
                for q in to_calibrate:
                    q.load_calib_amax()
                    q.disable_calib()
                    q.enable_quant()
        if not layers:
            return
        # The input quantizer's output is what multiplies the weight (pre_quant_scale and
        # activation quantization included).
        solver_pass(None, lambda _: run(), layers, 0)
    for layer in layers:
        _solve(layer, stats)


def _solve(layer: SolvedLayer, stats: dict) -> None:
    if layer.solver.pass_batches(0) == 0:
        _warn(f"gptq: layer '{layer.name}' was not reached by forward_loop; its weight gets max "
              "calibration (round to nearest) instead of GPTQ")
        recalibrate_weight(layer.module)
        stats["unreached"] += 1
        return
    apply_update(layer.module, solve(layer))
    stats["quantized"] += 1


def _gptq_layerwise(model: nn.Module, forward_loop: Callable, layers_name: str,
                    layers: nn.ModuleList, targets: dict[str, SolvedLayer], stats: dict) -> bool:
    """Layer-by-layer GPTQ; False (nothing changed) when the model's layers are not chained in
    a way that can be replayed."""
    all_quantizers = _quantizers_in(model)
    with _Disabled(all_quantizers), LayerRecorder(layers) as rec, \
            OnlyFirstLayerComputes(layers), torch.no_grad():
        forward_loop(model)
    if not rec.calls:
        raise RuntimeError(
            f"gptq: forward_loop(model) never ran the first decoder layer '{layers_name}.0', so "
            "there is no calibration data"
        )
    orders = {tuple(c["order"]) for c in rec.calls}
    n_reached = len(next(iter(orders)))
    if not rec.chained or len(orders) != 1 or next(iter(orders)) != tuple(range(n_reached)):
        _warn(f"gptq: the decoder layers in '{layers_name}' are not called one after the other "
              "on each other's outputs; falling back to one pass over the whole model (all "
              "Hessians from float activations)")
        return False

    hidden = [c["hidden"] for c in rec.calls]
    layer_names = {id(layer): f"{layers_name}.{i}" for i, layer in enumerate(layers)}
    inside: set[int] = set()
    for idx, layer in enumerate(layers):
        prefix = layer_names[id(layer)] + "."
        layer_linears = [t for n, t in targets.items() if n.startswith(prefix)]
        inside.update(id(q) for q in _quantizers_in(layer))
        if idx >= n_reached:
            for t in layer_linears:
                t.solver.finish_pass(0)
                _solve(t, stats)
            continue

        def run(idx: int = idx, layer: nn.Module = layer) -> None:
            for c, call in enumerate(rec.calls):
                run_layer(layer, hidden[c], call["args"][idx])

        _calibrate_and_solve(_quantizers_in(layer), layer_linears, run, stats)
        stats["layerwise"] += len(layer_linears)
        if idx + 1 < n_reached:
            with torch.no_grad():
                for c, call in enumerate(rec.calls):
                    hidden[c] = hidden_out(run_layer(layer, hidden[c], call["args"][idx])).detach()
    hidden.clear()  # the tail pass below needs none of the recorded activations
    rec.calls.clear()

    # Whatever lies outside the decoder layers: one more pass through the quantized model.
    outside = [t for n, t in targets.items()
               if not any(n.startswith(layer_names[id(layer)] + ".") for layer in layers)]
    outside_qs = [q for q in all_quantizers if id(q) not in inside]
    if outside or any(q.needs_calibration for q in outside_qs):
        _calibrate_and_solve(outside_qs, outside, lambda: forward_loop(model), stats)
    return True


def gptq(model: nn.Module, forward_loop: Callable | None = None, block_size: int = 128,
         percdamp: float = 0.01, act_order: bool = False, layerwise: bool | None = None) -> None:
    """GPTQ calibration of every quantized linear layer (see the module docstring).

    ``layerwise`` (ours): None processes decoder models one decoder layer at a time and other
    models in one pass; False forces one pass; True requires decoder layers.
    """
    if forward_loop is None:
        raise ValueError("gptq needs forward_loop: its Hessians come from calibration activations")
    opts = {"block_size": block_size, "percdamp": float(percdamp), "act_order": act_order}
    targets = _targets(model, opts)
    others = [name for name, m in model.named_modules()
              if isinstance(m, QuantModule) and name not in targets
              and isinstance(getattr(m, "weight_quantizer", None), (TensorQuantizer,
                                                                     SequentialQuantizer))
              and m.weight_quantizer.is_enabled]
    if others:
        _warn("gptq handles quantized nn.Linear layers; these layers get max calibration of "
              f"their weights instead: {others}")
    stats = {"quantized": 0, "layerwise": 0, "unreached": 0}
    start = time.perf_counter()
    found = decoder_layers(model) if layerwise is not False else None
    if layerwise is True and found is None:
        raise ValueError("gptq layerwise=True: the model has no decoder layer list (looked at "
                         f"{', '.join(DECODER_PATHS)})")
    done = False
    if found is not None:
        done = _gptq_layerwise(model, forward_loop, found[0], found[1], targets, stats)
    if not done:
        _calibrate_and_solve(_quantizers_in(model), list(targets.values()),
                             lambda: forward_loop(model), stats)
    weight_only_calibrate(model, only_uncalibrated=True)
    mode = "one decoder layer at a time" if stats["layerwise"] else "in one pass"
    logger.info("gptq: %d linear layers quantized %s in %.1fs%s", stats["quantized"], mode,
                time.perf_counter() - start,
                f" ({stats['unreached']} unreached: max calibration)" if stats["unreached"] else "")


register_calibration_algorithm("gptq", gptq)
