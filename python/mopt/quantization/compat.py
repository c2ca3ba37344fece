"""ModelOpt's mtq-level names that mopt provides under ModelOpt's signatures, or refuses."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterator

from torch import nn

from .._compat import define_refusals
from .config import QuantizerAttributeConfig
from .conversion import replace_quant_module as _replace_quant_module
from .conversion import set_quantizer_attribute
from .nn.modules.quant_module import QuantModuleRegistry
from .utils import is_quantized, named_quantizers

__all__ = ["replace_quant_module", "set_quantizer_attributes_full",
           "set_quantizer_attributes_partial", "preserve_quantizer_attributes_context"]


def replace_quant_module(model: nn.Module, version=None, registry=QuantModuleRegistry) -> None:
    """Converts every registered module of `model` into its quantized class, in place, and
    prints ``Inserted N quantizers`` (``version`` is accepted and unused, as in ModelOpt)."""
    if registry is not QuantModuleRegistry:
        raise NotImplementedError("mopt converts with its one QuantModuleRegistry; register "
                                  "classes there with mtq.register")
    if is_quantized(model):
        raise ValueError("Model must not be quantized!")
    count = _replace_quant_module(model)
    print(f"Inserted {count} quantizers")


def set_quantizer_attributes_full(quant_model: nn.Module, wildcard_or_filter_func: str | Callable,
                                  attributes, parent_class: type | None = None) -> None:
    """Replaces every attribute of the matching quantizers (a list: a SequentialQuantizer)."""
    items = attributes if isinstance(attributes, (list, tuple)) else [attributes]
    for a in items:
        if not isinstance(a, QuantizerAttributeConfig):
            raise TypeError("set_quantizer_attributes_full takes QuantizerAttributeConfig(s), "
                            f"got {type(a).__name__}; use set_quantizer_attributes_partial "
                            "for a dict")
    set_quantizer_attribute(quant_model, wildcard_or_filter_func, attributes, parent_class)


def set_quantizer_attributes_partial(quant_model: nn.Module,
                                     wildcard_or_filter_func: str | Callable,
                                     partial_attributes, parent_class: type | None = None) -> None:
    """Sets only the given attribute keys on the matching quantizers."""
    items = partial_attributes if isinstance(partial_attributes, (list, tuple)) else [
        partial_attributes]
    for a in items:
        if not isinstance(a, dict):
            raise TypeError("set_quantizer_attributes_partial takes dict(s), got "
                            f"{type(a).__name__}")
    set_quantizer_attribute(quant_model, wildcard_or_filter_func, partial_attributes,
                            parent_class)


@contextlib.contextmanager
def preserve_quantizer_attributes_context(quant_model: nn.Module) -> Iterator[None]:
    """Restores every quantizer's attributes and mode flags on exit."""
    saved = [(q, q.attribute_config, q.mode) for _, q in named_quantizers(quant_model)]
    try:
        yield
    finally:
        for q, attr, mode in saved:
            q.set_from_attribute_config(attr)
            q.set_mode(mode)


_MQ = "modelopt.torch.quantization"
__all__ += define_refusals(globals(), _MQ, {
    "auto_quantize": ("function", "AutoQuantize (a per-layer search over quantization formats "
                      "under an effective-bits budget)"),
    "get_auto_quantize_config": ("function", "AutoQuantize (a per-layer search over "
                                 "quantization formats)"),
    "compute_quantization_mse": ("function", "the per-quantizer output-MSE report"),
    "temporarily_fold_weights": ("function", "temporary weight folding with a snapshot; use "
                                 "mtq.fold_weight"),
})

del Any, warnings
