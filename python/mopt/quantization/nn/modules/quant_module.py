"""Quantized module bases and the registry mapping float module types to quantized ones."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ...config import QuantizerAttributeConfig
from .tensor_quantizer import SequentialQuantizer, TensorQuantizer

__all__ = [
    "QuantModuleRegistry",
    "QuantModule",
    "QuantInputBase",
    "QuantLinearConvBase",
]

QUANT_DESC_8BIT_PER_TENSOR = QuantizerAttributeConfig(num_bits=8, axis=None)
QUANT_DESC_8BIT_PER_CHANNEL = QuantizerAttributeConfig(num_bits=8, axis=0)


class _QuantModuleRegistryCls:
    """Maps an original module class to its quantized class, by type and by name.

    ``QuantModuleRegistry.register({nn.Linear: "nn.Linear"})(QuantLinear)`` registers a class;
    ``"nn.Linear" in QuantModuleRegistry`` and ``QuantModuleRegistry["nn.Linear"]`` look it up.
    A registered quantized class either subclasses the original (it may then be used as is) or
    is a mixin combined with the original class at conversion.
    """

    def __init__(self) -> None:
        self._by_type: dict[type, type] = {}
        self._names: dict[type, str] = {}

    def register(self, cls_to_name: dict[type, str]) -> Callable[[type], type]:
        def decorator(quant_cls: type) -> type:
            for orig, name in cls_to_name.items():
                self._by_type[orig] = self._combine(orig, quant_cls)
                self._names[orig] = name
            return quant_cls

        return decorator

    @staticmethod
    def _combine(orig: type, quant_cls: type) -> type:
        # The class a module becomes: the quantized class, the original (if the quantized class
        # does not derive from it) and QuantModule (for the conversion bookkeeping).
        if issubclass(quant_cls, orig) and issubclass(quant_cls, QuantModule):
            return quant_cls
        bases = [quant_cls]
        if not issubclass(quant_cls, orig):
            bases.append(orig)
        if not issubclass(quant_cls, QuantModule):
            bases.append(QuantModule)
        return type(quant_cls.__name__, tuple(bases), {"__module__": quant_cls.__module__})

    def unregister(self, orig: type) -> None:
        if orig not in self._by_type:
            raise KeyError(f"{orig.__name__} is not registered in QuantModuleRegistry")
        del self._by_type[orig]
        del self._names[orig]

    def _resolve(self, key: type | str) -> type | None:
        if isinstance(key, str):
            for orig, name in self._names.items():
                if name == key:
                    return orig
            return None
        return key if key in self._by_type else None

    def __contains__(self, key: type | str) -> bool:
        return self._resolve(key) is not None

    def __getitem__(self, key: type | str) -> type:
        orig = self._resolve(key)
        if orig is None:
            raise KeyError(f"{key!r} is not registered in QuantModuleRegistry")
        return self._by_type[orig]

    def get(self, key: type | str, default=None):
        return self[key] if key in self else default

    def original_class(self, quant_cls: type) -> type | None:
        for orig, q in self._by_type.items():
            if q is quant_cls:
                return orig
        return None

    def names(self) -> list[str]:
        return list(self._names.values())

    def convert(self, module: nn.Module) -> nn.Module:
        """Turns `module` (whose exact type is registered) into its quantized class in place:
        parameters, buffers and hooks stay; quantizers are added by ``_setup()``."""
        orig = type(module)
        quant_cls = self._by_type[orig]
        module.__class__ = quant_cls
        module._mopt_original_cls = orig
        try:
            module._setup()
        except BaseException:
            module._unsetup()  # a half-set-up module must not stay behind
            raise
        return module


QuantModuleRegistry = _QuantModuleRegistryCls()


class QuantModule(nn.Module):
    """Base of quantized modules: ``_setup()`` creates the quantizers."""

    def _setup(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement _setup()")

    def _quantizer_names(self) -> list[str]:
        return [n for n, m in self._modules.items()
                if isinstance(m, (TensorQuantizer, SequentialQuantizer))]

    def _unsetup(self) -> None:
        """Removes the quantizers and restores the original class (used to roll back)."""
        for name in self._quantizer_names():
            del self._modules[name]
        orig = self.__dict__.pop("_mopt_original_cls", None) or type(self)._mopt_original_cls
        self.__class__ = orig


class QuantInputBase(QuantModule):
    """Quantizes the input (and optionally the output) of the wrapped module's forward."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR
    default_quant_desc_output = QUANT_DESC_8BIT_PER_TENSOR

    def _setup(self) -> None:
        self.input_quantizer = TensorQuantizer(self.default_quant_desc_input)
        self.output_quantizer = TensorQuantizer(self.default_quant_desc_output)
        self.output_quantizer.disable()

    def forward(self, input, *args, **kwargs):
        out = super().forward(self.input_quantizer(input), *args, **kwargs)
        return self.output_quantizer(out)


class QuantLinearConvBase(QuantInputBase):
    """Adds a weight quantizer; subclasses compute the layer from the quantized weight."""

    default_quant_desc_weight = QUANT_DESC_8BIT_PER_CHANNEL

    def _setup(self) -> None:
        super()._setup()
        self.weight_quantizer = TensorQuantizer(self.default_quant_desc_weight)

    def _forward_quantized(self, input: torch.Tensor, weight: torch.Tensor, *args, **kwargs):
        raise NotImplementedError

    def forward(self, input, *args, **kwargs):
        out = self._forward_quantized(
            self.input_quantizer(input), self.weight_quantizer(self.weight), *args, **kwargs
        )
        return self.output_quantizer(out)
