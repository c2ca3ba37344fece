"""Weight bytes as deployed (``deployed_weight_bytes``), counted over every parameter once (tied
parameters once).

* a weight with an enabled weight quantizer: ``numel * element_bits / 8`` where element_bits is
  the stored format (INT b: b; FP (E, M): 1 + E + M; a SequentialQuantizer stores its narrowest
  stage), plus its scales: one per channel/block/tensor; block scales with ``scale_bits`` take
  that width (E8M0: 8, E4M3: 8, int 8: 8); other scales are fp16 (2 bytes), except a single
  per-tensor scale, fp32 (4 bytes); an asymmetric format adds one zero point per scale, at the
  element width (INT4: 4 bits); two-level schemes add their fp32 second level (NVFP4: one
  tensor scale; NF4 double quantization: one per scale group plus the fp32 mean); a
  pre_quant_scale (AWQ/SmoothQuant) adds fp16 per input channel;
* every other parameter (embeddings, norms, biases, unquantized layers, lm_head): 2 bytes (16-bit);
* the float baseline: every parameter at 2 bytes.

Effective bits = 8 * bytes / number of parameters. Activation scales are not weight bytes.

Each quantized weight is priced by the C++ format table (``mopt._C.weight_storage_bits``,
include/mopt/quant/formats.h); this module only walks the model and adds the prices up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import _C

__all__ = ["WeightBytes", "deployed_weight_bytes"]


@dataclass
class WeightBytes:
    """Deployed weight size of a model (see the module doc for the rules)."""

    total_bytes: float
    n_params: int
    quantized_params: int
    scale_bytes: float

    @property
    def effective_bits(self) -> float:
        return 8.0 * self.total_bytes / self.n_params if self.n_params else float("nan")


def deployed_weight_bytes(model: nn.Module) -> WeightBytes:
    """Bytes of `model`'s parameters as deployed (float: 16-bit; quantized weights at their
    format plus scales); see the module doc for the exact rules."""
    from ..quantization.nn.modules.tensor_quantizer import SequentialQuantizer, TensorQuantizer

    quantized: dict[int, tuple[float, float]] = {}  # id(param) -> (element bits, scale bits)
    for module in model.modules():
        wq = getattr(module, "weight_quantizer", None)
        weight = getattr(module, "weight", None)
        if not isinstance(wq, (TensorQuantizer, SequentialQuantizer)) or not isinstance(
            weight, torch.Tensor
        ):
            continue
        stages = [q for q in (wq if isinstance(wq, SequentialQuantizer) else [wq]) if q.is_enabled]
        if not stages:
            continue
        pqs_numel = sum(
            q.pre_quant_scale.numel()
            for q in [*stages, getattr(module, "input_quantizer", None)]
            if isinstance(getattr(q, "pre_quant_scale", None), torch.Tensor)
        )
        elem_bits, scale_bits = _C.weight_storage_bits(
            [q.attribute_config.to_json() for q in stages], list(weight.shape), pqs_numel
        )
        quantized[id(weight)] = (elem_bits, scale_bits)
    total_bits = 0.0
    scale_total = 0.0
    n_params = 0
    n_quant = 0
    seen: set[int] = set()
    for p in model.parameters():  # parameters() yields a tied parameter once
        if id(p) in seen:
            continue
        seen.add(id(p))
        n_params += p.numel()
        if id(p) in quantized:
            elem_bits, scale_bits = quantized[id(p)]
            total_bits += elem_bits + scale_bits
            scale_total += scale_bits
            n_quant += p.numel()
        else:
            total_bits += 16 * p.numel()
    return WeightBytes(total_bits / 8, n_params, n_quant, scale_total / 8)
