"""Packed weights: a quantized weight held as its format's codes and scales
(``pack_weight``), computed and dequantized by the C++ kernels in kernels/pack. The layout of
every format is documented in include/mopt/quant/pack.h and docs/export.md."""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

from .. import _C
from .nn.modules.tensor_quantizer import SequentialQuantizer, TensorQuantizer

PackedWeight = _C.PackedWeight

__all__ = ["PackedWeight", "pack_weight", "compress", "is_compressed"]


def pack_weight(weight: torch.Tensor, weight_quantizer: TensorQuantizer) -> PackedWeight:
    """Packs `weight` as `weight_quantizer` fake-quantizes it: ``pack_weight(w, q).dequantize()``
    equals ``q(w)`` bit for bit. The quantizer must be enabled, quantizing and (if static)
    calibrated; its pre_quant_scale and zero point are applied as its forward applies them."""
    if isinstance(weight_quantizer, SequentialQuantizer):
        raise NotImplementedError(
            f"mopt: weight quantizer '{_name(weight_quantizer)}' is a SequentialQuantizer (several "
            "stages, e.g. W4A8's int4 then fp8): packed weights hold one format; there is no "
            "packed layout for stacked stages")
    if not isinstance(weight_quantizer, TensorQuantizer):
        raise TypeError(f"mopt: pack_weight takes a TensorQuantizer, got "
                        f"{type(weight_quantizer).__name__}")
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"mopt: pack_weight takes a weight tensor, got {type(weight).__name__}")
    q = weight_quantizer
    if q._lsq is not None and not q._lsq[2]:
        raise NotImplementedError(
            f"mopt: quantizer '{q.name}' learns separate quantization and dequantization amaxes "
            "(LSQ amax_pre / amax_post): layout not supported by packed weights, which keep one "
            "scale per block; tie them (enable_lsq(..., tied_amax=True)) or recalibrate")
    return _C.pack_weight(weight.detach(), q.core, q._amax_tensor(),
                          q._buffers.get("_pre_quant_scale"), q._buffers.get("_zero_point"))


def _name(q) -> str:
    return getattr(q, "name", None) or type(q).__name__


# -- mtq.compress --------------------------------------------------------------------------------

_PACKED_PREFIX = "packed_"
_compressed_classes: dict[type, type] = {}


