"""mopt.sparsity (``import mopt.sparsity as mts``): N:M weight sparsity with the API of
``modelopt.torch.sparsity``.

``mts.sparsify(model, "sparse_magnitude" | "sparsegpt" | "wanda", config)`` prunes the selected
layers to "N:M sparsity" (2:4 by default) and keeps the masks on the layers (``weight`` reads as
``weight_dense * mask``), so fine-tuning keeps the pattern; ``mts.export(model)`` folds them.
SparseGPT keeps its compensating weight update (``update_weights=False``: ModelOpt's mask only).
The masks and solvers are C++ (include/mopt/sparsity); see docs/sparsity.md.
"""

from . import config, mode, module
from .config import SparseGPTConfig, SparseMagnitudeConfig, WandaConfig
from .module import SparseModule, SparseModuleRegistry, dense_weight, is_sparse
from .sparsification import SPARSITY_MODES, export, parse_pattern, sparsify

__all__ = [
    "SPARSITY_MODES",
    "SparseGPTConfig",
    "SparseMagnitudeConfig",
    "SparseModule",
    "SparseModuleRegistry",
    "WandaConfig",
    "config",
    "dense_weight",
    "export",
    "is_sparse",
    "mode",
    "module",
    "parse_pattern",
    "sparsify",
]
