"""GPTQ calibration (``{"method": "gptq", "block_size": 128, "percdamp": 0.01, "act_order":
False}``) for quantized ``nn.Linear`` layers with integer, minifloat or NVFP4 weight quantizers.

The math (streamed Hessians, dampening, Cholesky factorizations, the blockwise column loop with
lazy batch updates, and a column quantizer that follows the weight quantizer config exactly) is
C++ (``mopt._C.GptqHessian`` / ``gptq_quantize_weight``, ``include/mopt/algorithms/gptq.h``);
this module decides what runs when:

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

import time
import warnings
from typing import Any, Callable

import torch
from torch import nn

from ... import _C
from ..model_calib import register_calibration_algorithm, weight_only_calibrate
from ..nn.modules.quant_module import QuantModule
from ..nn.modules.tensor_quantizer import SequentialQuantizer, TensorQuantizer
from ..utils import ParameterBackup
from .smoothquant import quantized_linears, recalibrate_weight

__all__ = ["decoder_layers", "gptq"]

# Where Hugging Face decoder models keep their list of decoder blocks.
_DECODER_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "model.decoder.layers",
    "transformer.h",
    "transformer.layers",
    "transformer.blocks",
    "gpt_neox.layers",
    "language_model.model.layers",
    "decoder.layers",
    "layers",
    "h",
    "blocks",
)


def _warn(msg: str) -> None:
    warnings.warn(msg, stacklevel=4)


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """(name, list) of the model's decoder blocks: the first of the usual attribute paths that
    holds an ``nn.ModuleList`` of modules of one type; None when there is none."""
    for path in _DECODER_PATHS:
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList) and len(layers) > 0 and \
                len({type(m) for m in layers}) == 1:
            return path, layers
    return None


# ---------------------------------------------------------------------------------------------
# Options and targets


def _options(block_size: Any, percdamp: Any, act_order: Any, layerwise: Any) -> dict:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"gptq block_size must be a positive int, got {block_size!r}")
    if isinstance(percdamp, bool) or not isinstance(percdamp, (int, float)) \
            or not 0.0 <= float(percdamp) <= 1.0:
        raise ValueError(f"gptq percdamp must be a number in [0, 1], got {percdamp!r}")
    if not isinstance(act_order, bool):
        raise TypeError(f"gptq act_order must be a bool, got {act_order!r}")
    if layerwise is not None and not isinstance(layerwise, bool):
        raise TypeError(f"gptq layerwise must be a bool or None, got {layerwise!r}")
    return {"block_size": block_size, "percdamp": float(percdamp), "act_order": act_order}


def _targets(model: nn.Module) -> dict[str, nn.Module]:
    """Quantized linear layers with an enabled weight quantizer, validated before any change."""
    targets = {}
    for name, module in quantized_linears(model):
        wq = module.weight_quantizer
        if not wq.is_enabled:
            continue
        if isinstance(wq, SequentialQuantizer):
            raise NotImplementedError(
                f"gptq: layer '{name}' has a multi-stage weight quantizer (SequentialQuantizer, "
                "e.g. W4A8); GPTQ supports a single integer, minifloat or NVFP4 weight quantizer"
            )
        if wq.pre_quant_scale is not None:
            raise NotImplementedError(
                f"gptq: layer '{name}' has a pre_quant_scale on its weight quantizer, which GPTQ "
                "does not support"
            )
        w = module.weight
        if w.is_meta:
            raise NotImplementedError(f"gptq: layer '{name}' has its weight on the meta device")
        _C.gptq_check_weight_config(wq._cfg_json, w.shape[0], w.shape[1], name)
        targets[name] = module
    return targets


# ---------------------------------------------------------------------------------------------
# Quantizer state helpers


class _Disabled:
    """Disables the given quantizers inside the block and restores each one's enable flag."""

    def __init__(self, quantizers: list[TensorQuantizer]) -> None:
        self.quantizers = quantizers
        self.saved: list[bool] = []

    def __enter__(self) -> _Disabled:
        self.saved = [q._disabled for q in self.quantizers]
        for q in self.quantizers:
            q.disable()
        return self

    def __exit__(self, *exc) -> None:
        for q, was_disabled in zip(self.quantizers, self.saved):
            q._disabled = was_disabled


def _needs_calibration(q: TensorQuantizer) -> bool:
    return q.is_enabled and q.is_static and q._calibrator is not None


def _quantizers_in(module: nn.Module) -> list[TensorQuantizer]:
    return [m for m in module.modules() if isinstance(m, TensorQuantizer)]


def _set_amax(q: TensorQuantizer, amax: torch.Tensor) -> None:
    current = q._buffers.get("_amax")
    if current is not None and current.shape != amax.shape:
        q.reset_amax()
    q.amax = amax.detach().float()


# ---------------------------------------------------------------------------------------------
# One scope: calibrate activation quantizers, accumulate Hessians, solve


