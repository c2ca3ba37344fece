"""Quantized modules."""

from .quant_conv import *  # noqa: F403
from .quant_input_only import *  # noqa: F403
from .quant_linear import *  # noqa: F403
from .quant_module import *  # noqa: F403
from .tensor_quantizer import *  # noqa: F403
