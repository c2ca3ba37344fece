"""Quantized modules and quantizers (mtq.nn)."""

from .modules import *  # noqa: F403
from .modules.quant_conv import __all__ as _conv_all
from .modules.quant_input_only import __all__ as _input_all
from .modules.quant_linear import __all__ as _linear_all
from .modules.quant_module import __all__ as _module_all
from .modules.tensor_quantizer import __all__ as _tq_all

__all__ = [*_conv_all, *_input_all, *_linear_all, *_module_all, *_tq_all]

# -- ModelOpt's other mtq.nn names: helpers, and refusals for the modules mopt lacks ---------------
from typing import Protocol as _Protocol  # noqa: E402

from ..._compat import define_refusals as _define_refusals  # noqa: E402
from ..tensor_quant import QUANT_DESC_8BIT_PER_TENSOR  # noqa: E402
from ..utils import (  # noqa: E402
    is_torch_export_mode,
    multi_context,
    replace_function,
)

# Every quantizer instance type.
AnyQuantizer = (TensorQuantizer, SequentialQuantizer)  # noqa: F405


class TensorQuantizerCache(_Protocol):
    """A protocol for a cache interface for TensorQuantizer."""


__all__ += ["AnyQuantizer", "QUANT_DESC_8BIT_PER_TENSOR", "TensorQuantizerCache",
            "is_torch_export_mode", "multi_context", "replace_function"]

_NN = "modelopt.torch.quantization.nn"
_RNN = "quantized RNN/LSTM/GRU modules"
_BACKEND = "pluggable real-quantized GEMM backends; mopt fake-quantizes"
_STATIC_BLOCK = ("static block quantizers with calibrated per-block scales (static NVFP4); "
                 "mopt's NVFP4/MX use dynamic block scales with a calibrated tensor amax")
__all__ += _define_refusals(globals(), _NN, {
    "GroupedQuantizer": ("class", "per-group quantizer containers for fused grouped GEMMs "
                         "(TransformerEngine grouped linear / fused MoE experts)"),
    "HardDisabledTensorQuantizer": ("class", "quantized nn.Embedding and its never-enabled "
                                    "quantizer slots"),
    "QuantEmbedding": ("class", "quantized nn.Embedding"),
    "NVFP4StaticQuantizer": ("class", _STATIC_BLOCK),
    "StaticBlockScaleQuantizer": ("class", _STATIC_BLOCK),
    "RealQuantLinear": ("class", "real (packed low-bit) quantized GEMMs; mopt fake-quantizes"),
    "SVDQuantLinear": ("class", "SVDQuant (low-rank residual branch)"),
    "QuantRNNBase": ("class", _RNN),
    "QuantRNNFullBase": ("class", _RNN),
    "RNNLayerForward": ("class", _RNN),
    "VFRNNForward": ("class", _RNN),
    "get_quantized_rnn_layer_forward": ("function", _RNN),
    "get_quantized_rnn_layer_variable_len_forward": ("function", _RNN),
    "get_quantized_rnn_layer_variable_len_reverse_forward": ("function", _RNN),
    "lstm_cell_with_proj": ("function", _RNN),
    "quantized_cell_forward": ("function", _RNN),
    "register_quant_backend": ("function", _BACKEND),
    "unregister_quant_backend": ("function", _BACKEND),
    "is_registered_quant_backend": ("function", _BACKEND),
})
