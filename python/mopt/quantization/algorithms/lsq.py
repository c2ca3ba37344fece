"""``lsq``: learned scales (nvidia-modelopt's ``LSQConfig``; Esser et al. 2020, "Learned Step Size
Quantization"), SPEC §1 ``calibrate``.

Runs ``scale_algorithm`` (``max`` or ``mse``, default ``mse``), then turns the amax of every
static symmetric integer or minifloat weight quantizer into a quantization ("pre") and a
dequantization ("post") amax, ``w_q = Q(w / s_pre) * s_post`` with ``s = amax / B``; those named
in ``learnable_amax`` become ``nn.Parameter``s that a plain PyTorch training loop updates. The
gradient to them is the LSQ gradient of the C++ ops (``src/ops/fake_quant_autograd.cpp``, CPU and
CUDA alike). Every other algorithm leaves amax a frozen buffer. ModelOpt learns NVFP4 static
block scales only; mopt learns integer (per tensor, per channel, static blocks, narrow or full
range) and FP8/minifloat scales, and refuses NVFP4/MX/NF4 static blocks with NotImplementedError.
The options are checked by the C++ parser (``mopt._C.parse_algorithm``) before this runs.
"""

from __future__ import annotations

from torch import nn

from ... import _C
from ..nn.modules.tensor_quantizer import TensorQuantizer
from .collect import ForwardLoop, weight_stages
from .registry import algorithm_function, register_calibration_algorithm

__all__ = ["lsq", "lsq_quantizers"]


def lsq_quantizers(model: nn.Module) -> list[tuple[str, TensorQuantizer]]:
    """(name, quantizer) of the weight quantizers (stages) whose amax lsq can learn, as the C++
    rules (``_C.lsq_targets``, shared with ``mopt::calibrate``) decide: NotImplementedError
    naming a static block-scaled weight format (NVFP4, MX, NF4), ValueError when none is
    eligible."""
    found = []
    for layer, _, _, stages in weight_stages(model):
        for i, q in enumerate(stages):
            found.append((f"{layer}.weight_quantizer" + (f".{i}" if len(stages) > 1 else ""), q))
    indices = _C.lsq_targets([name for name, _ in found], [q.core for _, q in found])
    return [found[i] for i in indices]


def lsq(model: nn.Module, forward_loop: ForwardLoop | None = None,
        scale_algorithm: dict | None = None, learnable_amax: list[str] = ("post",),
        tied_amax: bool = False, quantize_pre_scale: bool = True) -> None:
    """Calibrates with `scale_algorithm`, then enables learned scales on every eligible weight
    quantizer (see the module docstring). ValueError, before anything changes, for a model with
    no eligible weight quantizer. `quantize_pre_scale` is ModelOpt's FP8 rounding of NVFP4
    block scales, which mopt's LSQ formats do not have."""
    targets = lsq_quantizers(model)
    scale = dict(scale_algorithm or {"method": "mse"})
    method = scale.pop("method")
    algorithm_function(method)(model, forward_loop, **scale)
    for _, q in targets:
        if q.amax is not None:
            q.enable_lsq(learnable_amax, tied_amax)


register_calibration_algorithm("lsq", lsq)
