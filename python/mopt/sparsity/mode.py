"""The sparsity modes of ``mopt.opt``: ``sparse_magnitude``, ``sparsegpt``, ``wanda`` and
``export_sparse``.

A sparsity mode records the pattern and the names of the sparsified layers; restoring converts
those layers into sparse modules with a ``_weight_mask`` buffer of the weight's shape, which the
state dict then fills (masks and weights come from the file: nothing is searched again).
``export_sparse`` restores by folding the masks, as ``mts.export`` did.
"""

from __future__ import annotations

import torch
from torch import nn

from ..opt.mode import ModeDescriptor, register_mode
from .module import SparseModule, SparseModuleRegistry, dense_weight

__all__ = ["restore_export_sparse", "restore_sparse"]


def restore_sparse(model: nn.Module, config: dict, metadata: dict, undo: list) -> None:
    names = metadata.get("sparse_modules")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("mopt: the sparsity mode's metadata has no list of sparse_modules")
    present = dict(model.named_modules())
    missing = [n for n in names if n not in present]
    if missing:
        raise ValueError(f"mopt: the saved sparsity mode names layers this model does not have: "
                         f"{missing[:5]}")
    wrong = [n for n in names if SparseModuleRegistry.name_of(present[n]) is None]
    if wrong:
        raise ValueError(f"mopt: the saved sparsity mode names layers that cannot be sparse "
                         f"here: {wrong[:5]}")
    for name in names:
        module = present[name]
        SparseModuleRegistry.convert(module)
        undo.append(lambda module=module: SparseModuleRegistry.unconvert(module))
        weight = dense_weight(module)
        module.register_buffer("_weight_mask",
                               torch.ones(weight.shape, dtype=torch.bool, device=weight.device))


def restore_export_sparse(model: nn.Module, config: dict, metadata: dict, undo: list) -> None:
    for module in model.modules():
        if isinstance(module, SparseModule):
            mask = module._buffers.get("_weight_mask")
            module._fold_mask()
            undo.append(lambda module=module, mask=mask: (
                SparseModuleRegistry.convert(module), module.register_buffer("_weight_mask", mask)))


for _name in ("sparse_magnitude", "sparsegpt", "wanda"):
    register_mode(ModeDescriptor(_name, restore_sparse), kind="sparsity")
register_mode(ModeDescriptor("export_sparse", restore_export_sparse), kind="export")