class _CompressedWeightMixin:
    """A quantized Linear/Conv whose weight is held packed (buffers ``packed_data``,
    ``packed_amax``, ...; the layout in ``packed_weight``): ``weight`` is the dequantized weight
    (read only), forward dequantizes through the kernel and runs the float op on it."""

    @property
    def packed_weight(self) -> PackedWeight:
        """The PackedWeight over this module's packed buffers."""
        floats = self.__dict__["_mopt_packed_floats"]
        parts = {}
        for k, v in self._buffers.items():
            if k.startswith(_PACKED_PREFIX) and v is not None:
                name = k[len(_PACKED_PREFIX):]
                parts[name] = v.view(torch.float32) if name in floats else v
        key = tuple((k, v.data_ptr(), v.device) for k, v in sorted(parts.items()))
        cached = self.__dict__.get("_mopt_packed_cache")
        if cached is None or cached[0] != key:
            cached = (key, PackedWeight.from_parts(self.__dict__["_mopt_packed_meta"], parts))
            self.__dict__["_mopt_packed_cache"] = cached
        return cached[1]

    def __getstate__(self):
        # the PackedWeight view over the buffers is a cache of C++ objects: rebuilt on demand
        # after copy.deepcopy / pickling, which copy the buffers themselves
        state = self.__dict__.copy()
        state.pop("_mopt_packed_cache", None)
        return state

    def _apply(self, fn, recurse=True):
        # Packed buffers are integer tensors (fp32 scales kept as int32 bit views), so dtype
        # casts such as model.half() leave them alone; the probe tells which dtype the
        # dequantized weight takes from now on, and devices moves apply to the buffers as usual.
        probe = fn(torch.empty(0, dtype=self.__dict__["_mopt_weight_dtype"]))
        if isinstance(probe, torch.Tensor) and probe.is_floating_point():
            self.__dict__["_mopt_weight_dtype"] = probe.dtype
        return super()._apply(fn, recurse)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (equal to the fake-quantized weight), a frozen copy."""
        return self.packed_weight.dequantize(self.__dict__["_mopt_weight_dtype"])

    def __setattr__(self, name, value) -> None:
        if name == "weight":  # before nn.Module's parameter registration
            raise RuntimeError(
                f"mopt: the weight of this {type(self).__name__} is compressed (packed by "
                "mtq.compress) and frozen: it cannot be replaced or trained; train adapters "
                "(e.g. LoRA) on top of it, or quantize the float model again")
        super().__setattr__(name, value)

    def forward(self, input, *args, **kwargs):
        if isinstance(self, nn.Linear) and not args and not kwargs:
            # no dequantized weight kept for backward (QLoRA's memory saving, mopt.quantization.
            # qlora); the same op, so the same outputs
            from .qlora import packed_linear

            out = packed_linear(self.input_quantizer(input), self, self.bias)
        else:
            out = self._forward_quantized(self.input_quantizer(input), self.weight, *args,
                                          **kwargs)
        return self.output_quantizer(out)


def _compressed_class(cls: type) -> type:
    if cls not in _compressed_classes:
        _compressed_classes[cls] = type(f"Compressed{cls.__name__}", (_CompressedWeightMixin, cls),
                                        {"_mopt_compressed_from": cls})
    return _compressed_classes[cls]


def is_compressed(module: nn.Module) -> bool:
    """True when `module` or a submodule holds a packed (mtq.compress) weight."""
    return any(isinstance(m, _CompressedWeightMixin) for m in module.modules())


def _patterns(config) -> dict[str, bool]:
    if config is None:
        return {"*": True}
    if not isinstance(config, dict):
        raise TypeError(f"mopt: compress config must be None or a dict, got "
                        f"{type(config).__name__}")
    if "compress" in config or "quant_gemm" in config:  # ModelOpt's CompressConfig as a dict
        unknown = set(config) - {"compress", "quant_gemm"}
        if unknown:
            raise ValueError(f"mopt: unknown compress config keys {sorted(unknown)}; expected "
                             "'compress' and 'quant_gemm'")
        config = config.get("compress", {"*": True})
    for k, v in config.items():
        if not isinstance(k, str) or not isinstance(v, bool):
            raise ValueError(f"mopt: compress config maps name patterns to True/False, got "
                             f"{k!r}: {v!r}")
    return config


def _selected(name: str, patterns: dict[str, bool]) -> bool:
    on = patterns.get("default", False)
    for pattern, value in patterns.items():
        if pattern != "default" and fnmatch.fnmatch(f"{name}.weight_quantizer", pattern):
            on = value
    return on


def compress(model: nn.Module, config: dict | None = None) -> nn.Module:
    """Replaces the weight of every quantized Linear/Conv whose weight quantizer is enabled by
    its packed form (ModelOpt's ``mtq.compress``): the float weight is freed, the module keeps
    the codes and scales as buffers (``packed_*``, in its state_dict) and ``weight`` reads the
    dequantized weight. Forward dequantizes through the kernel and runs the float op, so the
    outputs equal the fake-quantized model's bit for bit; input and output quantizers work as
    before. `config`: None (every weight), ``{pattern: bool}`` on weight quantizer names, or
    ModelOpt's ``{"compress": {...}, "quant_gemm": bool}`` (mopt has no low-bit GEMM: the
    dequantized weight always feeds the float op). Every weight is packed before any module
    changes: an error (unquantized model, uncalibrated quantizer, unsupported layout) leaves
    the model untouched. Compressed weights are frozen (not parameters)."""
    from .nn.modules.quant_module import QuantLinearConvBase

    patterns = _patterns(config)
    chosen: list[tuple[str, nn.Module, PackedWeight]] = []
    quantized = 0
    for name, m in model.named_modules():
        if isinstance(m, _CompressedWeightMixin):
            raise ValueError(f"mopt: module '{name}' is already compressed")
        q = getattr(m, "weight_quantizer", None)
        if not isinstance(q, (TensorQuantizer, SequentialQuantizer)) or not q.is_enabled:
            continue
        quantized += 1
        if not _selected(name, patterns):
            continue
        forward = getattr(type(m), "forward", None)
        weight = m._parameters.get("weight")
        if (not isinstance(m, QuantLinearConvBase) or forward is not QuantLinearConvBase.forward
                or weight is None or getattr(type(m), "weight", None) is not None):
            raise NotImplementedError(
                f"mopt: module '{name}' ({type(m).__name__}) has an enabled weight quantizer but "
                "no packed form: compress handles quantized Linear/Conv layers whose weight is a "
                "plain parameter")
        try:
            with torch.no_grad():
                chosen.append((name, m, pack_weight(weight, q)))
        except (ValueError, TypeError, NotImplementedError, RuntimeError) as e:
            raise type(e)(f"mopt: cannot compress '{name}': {e}") from e
    if quantized == 0:
        raise ValueError("mopt: compress found no quantized weight (no enabled weight quantizer): "
                         "quantize the model with mtq.quantize first")
    if not chosen:
        raise ValueError(f"mopt: the compress config {patterns} selects none of the {quantized} "
                         "quantized weights")
    for _, m, packed in chosen:
        del m._parameters["weight"]
        floats = set()
        for k, t in packed.tensors().items():
            if t.dtype == torch.float32:
                floats.add(k)
                t = t.view(torch.int32)
            m.register_buffer(_PACKED_PREFIX + k, t)
        m.__dict__["_mopt_packed_meta"] = packed.metadata_json()
        m.__dict__["_mopt_packed_floats"] = frozenset(floats)
        m.__dict__["_mopt_weight_dtype"] = packed.dtype
        m.__class__ = _compressed_class(type(m))
    return model
