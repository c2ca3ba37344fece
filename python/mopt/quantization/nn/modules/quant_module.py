"""Quantized module bases and the registry mapping float module types to quantized ones."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ...._compat import refused_method
from ...tensor_quant import QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW, QUANT_DESC_8BIT_PER_TENSOR
from .tensor_quantizer import SequentialQuantizer, TensorQuantizer

__all__ = [
    "QuantModuleRegistry",
    "QuantModule",
    "QuantInputBase",
    "QuantLinearConvBase",
    "stored_tensor",
]

QUANT_DESC_8BIT_PER_CHANNEL = QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW


def stored_tensor(module: nn.Module, name: str) -> torch.Tensor:
    """The parameter or buffer `name` as stored, for in-place writes: a sparse layer's ``weight``
    attribute is the masked product (mopt.sparsity), its stored parameter the dense tensor."""
    if name == "weight" and hasattr(module, "_stored_weight_view"):
        return module._stored_weight_view()  # GPT-2 QuantConv1D: [out, in] view of [in, out]
    if getattr(type(module), name, None) is None:  # not a property
        t = module._parameters.get(name)
        if t is None:
            t = module._buffers.get(name)
        if t is not None:
            return t
    return getattr(module, name)


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
        self._stacked_cache: dict[tuple[type, type], type] = {}

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
        if key in self._by_type:
            return key
        # a sparse layer (mopt.sparsity) quantizes as the dense class it wraps
        dense = getattr(key, "_mopt_dense_cls", None)
        return dense if dense in self._by_type else None

    def _stacked(self, sparse_cls: type, quant_cls: type) -> type:
        """The class of a quantized sparse layer: the sparse mixin (masked weight) over the
        quantized class; folding its mask (mts.export) leaves the quantized class."""
        stacked = self._stacked_cache.get((sparse_cls, quant_cls))
        if stacked is None:
            stacked = type(quant_cls.__name__, (sparse_cls, quant_cls),
                           {"__module__": quant_cls.__module__, "_mopt_dense_cls": quant_cls})
            self._stacked_cache[(sparse_cls, quant_cls)] = stacked
        return stacked

    def __contains__(self, key: type | str) -> bool:
        return self._resolve(key) is not None

    def __getitem__(self, key: type | str) -> type:
        orig = self._resolve(key)
        if orig is None:
            raise KeyError(f"{key!r} is not registered in QuantModuleRegistry")
        if isinstance(key, type) and key is not orig:
            return self._stacked(key, self._by_type[orig])
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
        quant_cls = self[orig]
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

    @classmethod
    def convert(cls, module: nn.Module, **setup_kwargs) -> nn.Module:
        """Converts `module` (whose type is registered) into its quantized class, in place."""
        if isinstance(module, QuantModule):
            return module
        if setup_kwargs:
            raise TypeError(f"unexpected setup arguments {sorted(setup_kwargs)}: mopt's "
                            "quantized modules take no setup arguments")
        return QuantModuleRegistry.convert(module)

    @property
    def parallel_state(self):
        """The tensor/data-parallel state ModelOpt attaches (None: mopt calibrates across
        processes through torch.distributed, see mopt._C.CalibrationGroup)."""
        return self.__dict__.get("_parallel_state")

    @parallel_state.setter
    def parallel_state(self, value) -> None:
        self.__dict__["_parallel_state"] = value

    def iter_weights_for_calibration(self):
        """Yields ``(weight, weight_quantizer)`` for weight-only calibration."""
        wq = getattr(self, "weight_quantizer", None)
        weight = getattr(self, "weight", None)
        if wq is not None and isinstance(weight, torch.Tensor):
            yield weight, wq

    def fold_weight(self, keep_attrs: bool = False) -> None:
        """Bakes the fake-quantized weight into the weight and disables the weight quantizer;
        the amax and pre_quant_scale are dropped unless `keep_attrs`."""
        wq = getattr(self, "weight_quantizer", None)
        weight = getattr(self, "weight", None)
        if wq is None or not isinstance(weight, torch.Tensor) or not wq.is_enabled:
            return
        with torch.no_grad():
            stored_tensor(self, "weight").copy_(wq(weight))
        for q in (list(wq) if isinstance(wq, SequentialQuantizer) else [wq]):
            q.disable()
            if not keep_attrs:
                q.pre_quant_scale = None
                q.reset_amax()

    def modelopt_post_restore(self, prefix: str = "") -> None:
        """Moves the quantizers' state to the device of the module's own parameters."""
        quantizer_ids = {id(m) for m in self.modules() if isinstance(m, TensorQuantizer)}
        for name, t in self.state_dict(keep_vars=True).items():
            owner = self.get_submodule(name.rpartition(".")[0]) if "." in name else self
            if id(owner) not in quantizer_ids:
                for m in self.modules():
                    if id(m) in quantizer_ids:
                        m.to(t.device)
                return

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

    quantize_weight = refused_method(
        "modelopt.torch.quantization.nn.QuantLinearConvBase.quantize_weight",
        "mopt quantizes the weight inside forward, so `module.weight` is never the quantized "
        "weight; use `module.weight_quantizer(module.weight)`")

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


def _original_class(cls: type) -> type:
    """The registered float class a quantized class derives from (nn.Linear for QuantLinear)."""
    for base in cls.__mro__:
        if base in QuantModuleRegistry._by_type and not issubclass(base, QuantModule):
            return base
    raise TypeError(f"{cls.__name__} derives from no class registered in QuantModuleRegistry")


class _LegacyQuantInputMixin:
    """ModelOpt's legacy constructors: ``QuantMaxPool2d(kernel_size, quant_desc_input=...)``
    builds the float module with its own arguments, then adds the quantizers (from the given
    descriptors, else the class defaults)."""

    def __init__(self, *args, quant_desc_input=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if quant_desc_input is not None:
            self.default_quant_desc_input = quant_desc_input
        self._mopt_original_cls = _original_class(type(self))
        self._setup()


class _LegacyQuantLinearConvMixin(_LegacyQuantInputMixin):
    """``QuantLinear(in, out, quant_desc_input=..., quant_desc_weight=...)``."""

    def __init__(self, *args, quant_desc_input=None, quant_desc_weight=None, **kwargs) -> None:
        if quant_desc_weight is not None:
            # Set before _setup (run by the base __init__) creates the weight quantizer.
            object.__setattr__(self, "default_quant_desc_weight", quant_desc_weight)
        super().__init__(*args, quant_desc_input=quant_desc_input, **kwargs)
