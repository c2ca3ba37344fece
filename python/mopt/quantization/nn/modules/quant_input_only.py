"""Modules whose input is quantized: batch/instance norm, pooling, LeakyReLU."""

from torch import nn

from .quant_module import QuantInputBase, QuantModuleRegistry

__all__ = []

_INPUT_ONLY = [
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.LeakyReLU,
]

for _cls in _INPUT_ONLY:
    _quant = type(f"Quant{_cls.__name__}", (QuantInputBase, _cls),
                  {"__doc__": f"{_cls.__name__} with an input quantizer.",
                   "__module__": __name__})
    QuantModuleRegistry.register({_cls: f"nn.{_cls.__name__}"})(_quant)
    globals()[_quant.__name__] = _quant
    __all__.append(_quant.__name__)