def _calibrate_and_solve(quantizers: list[TensorQuantizer], linears: dict[str, nn.Module],
                         run: Callable[[], None], opts: dict, stats: dict) -> None:
    """GPTQ for `linears` with `run()` forwarding the calibration data through their scope;
    `quantizers` (the scope's quantizers) that need calibration get max calibration first."""
    weight_qs = [m.weight_quantizer for m in linears.values()]
    weight_ids = {id(q) for q in weight_qs}
    to_calibrate = [q for q in quantizers if id(q) not in weight_ids and _needs_calibration(q)]
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
        if not linears:
            return
        hessians = {name: _C.GptqHessian(m.weight.shape[1], name) for name, m in linears.items()}
        handles = []
        for name, module in linears.items():
            h = hessians[name]
            # The input quantizer's output is what multiplies the weight (pre_quant_scale and
            # activation quantization included).
            handles.append(module.input_quantizer.register_forward_hook(
                lambda _m, _inp, out, h=h: h.add_batch(out)))
        try:
            run()
        finally:
            for handle in handles:
                handle.remove()
    for name, module in linears.items():
        _solve(name, module, hessians.pop(name), opts, stats)


def _solve(name: str, module: nn.Module, hessian, opts: dict, stats: dict) -> None:
    wq = module.weight_quantizer
    if hessian.num_samples == 0:
        _warn(f"gptq: layer '{name}' was not reached by forward_loop; its weight gets max "
              "calibration (round to nearest) instead of GPTQ")
        recalibrate_weight(module)
        stats["unreached"] += 1
        return
    tensor_amax = wq.amax if _C.format_info(wq._cfg_json)["family"] == "nvfp4" else None
    with torch.no_grad():
        result = _C.gptq_quantize_weight(
            module.weight.detach(), hessian.hessian(), wq._cfg_json, opts["block_size"],
            opts["percdamp"], opts["act_order"], tensor_amax, name)
    if result.percdamp > opts["percdamp"]:
        _warn(f"gptq: the Hessian of layer '{name}' was not positive definite with percdamp="
              f"{opts['percdamp']}; it was dampened with percdamp={result.percdamp:g}")
    ParameterBackup.save(module, "weight")
    with torch.no_grad():
        module.weight.copy_(result.weight)
    _set_amax(wq, result.amax)
    stats["quantized"] += 1


# ---------------------------------------------------------------------------------------------
# Layer-by-layer processing of decoder models


class _StopCapture(Exception):
    pass


def _hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor | None:
    if args:
        return args[0] if isinstance(args[0], torch.Tensor) else None
    h = kwargs.get("hidden_states")
    return h if isinstance(h, torch.Tensor) else None


