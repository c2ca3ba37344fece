"""Helpers shared by conversion, calibration and the algorithms."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from .. import _C
from .nn.modules.quant_module import stored_tensor
from .nn.modules.tensor_quantizer import SequentialQuantizer, TensorQuantizer

__all__ = [
    "is_quantized",
    "named_quantizers",
    "matches",
    "parent_of",
    "quantized_modules",
    "ParameterBackup",
    "stored_tensor",
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


def uncalibrated_quantizers(model: nn.Module) -> list[str]:
    """Names of the enabled static quantizers of `model` that have no amax."""
    return [name for name, q in named_quantizers(model)
            if q.is_enabled and q.is_static and q.amax is None]


def is_quantized(module: nn.Module) -> bool:
    """True when the module holds at least one quantizer."""
    return any(isinstance(m, (TensorQuantizer, SequentialQuantizer)) for m in module.modules())


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
            backup._saved[key] = (module, name, stored_tensor(module, name).detach().clone())

    def restore(self) -> None:
        with torch.no_grad():
            for module, name, value in self._saved.values():
                stored_tensor(module, name).copy_(value)
        self._saved.clear()

    @contextlib.contextmanager
    def recording(self) -> Iterator[ParameterBackup]:
        type(self)._active.append(self)
        try:
            yield self
        finally:
            type(self)._active.remove(self)


# -- ModelOpt's mtq.utils names --------------------------------------------------------------------
# (modelopt.torch.quantization.utils; tests/python/compat walks the full list.)

from collections import namedtuple  # noqa: E402
from contextlib import ExitStack, contextmanager  # noqa: E402

from .._compat import define_refusals  # noqa: E402

_FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                                                "float8_e5m2fnuz") if hasattr(torch, n))


def convert_quantization_axis_to_reduce_axis(input: torch.Tensor, axis) -> list[int] | None:
    """The dims to reduce for a quantization axis (the dims it keeps); None: reduce all."""
    if axis is None:
        return None
    axis = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    kept = {a % input.dim() for a in axis}
    return [i for i in range(input.dim()) if i not in kept]


@torch.no_grad()
def reduce_amax(input: torch.Tensor, axis=None, keepdims: bool = True,
                squeeze_scalar: bool = True) -> torch.Tensor:
    """max |input| over the dims in `axis` (all when None), in the input's dtype; computed by
    torch.ops.mopt.amax in one pass."""
    if input.dtype in _FP8_DTYPES:  # represented exactly in the default float dtype
        input = input.to(torch.get_default_dtype())
    if axis is None:
        return torch.ops.mopt.amax(input, []).reshape(()).to(input.dtype)
    reduce = {a % input.dim() for a in ((axis,) if isinstance(axis, int) else axis)}
    kept = [i for i in range(input.dim()) if i not in reduce]
    out = torch.ops.mopt.amax(input, kept).to(input.dtype)
    if not keepdims:
        out = out.reshape([input.shape[i] for i in kept])
    if squeeze_scalar and out.numel() == 1:
        out = out.squeeze()
    return out


@torch.no_grad()
def reduce_sum(input: torch.Tensor, axis=None, keepdims: bool = True) -> torch.Tensor:
    """Sum over the dims in `axis` (all when None)."""
    if axis is None:
        return torch.sum(input)
    return torch.sum(input, dim=(axis,) if isinstance(axis, int) else tuple(axis), keepdim=keepdims)


QuantizerAttrNames = namedtuple(
    "QuantizerAttrNames",
    ("weight_quantizer", "input_quantizer", "output_quantizer", "weight_scale", "weight_scale_2",
     "input_scale", "output_scale"),
)


def quantizer_attr_names(weight_name: str = "weight") -> QuantizerAttrNames:
    """The quantizer and scale attribute names that belong to a weight called `weight_name`."""
    prefix = "" if weight_name == "weight" else f"{weight_name}_"
    return QuantizerAttrNames(*(prefix + n for n in QuantizerAttrNames._fields))


def representative_weight_quantizer(module: nn.Module, weight_name: str = "weight"):
    """The weight quantizer of `weight_name` on `module` (the first of a per-expert list)."""
    name = quantizer_attr_names(weight_name).weight_quantizer
    q = getattr(module, name, None)
    if isinstance(q, (TensorQuantizer, SequentialQuantizer)):
        return q
    plural = getattr(module, name + "s", None)
    if isinstance(plural, nn.ModuleList) and len(plural) > 0 and isinstance(
            plural[0], (TensorQuantizer, SequentialQuantizer)):
        return plural[0]
    return None


def weight_attr_names(module: nn.Module) -> Iterator[str]:
    """The names of the weights of `module` that have a weight quantizer (non-recursive)."""
    if getattr(module, "weight", None) is not None and representative_weight_quantizer(module):
        yield "weight"
    for name in list(module._modules):
        for suffix in ("_weight_quantizer", "_weight_quantizers"):
            if name.endswith(suffix):
                weight = name[: -len(suffix)]
                if weight != "weight" and getattr(module, weight, None) is not None:
                    yield weight


def is_quantized_linear(module: nn.Module) -> bool:
    """A quantized module with an input quantizer and a 2-D weight with a weight quantizer."""
    from .nn.modules.quant_module import QuantModule

    if isinstance(module, nn.Embedding):
        return False
    weight = getattr(module, "weight", None)
    return (isinstance(module, QuantModule)
            and isinstance(getattr(module, "input_quantizer", None), TensorQuantizer)
            and hasattr(module, "weight_quantizer")
            and isinstance(weight, torch.Tensor) and weight.dim() == 2)


def is_quantized_column_parallel_linear(module: nn.Module) -> bool:
    """A quantized tensor-parallel column linear (as marked by a Megatron-style plugin)."""
    return is_quantized_linear(module) and getattr(module, "_is_column_parallel", False)


def is_quantized_row_parallel_linear(module: nn.Module) -> bool:
    """A quantized tensor-parallel row linear (as marked by a Megatron-style plugin)."""
    return is_quantized_linear(module) and getattr(module, "_is_row_parallel", False)


def is_quantized_parallel_linear(module: nn.Module) -> bool:
    return is_quantized_column_parallel_linear(module) or is_quantized_row_parallel_linear(module)


@contextmanager
def replace_function(package, name: str, new_func, og_func_cache_name: str | None = None):
    """Within the context, `package.name` is `new_func` (the original kept as
    `package._name`)."""
    og_func_cache_name = og_func_cache_name or "_" + name
    old_func = getattr(package, name)
    setattr(package, name, new_func)
    setattr(package, og_func_cache_name, old_func)
    try:
        yield
    finally:
        setattr(package, name, old_func)
        delattr(package, og_func_cache_name)


@contextmanager
def multi_context(*cms):
    """Enters every context manager given."""
    with ExitStack() as stack:
        yield [stack.enter_context(cm) for cm in cms]


EXPORT_MODE: bool = False


@contextmanager
def export_torch_mode():
    """Marks that the model is being exported with torch.export."""
    global EXPORT_MODE
    previous, EXPORT_MODE = EXPORT_MODE, True
    try:
        yield
    finally:
        EXPORT_MODE = previous


def is_torch_export_mode() -> bool:
    return EXPORT_MODE


def is_pow2(n: int) -> bool:
    return n != 0 and (n & (n - 1)) == 0


def _weight_quantizers(module: nn.Module):
    for m in module.modules():
        wq = getattr(m, "weight_quantizer", None)
        if isinstance(wq, SequentialQuantizer):
            yield from wq
        elif isinstance(wq, TensorQuantizer):
            yield wq


@contextmanager
def enable_fake_quant(module: nn.Module):
    """Within the context every weight quantizer of `module` fake-quantizes."""
    saved = [(q, q.fake_quant) for q in _weight_quantizers(module)]
    try:
        for q, _ in saved:
            if not q.fake_quant:
                q.fake_quant = True
        yield
    finally:
        for q, fake in saved:
            if q.fake_quant != fake:
                q.fake_quant = fake


@contextmanager
def enable_quant(quantizer: TensorQuantizer):
    """Within the context `quantizer` quantizes."""
    mode = quantizer.mode
    quantizer.enable_quant()
    try:
        yield
    finally:
        quantizer.set_mode(mode)


@contextmanager
def disable_calib(quantizer: TensorQuantizer):
    """Within the context `quantizer` does not calibrate."""
    mode = quantizer.mode
    quantizer.disable_calib()
    try:
        yield
    finally:
        quantizer.set_mode(mode)


@contextmanager
def no_requires_grad():
    """Within the context new nn.Parameters are created with requires_grad=False."""
    original_new = torch.nn.Parameter.__new__

    def new(cls, data=None, requires_grad=True):
        return original_new(cls, data, requires_grad=False)

    torch.nn.Parameter.__new__ = new
    try:
        yield
    finally:
        torch.nn.Parameter.__new__ = original_new


def _unwrapped_name(name: str, model: nn.Module) -> str:
    from ..utils import get_unwrapped_name

    return get_unwrapped_name(name, model)


def get_quantizer_state_dict(model: nn.Module) -> dict:
    """{quantizer name: its state_dict} for every TensorQuantizer of `model`."""
    return {_unwrapped_name(n, model): q.state_dict() for n, q in named_quantizers(model)}


def set_quantizer_state_dict(model: nn.Module, quantizer_state_dict: dict) -> None:
    """Loads the states `get_quantizer_state_dict` returned into the matching quantizers."""
    for n, q in named_quantizers(model):
        key = _unwrapped_name(n, model)
        if key in quantizer_state_dict:
            q.load_state_dict(quantizer_state_dict[key])


def update_quant_cfg_with_kv_cache_quant(quant_cfg: dict, kv_cache_quant_cfg: dict) -> dict:
    """A copy of `quant_cfg` with the KV-cache quantizer entries added (algorithm "max" when
    none is set). mopt configs are dicts of pattern -> attributes, so `kv_cache_quant_cfg` is
    such a dict (e.g. ``mtq.FP8_KV_CFG["quant_cfg"]``)."""
    import copy

    if isinstance(kv_cache_quant_cfg, (list, tuple)) or isinstance(
            (quant_cfg or {}).get("quant_cfg"), (list, tuple)):
        raise TypeError("mopt's quant_cfg is a dict of pattern -> attributes; ModelOpt's list "
                        "form of entries is not supported")
    quant_cfg = copy.deepcopy(quant_cfg)
    inner = dict(quant_cfg.get("quant_cfg") or {"default": {"enable": False}})
    inner.update(copy.deepcopy(kv_cache_quant_cfg))
    quant_cfg["quant_cfg"] = inner
    if not quant_cfg.get("algorithm"):
        quant_cfg["algorithm"] = "max"
    return quant_cfg


__all__ += [
    "convert_quantization_axis_to_reduce_axis", "reduce_amax", "reduce_sum", "QuantizerAttrNames",
    "quantizer_attr_names", "representative_weight_quantizer", "weight_attr_names",
    "is_quantized_linear", "is_quantized_column_parallel_linear",
    "is_quantized_row_parallel_linear", "is_quantized_parallel_linear", "replace_function",
    "multi_context", "EXPORT_MODE", "export_torch_mode", "is_torch_export_mode", "is_pow2",
    "enable_fake_quant", "enable_quant", "disable_calib", "no_requires_grad",
    "get_quantizer_state_dict", "set_quantizer_state_dict", "update_quant_cfg_with_kv_cache_quant",
]

_MU = "modelopt.torch.quantization.utils"
_FSDP = ("FSDP2 / accelerate-offloaded weight access; mopt calibrates models whose weights are "
         "materialized on one device per process")
_SHARED = ("quantizers shared across layers that read the same input (shared-input groups); "
           "mopt keeps one quantizer per module")
_STATIC_NVFP4 = ("static NVFP4 / static-block weight quantizers with calibrated per-block "
                 "scales; mopt's block formats use dynamic block scales")
__all__ += define_refusals(globals(), _MU, {
    "SHARED_PATTERNS": ("object", _SHARED),
    "SHARED_PATTERNS_ACROSS_EXPERTS": ("object", _SHARED),
    "SharedQuantState": ("class", _SHARED),
    "SharedWeightGlobalAmaxState": ("class", _SHARED),
    "find_shared_input_groups": ("function", _SHARED),
    "iter_shared_quant_states": ("function", _SHARED),
    "promote_nvfp4_static_quantizers": ("function", _STATIC_NVFP4),
    "promote_static_block_weight_quantizers": ("function", _STATIC_NVFP4),
    "reduce_block_amax": ("function", "block amax as a separate step; a TensorQuantizer with "
                          "block_sizes computes block amax inside torch.ops.mopt.quantize_tensor"),
    "reduce_block_padding": ("function", "block padding as a separate step; a TensorQuantizer "
                             "with block_sizes pads inside torch.ops.mopt.quantize_tensor"),
    "calibrate_with_adapters": ("function", "disabling LoRA adapters around calibration "
                                "(ModelOpt's peft/NeMo adapter integration)"),
    "disable_lora_quantizers_in_config": ("function", "ModelOpt's list-form quant_cfg entries "
                                          "for LoRA layers"),
    "fsdp2_weight_access_and_writeback_context": ("function", _FSDP),
    "fsdp2_aware_weight_update": ("function", _FSDP),
    "enable_weight_access_and_writeback": ("function", _FSDP),
    "requires_weight_materialization": ("function", _FSDP),
    "has_accelerate_offload": ("function", _FSDP),
    "persistent_materialization": ("function", _FSDP),
    "patch_fsdp_mp_dtypes": ("function", _FSDP),
    "build_param_index": ("function", _FSDP),
    "get_prefixed_param_names": ("function", _FSDP),
    "create_fsdp_param_mapping": ("function", _FSDP),
    "sync_moe_expert_amax": ("function", "syncing amax across MoE experts (ModelOpt's "
                             "Megatron/HF MoE export path)"),
    "LayerActivationCollector": ("class", "ModelOpt's layerwise (sequential) calibration "
                                 "collector; mopt's layer replay is internal "
                                 "(mopt.quantization.algorithms.decoder)"),
})
