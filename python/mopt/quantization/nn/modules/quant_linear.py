"""Quantized nn.Linear."""

import torch.nn.functional as F
from torch import nn

from .quant_module import QuantLinearConvBase, QuantModuleRegistry, _LegacyQuantLinearConvMixin

__all__ = ["QuantLinear", "Linear"]


@QuantModuleRegistry.register({nn.Linear: "nn.Linear"})
class QuantLinear(_LegacyQuantLinearConvMixin, QuantLinearConvBase, nn.Linear):
    """nn.Linear with input, weight (per output row by default) and output quantizers.

    Built by conversion (mtq.quantize) or directly, as ModelOpt's legacy constructor:
    ``QuantLinear(in_features, out_features, quant_desc_input=..., quant_desc_weight=...)``.
    """

    def _forward_quantized(self, input, weight):
        return F.linear(input, weight, self.bias)


Linear = QuantLinear  # ModelOpt's legacy alias
