"""Hugging Face transformers support (SPEC §1 "Plugins"): GPT-2's ``Conv1D`` and the attention
quantizers ``q_bmm_quantizer`` / ``k_bmm_quantizer`` / ``v_bmm_quantizer`` (KV-cache
quantization, ``FP8_KV_CFG``).

* ``Conv1D`` (GPT-2, OpenAI GPT, ...) stores its weight ``[in, out]`` and computes
  ``x @ W + b``: a linear layer with a transposed weight. Its quantized class is a
  ``QuantLinear`` whose ``weight`` reads as the ``[out, in]`` transposed view of the stored
  parameter, so every quantizer setting means what it means for ``nn.Linear`` (axis 0 = output
  channels, blocks along the input dimension) and calibration, SmoothQuant, AWQ, GPTQ and
  ``fold_weight`` treat it as the linear layer it is (their writes go through the view into the
  stored parameter), while ``state_dict`` / ``save_pretrained`` keep GPT-2's ``[in, out]``
  layout and the same ``Parameter`` object.
* Attention: transformers (>= 4.48) attention modules compute
  ``attention_interface(self, query, key, value, attention_mask, ...)`` where the interface
  function is ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]`` (sdpa, flash, flex, ...)
  or the modeling file's own ``eager_attention_forward``. Every module class whose forward
  dispatches that way is registered when a model holding it is converted, so any such
  architecture (Llama, GPT-2, BERT, Mistral, Qwen, ...) gets the three quantizers, disabled by
  default like output quantizers. Once a model with enabled bmm quantizers runs, the interface
  function its attention uses is replaced, once, by a wrapper that quantizes query, key and
  value when the module it is called with (interface functions receive the calling module
  first) is a quantized attention module, and otherwise calls the original unchanged: other
  models, other threads and later calls are unaffected, and nothing is swapped back and forth
  per call. Keys and values reach the interface after the KV cache update, so during
  ``generate()`` every cached key and value is read quantized, as a quantized KV cache would
  hold it.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from transformers.pytorch_utils import Conv1D

import torch
from torch import nn

from ..conversion import register
from ..nn.modules.quant_linear import QuantLinear
from ..nn.modules.quant_module import (
    QUANT_DESC_8BIT_PER_TENSOR,
    QuantModule,
    QuantModuleRegistry,
)
from ..nn.modules.tensor_quantizer import TensorQuantizer

__all__ = [
    "QuantConv1D",
    "QuantHFAttention",
    "QuantHFUpcastAttention",
    "dispatches_attention_interface",
    "register_hf_modules",
]

BMM_QUANTIZER_NAMES = ("q_bmm_quantizer", "k_bmm_quantizer", "v_bmm_quantizer")

# Marks an attention function already wrapped by this module.
_WRAPPED_FLAG = "_mopt_quantizes_qkv"


# ---------------------------------------------------------------------------------------------
# Conv1D


@QuantModuleRegistry.register({Conv1D: "Conv1D"})
class QuantConv1D(QuantLinear):
    """transformers' ``Conv1D`` quantized as the ``nn.Linear`` it is.

    ``weight`` reads as the ``[out, in]`` transposed view of the stored ``[in, out]`` parameter,
    so quantizers, calibration and algorithms see a linear layer's weight; the parameter itself
    (``state_dict``, ``parameters()``, optimizers) is untouched.
    """

    # Conv1D.__repr__ prints only nf/nx; show the quantizers like every quantized module does.
    __repr__ = nn.Module.__repr__

    @property
    def weight(self) -> torch.Tensor:
        w = self._stored_weight_view()
        mask = self._buffers.get("_weight_mask")  # a sparsified Conv1D (mopt.sparsity)
        return w if mask is None else w * mask.t()

    def _stored_weight_view(self) -> torch.Tensor:
        """The stored parameter as [out, in] (a view, for in-place writes)."""
        param = self._parameters.get("weight")
        if param is None:
            raise AttributeError(f"{type(self).__name__} has no weight parameter")
        return param.t()

    def _setup(self) -> None:
        weight = self._parameters.get("weight")
        if weight is None or weight.dim() != 2:
            raise ValueError(
                "Conv1D must hold a 2-D weight [in_features, out_features] to be quantized, got "
                f"{None if weight is None else tuple(weight.shape)}"
            )
        self.in_features, self.out_features = weight.shape
        super()._setup()

    def _unsetup(self) -> None:
        self.__dict__.pop("in_features", None)
        self.__dict__.pop("out_features", None)
        super()._unsetup()

    def extra_repr(self) -> str:
        return f"nf={self.out_features}, nx={self.in_features}"


# ---------------------------------------------------------------------------------------------
# Attention


def _forward_function(cls: type) -> Callable | None:
    fn = getattr(cls, "forward", None)
    if fn is None:
        return None
    fn = inspect.unwrap(fn)
    return fn if hasattr(fn, "__code__") and hasattr(fn, "__globals__") else None


def dispatches_attention_interface(cls: type) -> bool:
    """True when ``cls.forward`` computes attention through transformers' attention interface
    (it reads ``ALL_ATTENTION_FUNCTIONS``), i.e. it hands query, key and value to a function
    that the quantizing wrapper can intercept."""
    fn = _forward_function(cls)
    if fn is None or not issubclass(cls, nn.Module):
        return False
    interface = fn.__globals__.get("ALL_ATTENTION_FUNCTIONS")
    return "ALL_ATTENTION_FUNCTIONS" in fn.__code__.co_names and hasattr(interface, "__contains__")


def _quantizing(fn: Callable) -> Callable:
    """`fn` (an attention interface function) with query, key and value quantized by the calling
    module's bmm quantizers when that module is a quantized attention module."""
    if getattr(fn, _WRAPPED_FLAG, False):
        return fn

    @functools.wraps(fn)
    def attention_with_quantized_qkv(module, query, key, value, *args, **kwargs):
        if isinstance(module, QuantHFAttention):
            query, key, value = module.quantize_qkv(query, key, value)
        return fn(module, query, key, value, *args, **kwargs)

    setattr(attention_with_quantized_qkv, _WRAPPED_FLAG, True)
    return attention_with_quantized_qkv


