"""mopt: model optimization for PyTorch and LibTorch.

Quantize (``mopt.quantization``), sparsify and cache diffusion models behind one composable API
that follows NVIDIA TensorRT Model Optimizer's, with the numerics implemented once in C++/CUDA.
"""

import os as _os

import torch as _torch  # noqa: F401  (loads libtorch before the extension)

__version__ = "0.1.0"

# Development builds in another build tree: MOPT_EXT_DIR names the folder holding _C*.so.
_ext_dir = _os.environ.get("MOPT_EXT_DIR")
if _ext_dir:
    __path__.insert(0, _os.path.abspath(_ext_dir))

from . import _C  # noqa: E402,F401  (registers torch.ops.mopt.*)

__all__ = ["__version__"]