def _hidden_out(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def _replay_kwargs(kwargs: dict) -> dict:
    # A KV cache would grow with every replay and pin every layer's keys and values in memory.
    kwargs = dict(kwargs)
    if "past_key_values" in kwargs:
        kwargs["past_key_values"] = None
    if "past_key_value" in kwargs:
        kwargs["past_key_value"] = None
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    return kwargs


class _LayerRecorder:
    """Records, per call of the first decoder layer, its hidden-state input and every layer's
    other arguments; checks that each layer's hidden input is the previous layer's output."""

    def __init__(self, layers: nn.ModuleList) -> None:
        self.layers = layers
        self.calls: list[dict] = []  # {"hidden": Tensor, "args": [(args, kwargs)], "order": []}
        self.chained = True
        self._last_out: torch.Tensor | None = None
        self._handles = []

    def __enter__(self) -> _LayerRecorder:
        for idx, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_pre_hook(
                lambda m, args, kwargs, idx=idx: self._pre(idx, args, kwargs), with_kwargs=True))
            self._handles.append(layer.register_forward_hook(
                lambda m, args, out, idx=idx: self._post(out)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._last_out = None

    def _pre(self, idx: int, args: tuple, kwargs: dict) -> None:
        hidden = _hidden_arg(args, kwargs)
        if hidden is None:
            self.chained = False
            return
        if idx == 0:
            self.calls.append({"hidden": hidden.detach(), "args": [], "order": []})
        elif not self.calls or hidden is not self._last_out:
            self.chained = False
        if self.calls:
            # (other positional args, other kwargs, whether the hidden state was a kwarg)
            rest = args[1:] if args else ()
            kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            self.calls[-1]["args"].append((rest, _replay_kwargs(kw), not args))
            self.calls[-1]["order"].append(idx)

    def _post(self, out: Any) -> None:
        self._last_out = _hidden_out(out)
        if self._last_out is None:
            self.chained = False


class _OnlyFirstLayerComputes:
    """During the recording pass, decoder layers after the first return the previous layer's
    output object unchanged instead of computing: the pass only needs the first layer's inputs
    and every layer's other arguments (masks, rotary tables, which the model computes without
    looking at the hidden values), so the float pass through layers 1..n-1 would be thrown away.
    Since the blocks are identical, the returned object has the structure the model expects."""

    def __init__(self, layers: nn.ModuleList) -> None:
        self.layers = layers
        self._last: Any = None
        self._saved: list[tuple[nn.Module, Any]] = []
        self._handle = None

    def _passthrough(self, *args, **kwargs) -> Any:
        return self._last

    def _keep(self, _m, _args, out) -> None:
        self._last = out

    def __enter__(self) -> _OnlyFirstLayerComputes:
        self._handle = self.layers[0].register_forward_hook(self._keep)
        for layer in list(self.layers)[1:]:
            self._saved.append((layer, layer.__dict__.get("forward")))  # e.g. accelerate's
            layer.forward = self._passthrough
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()
        for layer, own in self._saved:
            if own is None:
                del layer.forward
            else:
                layer.forward = own
        self._saved.clear()
        self._last = None


def _run_layer(layer: nn.Module, hidden: torch.Tensor, recorded: tuple) -> Any:
    rest, kwargs, as_keyword = recorded
    if as_keyword:
        return layer(*rest, hidden_states=hidden, **kwargs)
    return layer(hidden, *rest, **kwargs)


def _gptq_layerwise(model: nn.Module, forward_loop: Callable, layers_name: str,
                    layers: nn.ModuleList, targets: dict[str, nn.Module], opts: dict,
                    stats: dict) -> bool:
    """Layer-by-layer GPTQ; False (nothing changed) when the model's layers are not chained in
    a way that can be replayed."""
    all_quantizers = _quantizers_in(model)
    with _Disabled(all_quantizers), _LayerRecorder(layers) as rec, \
            _OnlyFirstLayerComputes(layers), torch.no_grad():
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
        layer_linears = {n: m for n, m in targets.items() if n.startswith(prefix)}
        inside.update(id(q) for q in _quantizers_in(layer))
        if idx >= n_reached:
            for name, module in layer_linears.items():
                _solve(name, module, _C.GptqHessian(module.weight.shape[1], name), opts, stats)
            continue

        def run(idx: int = idx, layer: nn.Module = layer) -> None:
            for c, call in enumerate(rec.calls):
                _run_layer(layer, hidden[c], call["args"][idx])

        _calibrate_and_solve(_quantizers_in(layer), layer_linears, run, opts, stats)
        stats["layerwise"] += len(layer_linears)
        if idx + 1 < n_reached:
            with torch.no_grad():
                for c, call in enumerate(rec.calls):
                    hidden[c] = _hidden_out(_run_layer(layer, hidden[c], call["args"][idx])).detach()
    hidden.clear()  # the tail pass below needs none of the recorded activations
    rec.calls.clear()

    # Whatever lies outside the decoder layers: one more pass through the quantized model.
    outside_linears = {n: m for n, m in targets.items()
                       if not any(n.startswith(layer_names[id(layer)] + ".") for layer in layers)}
    outside_qs = [q for q in all_quantizers if id(q) not in inside]
    if outside_linears or any(_needs_calibration(q) for q in outside_qs):
        _calibrate_and_solve(outside_qs, outside_linears, lambda: forward_loop(model), opts, stats)
    return True


# ---------------------------------------------------------------------------------------------
# Entry point


def gptq(model: nn.Module, forward_loop: Callable | None = None, block_size: int = 128,
         percdamp: float = 0.01, act_order: bool = False, perc_damp: float | None = None,
         layerwise: bool | None = None, **unknown: Any) -> None:
    """GPTQ calibration of every quantized linear layer (see the module docstring).

    ``perc_damp`` is ModelOpt's name for ``percdamp``. ``layerwise`` (ours): None processes
    decoder models one decoder layer at a time and other models in one pass; False forces one
    pass; True requires decoder layers.
    """
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for algorithm 'gptq'; valid: "
                         "block_size, percdamp (or perc_damp), act_order, layerwise")
    if forward_loop is None:
        raise ValueError("gptq needs forward_loop: its Hessians come from calibration activations")
    if perc_damp is not None:
        percdamp = perc_damp
    opts = _options(block_size, percdamp, act_order, layerwise)
    targets = _targets(model)
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
                         f"{', '.join(_DECODER_PATHS)})")
    done = False
    if found is not None:
        done = _gptq_layerwise(model, forward_loop, found[0], found[1], targets, opts, stats)
    if not done:
        _calibrate_and_solve(_quantizers_in(model), targets, lambda: forward_loop(model), opts,
                             stats)
    weight_only_calibrate(model, only_uncalibrated=True)
    mode = "one decoder layer at a time" if stats["layerwise"] else "in one pass"
    print(f"gptq: {stats['quantized']} linear layers quantized {mode} in "
          f"{time.perf_counter() - start:.1f}s"
          + (f" ({stats['unreached']} unreached: max calibration)" if stats["unreached"] else ""))


register_calibration_algorithm("gptq", gptq)
