"""Sparse modules: a layer whose ``weight`` is ``weight_dense * mask`` on every access.

``SparseModuleRegistry.convert(module)`` turns an ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` /
transformers ``Conv1D`` into its sparse class in place (``SparseLinear`` ...; the parameters,
buffers and hooks stay) and ``set_mask`` installs the bool mask as the ``_weight_mask`` buffer
(ModelOpt's name, so state dicts match). The parameter itself stays registered as ``weight``;
reading ``module.weight`` returns the masked product, so a forward uses the pattern and the
gradient of every pruned weight is zero: an optimizer step keeps pruned weights (stored as zeros)
at zero, and the pattern holds through fine-tuning. Code that writes a weight in place must write
the parameter (``dense_weight(module)``), not the product.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from .. import _C

__all__ = [
    "SparseModule",
    "SparseModuleRegistry",
    "conv_geometry",
    "dense_weight",
    "is_sparse",
    "layout_of",
]


class SparseModule(nn.Module):
    """Mixin of sparse layers: ``weight`` reads as ``weight_dense * _weight_mask``."""

    _mopt_dense_cls: type = nn.Module

    def __getattr__(self, name: str):
        if name == "weight":
            weight = self.__dict__["_parameters"].get("weight")
            mask = self.__dict__["_buffers"].get("_weight_mask")
            if weight is not None and mask is not None:
                return weight * mask
        return super().__getattr__(name)

    @property
    def is_sparse(self) -> bool:
        """True once a mask is installed."""
        return self._buffers.get("_weight_mask") is not None

    def set_mask(self, mask: torch.Tensor | None) -> None:
        """Installs `mask` (bool, the weight's shape; True = kept) and zeroes the pruned weights
        in storage; None removes the mask."""
        if mask is None:
            self._buffers.pop("_weight_mask", None)
            return
        weight = self._parameters["weight"]
        if mask.shape != weight.shape:
            raise ValueError(f"mopt: the sparsity mask has shape {tuple(mask.shape)} but the "
                             f"weight {tuple(weight.shape)}")
        mask = mask.to(device=weight.device, dtype=torch.bool)
        with torch.no_grad():
            weight.mul_(mask)
        self.register_buffer("_weight_mask", mask)

    def _fold_mask(self) -> None:
        """Bakes the mask into the stored weight and turns back into the dense class."""
        mask = self._buffers.pop("_weight_mask", None)
        if mask is not None:
            with torch.no_grad():
                self._parameters["weight"].mul_(mask)
        self.__class__ = self._mopt_dense_cls


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The stored weight parameter of `module` (for in-place writes), masked or not."""
    weight = module._parameters.get("weight")
    return weight if weight is not None else module.weight


def is_sparse(module: nn.Module) -> bool:
    """True for a sparsified layer (a sparse module with a mask)."""
    return isinstance(module, SparseModule) and module.is_sparse


class _SparseModuleRegistryCls:
    """Maps a dense layer class to its sparse class, by type and by ModelOpt's rule name."""

    def __init__(self) -> None:
        self._by_type: dict[type, type] = {}
        self._names: dict[type, str] = {}

    def register(self, dense_cls: type, name: str) -> None:
        sparse_cls = type(f"Sparse{dense_cls.__name__}", (SparseModule, dense_cls),
                          {"_mopt_dense_cls": dense_cls, "__module__": __name__})
        self._by_type[dense_cls] = sparse_cls
        self._names[dense_cls] = name

    def _load_plugins(self) -> None:
        # transformers' GPT-2 Conv1D, when the user's code has imported transformers.
        pytorch_utils = sys.modules.get("transformers.pytorch_utils")
        conv1d = getattr(pytorch_utils, "Conv1D", None)
        if conv1d is not None and conv1d not in self._by_type:
            self.register(conv1d, "Conv1D")

    def names(self) -> list[str]:
        self._load_plugins()
        return list(self._names.values())

    def name_of(self, module: nn.Module) -> str | None:
        """The rule name of `module`'s (dense) type; None when it cannot be sparsified."""
        self._load_plugins()
        cls = type(module)
        if isinstance(module, SparseModule):
            cls = cls._mopt_dense_cls
        return self._names.get(cls)

    def convert(self, module: nn.Module) -> nn.Module:
        """Turns `module` into its sparse class in place (no mask yet)."""
        if isinstance(module, SparseModule):
            return module
        self._load_plugins()
        module.__class__ = self._by_type[type(module)]
        return module

    @staticmethod
    def unconvert(module: nn.Module) -> None:
        """Back to the dense class; the mask is dropped (the stored weight is kept as it is)."""
        if isinstance(module, SparseModule):
            module._buffers.pop("_weight_mask", None)
            module.__class__ = module._mopt_dense_cls


SparseModuleRegistry = _SparseModuleRegistryCls()
SparseModuleRegistry.register(nn.Linear, "nn.Linear")
SparseModuleRegistry.register(nn.Conv1d, "nn.Conv1d")
SparseModuleRegistry.register(nn.Conv2d, "nn.Conv2d")


def layout_of(module: nn.Module):
    """How `module` stores its weight (mopt._C.SparsityLayout)."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return _C.SparsityLayout.CONV
    if isinstance(module, nn.Linear):
        return _C.SparsityLayout.LINEAR
    return _C.SparsityLayout.TRANSPOSED  # transformers Conv1D: y = x W + b, W [in, out]


def conv_geometry(module: nn.Module, name: str) -> dict | None:
    """The patch geometry of a convolution (None for other layers); NotImplementedError for what
    the calibration-driven methods cannot unfold (string padding other than 'valid', padding
    modes other than 'zeros')."""
    if not isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return None
    padding = module.padding
    if isinstance(padding, str):
        if padding != "valid":
            raise NotImplementedError(f"mopt: sparsity of layer '{name}': padding='{padding}' "
                                      "is not supported by wanda/sparsegpt (use numeric padding)")
        padding = (0,) * len(module.kernel_size)
    if module.padding_mode != "zeros":
        raise NotImplementedError(f"mopt: sparsity of layer '{name}': padding_mode="
                                  f"'{module.padding_mode}' is not supported by wanda/sparsegpt")
    return {"kernel_size": list(module.kernel_size), "stride": list(module.stride),
            "padding": list(padding), "dilation": list(module.dilation),
            "groups": int(module.groups)}


