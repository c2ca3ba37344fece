"""Quantized nn.Linear."""

import torch.nn.functional as F
from torch import nn

from .quant_module import QuantLinearConvBase, QuantModuleRegistry

__all__ = ["QuantLinear"]


@QuantModuleRegistry.register({nn.Linear: "nn.Linear"})
class QuantLinear(QuantLinearConvBase, nn.Linear):
    """nn.Linear with input, weight (per output row by default) and output quantizers."""

    def _forward_quantized(self, input, weight):
        return F.linear(input, weight, self.bias)
