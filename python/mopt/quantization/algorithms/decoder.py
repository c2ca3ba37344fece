"""Decoder-layer replay: run a decoder model one decoder layer at a time on recorded inputs.

One ``forward_loop`` pass records each call's input to the first decoder layer and the other
arguments (masks, rotary tables) of every layer; afterwards a layer can be run alone on its
recorded inputs (``run_layer``) and its outputs fed to the next one. Layer-wise algorithms (GPTQ
today, SparseGPT next) use it to bound memory to one layer's activations.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = [
    "DECODER_PATHS",
    "decoder_layers",
    "hidden_arg",
    "hidden_out",
    "replay_kwargs",
    "LayerRecorder",
    "OnlyFirstLayerComputes",
    "run_layer",
]

# Where Hugging Face decoder models keep their list of decoder blocks.
DECODER_PATHS = (
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



def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """(name, list) of the model's decoder blocks: the first of the usual attribute paths that
    holds an ``nn.ModuleList`` of modules of one type; None when there is none."""
    for path in DECODER_PATHS:
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList) and len(layers) > 0 and \
                len({type(m) for m in layers}) == 1:
            return path, layers
    return None


def hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor | None:
    if args:
        return args[0] if isinstance(args[0], torch.Tensor) else None
    h = kwargs.get("hidden_states")
    return h if isinstance(h, torch.Tensor) else None


def hidden_out(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def replay_kwargs(kwargs: dict) -> dict:
    # A KV cache would grow with every replay and pin every layer's keys and values in memory.
    kwargs = dict(kwargs)
    if "past_key_values" in kwargs:
        kwargs["past_key_values"] = None
    if "past_key_value" in kwargs:
        kwargs["past_key_value"] = None
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    return kwargs


class LayerRecorder:
    """Records, per call of the first decoder layer, its hidden-state input and every layer's
    other arguments; checks that each layer's hidden input is the previous layer's output."""

    def __init__(self, layers: nn.ModuleList) -> None:
        self.layers = layers
        self.calls: list[dict] = []  # {"hidden": Tensor, "args": [(args, kwargs)], "order": []}
        self.chained = True
        self._last_out: torch.Tensor | None = None
        self._handles = []

    def __enter__(self) -> LayerRecorder:
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
        hidden = hidden_arg(args, kwargs)
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
            self.calls[-1]["args"].append((rest, replay_kwargs(kw), not args))
            self.calls[-1]["order"].append(idx)

    def _post(self, out: Any) -> None:
        self._last_out = hidden_out(out)
        if self._last_out is None:
            self.chained = False


class OnlyFirstLayerComputes:
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

    def __enter__(self) -> OnlyFirstLayerComputes:
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


def run_layer(layer: nn.Module, hidden: torch.Tensor, recorded: tuple) -> Any:
    rest, kwargs, as_keyword = recorded
    if as_keyword:
        return layer(*rest, hidden_states=hidden, **kwargs)
    return layer(hidden, *rest, **kwargs)
