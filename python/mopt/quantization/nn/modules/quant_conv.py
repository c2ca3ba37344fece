"""Quantized convolutions and transposed convolutions (weights per output channel)."""

import torch.nn.functional as F
from torch import nn

from ...config import QuantizerAttributeConfig
from .quant_module import QuantLinearConvBase, QuantModuleRegistry, _LegacyQuantLinearConvMixin

__all__ = [
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantConvTranspose1d",
    "QuantConvTranspose2d",
    "QuantConvTranspose3d",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
]


class _QuantConvNd(_LegacyQuantLinearConvMixin, QuantLinearConvBase):
    def _forward_quantized(self, input, weight):
        return self._conv_forward(input, weight, self.bias)


@QuantModuleRegistry.register({nn.Conv1d: "nn.Conv1d"})
class QuantConv1d(_QuantConvNd, nn.Conv1d):
    """nn.Conv1d with quantizers."""


@QuantModuleRegistry.register({nn.Conv2d: "nn.Conv2d"})
class QuantConv2d(_QuantConvNd, nn.Conv2d):
    """nn.Conv2d with quantizers."""


@QuantModuleRegistry.register({nn.Conv3d: "nn.Conv3d"})
class QuantConv3d(_QuantConvNd, nn.Conv3d):
    """nn.Conv3d with quantizers."""


class _QuantConvTransposeNd(_LegacyQuantLinearConvMixin, QuantLinearConvBase):
    # Transposed-conv weights are [in, out / groups, ...]: output channels are axis 1.
    default_quant_desc_weight = QuantizerAttributeConfig(num_bits=8, axis=1)
    _conv_fn = None
    _spatial_dims = 0

    def _forward_quantized(self, input, weight, output_size=None):
        output_padding = self._output_padding(
            input, output_size, self.stride, self.padding, self.kernel_size,
            self._spatial_dims, self.dilation,
        )
        return type(self)._conv_fn(
            input, weight, self.bias, self.stride, self.padding, output_padding, self.groups,
            self.dilation,
        )


@QuantModuleRegistry.register({nn.ConvTranspose1d: "nn.ConvTranspose1d"})
class QuantConvTranspose1d(_QuantConvTransposeNd, nn.ConvTranspose1d):
    """nn.ConvTranspose1d with quantizers."""

    _conv_fn = staticmethod(F.conv_transpose1d)
    _spatial_dims = 1


@QuantModuleRegistry.register({nn.ConvTranspose2d: "nn.ConvTranspose2d"})
class QuantConvTranspose2d(_QuantConvTransposeNd, nn.ConvTranspose2d):
    """nn.ConvTranspose2d with quantizers."""

    _conv_fn = staticmethod(F.conv_transpose2d)
    _spatial_dims = 2


@QuantModuleRegistry.register({nn.ConvTranspose3d: "nn.ConvTranspose3d"})
class QuantConvTranspose3d(_QuantConvTransposeNd, nn.ConvTranspose3d):
    """nn.ConvTranspose3d with quantizers."""

    _conv_fn = staticmethod(F.conv_transpose3d)
    _spatial_dims = 3


# ModelOpt's legacy aliases.
Conv1d = QuantConv1d
Conv2d = QuantConv2d
Conv3d = QuantConv3d
ConvTranspose1d = QuantConvTranspose1d
ConvTranspose2d = QuantConvTranspose2d
ConvTranspose3d = QuantConvTranspose3d