def _set_interface_function(interface: Any, key: str, fn: Callable) -> None:
    # An entry the instance overrides stays local; a library-wide one is replaced library-wide
    # (AttentionInterface.register), so a later register() of the same key is not shadowed.
    local = getattr(interface, "_local_mapping", None)
    if isinstance(local, dict) and key not in local and hasattr(type(interface), "register"):
        type(interface).register(key, fn)
    else:
        interface[key] = fn


class QuantHFAttention(QuantModule):
    """A transformers attention module with ``q_bmm_quantizer``, ``k_bmm_quantizer`` and
    ``v_bmm_quantizer`` (8-bit per tensor, disabled until a config enables them) applied to the
    query, key and value handed to the attention function."""

    def _setup(self) -> None:
        for name in BMM_QUANTIZER_NAMES:
            quantizer = TensorQuantizer(QUANT_DESC_8BIT_PER_TENSOR)
            quantizer.disable()
            setattr(self, name, quantizer)

    def quantize_qkv(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query, key and value through their quantizers (a disabled one returns its input)."""
        return self.q_bmm_quantizer(query), self.k_bmm_quantizer(key), self.v_bmm_quantizer(value)

    def _route_attention_through_quantizers(self) -> None:
        # Wraps the function this forward is about to use, chosen as the forward chooses it
        # (ALL_ATTENTION_FUNCTIONS.get_interface(impl, eager_attention_forward)); checked on each
        # call because the implementation can change (model.set_attn_implementation) and new
        # ones can be registered after quantization.
        namespace = _forward_function(self._mopt_original_cls).__globals__
        interface = namespace["ALL_ATTENTION_FUNCTIONS"]
        impl = getattr(getattr(self, "config", None), "_attn_implementation", None)
        if impl is not None and impl.startswith("paged|") and impl != "paged|eager":
            impl = impl.removeprefix("paged|")  # as get_interface resolves it
        if impl is not None and impl in interface:
            current = interface[impl]
            if not getattr(current, _WRAPPED_FLAG, False):
                _set_interface_function(interface, impl, _quantizing(current))
            return
        eager = namespace.get("eager_attention_forward")
        if eager is None:
            raise NotImplementedError(
                f"{type(self).__name__}: attention implementation {impl!r} is not in "
                "ALL_ATTENTION_FUNCTIONS and the modeling file defines no eager_attention_forward, "
                "so its query/key/value cannot be quantized; use attn_implementation='sdpa'"
            )
        if not getattr(eager, _WRAPPED_FLAG, False):
            namespace["eager_attention_forward"] = _quantizing(eager)

    def forward(self, *args, **kwargs):
        # transformers' functions are only wrapped once some model enables these quantizers
        if any(getattr(self, name).is_enabled for name in BMM_QUANTIZER_NAMES):
            self._route_attention_through_quantizers()
        return super().forward(*args, **kwargs)


class QuantHFUpcastAttention(QuantHFAttention):
    """GPT-2-style attention, whose eager path with ``reorder_and_upcast_attn`` bypasses the
    attention interface through ``_upcast_and_reordered_attn``: that path is quantized too."""

    def _upcast_and_reordered_attn(self, query, key, value, attention_mask=None):
        query, key, value = self.quantize_qkv(query, key, value)
        return super()._upcast_and_reordered_attn(query, key, value, attention_mask)


def _register_attention(cls: type) -> None:
    quant_cls = (
        QuantHFUpcastAttention
        if callable(getattr(cls, "_upcast_and_reordered_attn", None))
        else QuantHFAttention
    )
    register(cls, quant_cls)


def register_hf_modules(model: nn.Module) -> None:
    """Registers, for conversion, every attention class in `model` that dispatches through
    transformers' attention interface (Conv1D is registered on import)."""
    seen: set[type] = set()
    for module in model.modules():
        cls = type(module)
        if cls in seen or isinstance(module, QuantModule):
            continue
        seen.add(cls)
        if cls not in QuantModuleRegistry and dispatches_attention_interface(cls):
            _register_attention(cls)
