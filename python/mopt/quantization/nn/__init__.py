"""Quantized modules and quantizers (mtq.nn)."""

from .modules import *  # noqa: F403
from .modules.quant_conv import __all__ as _conv_all
from .modules.quant_input_only import __all__ as _input_all
from .modules.quant_linear import __all__ as _linear_all
from .modules.quant_module import __all__ as _module_all
from .modules.tensor_quantizer import __all__ as _tq_all

__all__ = [*_conv_all, *_input_all, *_linear_all, *_module_all, *_tq_all]
