"""Helpers shared by conversion, calibration and the algorithms."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from .. import _C
from .nn.modules.tensor_quantizer import SequentialQuantizer, TensorQuantizer

__all__ = [
    "is_quantized",
    "named_quantizers",
    "matches",
    "parent_of",
    "quantized_modules",
    "ParameterBackup",
]


def matches(name: str, wildcard_or_filter: str | Callable[[str], bool]) -> bool:
    """The config wildcard matcher (mopt._C.fnmatch, shared with C++) for strings, a call for
    filter functions."""
    if isinstance(wildcard_or_filter, str):
        return _C.fnmatch(name, wildcard_or_filter)
    if callable(wildcard_or_filter):
        return bool(wildcard_or_filter(name))
    raise TypeError(f"expected a wildcard string or a callable, got {wildcard_or_filter!r}")


def named_quantizers(model: nn.Module) -> Iterator[tuple[str, TensorQuantizer]]:
    """Every TensorQuantizer (inside SequentialQuantizers too) with its full name."""
    for name, m in model.named_modules():
        if isinstance(m, TensorQuantizer):
            yield name, m


def is_quantized(model: nn.Module) -> bool:
    """True when the model holds at least one quantizer."""
    return any(isinstance(m, (TensorQuantizer, SequentialQuantizer)) for m in model.modules())


def parent_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(parent module, attribute name) of the submodule called `name`."""
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def quantized_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Modules converted by mtq.quantize (they carry a weight_quantizer or input_quantizer)."""
    from .nn.modules.quant_module import QuantModule

    for name, m in model.named_modules():
        if isinstance(m, QuantModule):
            yield name, m


class ParameterBackup:
    """Copies of parameters an algorithm is about to change, restored if quantize() fails.

    Algorithms call ``ParameterBackup.save(module, "weight")`` before writing a parameter in
    place; outside mtq.quantize nothing is recorded.
    """

    _active: list[ParameterBackup] = []

    def __init__(self) -> None:
        self._saved: dict[tuple[int, str], tuple[nn.Module, str, torch.Tensor]] = {}

    @classmethod
    def save(cls, module: nn.Module, name: str) -> None:
        if not cls._active:
            return
        backup = cls._active[-1]
        key = (id(module), name)
        if key not in backup._saved:
            backup._saved[key] = (module, name, getattr(module, name).detach().clone())

    def restore(self) -> None:
        with torch.no_grad():
            for module, name, value in self._saved.values():
                getattr(module, name).copy_(value)
        self._saved.clear()

    @contextlib.contextmanager
    def recording(self) -> Iterator[ParameterBackup]:
        type(self)._active.append(self)
        try:
            yield self
        finally:
            type(self)._active.remove(self)
