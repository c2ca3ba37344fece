"""Modules whose input is quantized: batch/instance norm, pooling, LeakyReLU."""

from torch import nn

from .... import _C
from .quant_module import QuantInputBase, QuantModuleRegistry, _LegacyQuantInputMixin

__all__ = []

# The classes of the built-in list (mopt._C.quant_classes) that get an input quantizer only.
_INPUT_ONLY = [getattr(nn, name[len("nn."):]) for name, kind in _C.quant_classes()
               if kind == "input_only"]

for _cls in _INPUT_ONLY:
    # Constructible directly too (ModelOpt's legacy form): QuantMaxPool2d(2, quant_desc_input=d).
    _quant = type(f"Quant{_cls.__name__}", (_LegacyQuantInputMixin, QuantInputBase, _cls),
                  {"__doc__": f"{_cls.__name__} with an input quantizer.",
                   "__module__": __name__})
    QuantModuleRegistry.register({_cls: f"nn.{_cls.__name__}"})(_quant)
    globals()[_quant.__name__] = _quant
    __all__.append(_quant.__name__)
    if "Pool" in _cls.__name__:  # ModelOpt's legacy aliases (mtq.nn.MaxPool2d, ...)
        globals()[_cls.__name__] = _quant
        __all__.append(_cls.__name__)
