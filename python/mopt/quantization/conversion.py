"""Module conversion and config application (SPEC §1 "Config schema")."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from torch import nn

from .config import QuantizerAttributeConfig
from .nn.modules.quant_module import QuantModule, QuantModuleRegistry
from .nn.modules.tensor_quantizer import SequentialQuantizer, TensorQuantizer
from .utils import matches, parent_of

__all__ = [
    "replace_quant_module",
    "set_quantizer_by_cfg",
    "set_quantizer_attribute",
    "set_quantizer_by_cfg_context",
    "register",
    "unregister",
    "CUSTOM_MODEL_PLUGINS",
    "apply_model_plugins",
]

# fn(model) hooks run before a model is converted; plugins (mopt.quantization.plugins) use them to
# register the model's own module classes (e.g. transformers attention) for conversion.
CUSTOM_MODEL_PLUGINS: list[Callable[[nn.Module], None]] = []


def apply_model_plugins(model: nn.Module) -> None:
    """Runs every CUSTOM_MODEL_PLUGINS hook on `model` (idempotent)."""
    for plugin in CUSTOM_MODEL_PLUGINS:
        plugin(model)


def replace_quant_module(model: nn.Module, converted: list | None = None) -> int:
    """Converts every module whose type is registered into its quantized class, in place.

    Returns the number of quantizers inserted; `converted` (if given) receives the converted
    modules so a caller can roll them back.
    """
    if type(model) in QuantModuleRegistry:
        raise ValueError(
            f"the model itself is a {type(model).__name__}; wrap it in a container "
            "(e.g. nn.Sequential) so it can be converted in place"
        )
    apply_model_plugins(model)
    count = 0
    for name, module in list(model.named_modules()):
        if type(module) in QuantModuleRegistry and not isinstance(module, QuantModule):
            QuantModuleRegistry.convert(module)
            if converted is not None:
                converted.append(module)
            for qname in module._quantizer_names():
                q = getattr(module, qname)
                q.name = f"{name}.{qname}" if name else qname
                count += 1
    return count


def _set_one(model: nn.Module, name: str, module: nn.Module, attribute: Any) -> nn.Module:
    """Applies `attribute` to the quantizer at `name`, switching between Tensor- and
    SequentialQuantizer when the attribute's form asks for it: a list makes a SequentialQuantizer,
    a full QuantizerAttributeConfig makes a single TensorQuantizer again, and a plain dict on a
    SequentialQuantizer updates each of its quantizers (as the reference does)."""
    if isinstance(attribute, (list, tuple)):
        if not isinstance(module, SequentialQuantizer) or len(module) != len(attribute):
            new = SequentialQuantizer(*[TensorQuantizer() for _ in attribute])
            for i, q in enumerate(new):
                q.name = f"{name}.{i}"
            parent, attr = parent_of(model, name)
            setattr(parent, attr, new)
            module = new
    elif isinstance(module, SequentialQuantizer) and isinstance(attribute,
                                                                QuantizerAttributeConfig):
        new = TensorQuantizer()
        new.name = name
        parent, attr = parent_of(model, name)
        setattr(parent, attr, new)
        module = new
    module.set_from_attribute_config(attribute)
    return module


def _snapshot(quant_model: nn.Module) -> Callable[[], None]:
    """Saves every quantizer (the module objects in their slots, attributes and flags) and
    returns the function that puts them back."""
    slots = []
    for name, module in quant_model.named_modules():
        if isinstance(module, (TensorQuantizer, SequentialQuantizer)) and name:
            parent, attr = parent_of(quant_model, name)
            slots.append((parent, attr, module))
    states = [(q, q.attribute_config, q.mode) for q in quant_model.modules()
              if isinstance(q, TensorQuantizer)]

    def restore() -> None:
        for parent, attr, module in slots:
            if getattr(parent, attr, None) is not module:
                setattr(parent, attr, module)
        for q, attr_cfg, mode in states:
            if q.attribute_config is not attr_cfg:
                q.set_from_attribute_config(attr_cfg)
            q.set_mode(mode)

    return restore


@contextlib.contextmanager
def _restored_on_error(quant_model: nn.Module) -> Iterator[None]:
    """Puts every quantizer back when the block raises: a config that fails on its n-th
    quantizer changes none."""
    restore = _snapshot(quant_model)
    try:
        yield
    except BaseException:
        restore()
        raise


def set_quantizer_attribute(
    quant_model: nn.Module,
    wildcard_or_filter_func: str | Callable[[str], bool],
    attribute: Any,
    parent_class: type | None = None,
) -> int:
    """Sets `attribute` (dict: only its keys; QuantizerAttributeConfig: every field; list: a
    SequentialQuantizer) on every quantizer whose full name matches. Returns the match count.
    On error no quantizer is changed."""
    with _restored_on_error(quant_model):
        return _set_quantizer_attribute(quant_model, wildcard_or_filter_func, attribute,
                                        parent_class)


def _set_quantizer_attribute(quant_model: nn.Module, wildcard_or_filter_func: Any,
                             attribute: Any, parent_class: type | None) -> int:
    count = 0
    for name, module in list(quant_model.named_modules()):
        if not isinstance(module, (TensorQuantizer, SequentialQuantizer)):
            continue
        if isinstance(module, TensorQuantizer) and _inside_sequential(quant_model, name):
            continue
        if not matches(name, wildcard_or_filter_func):
            continue
        if parent_class is not None:
            parent, _ = parent_of(quant_model, name)
            if not isinstance(parent, parent_class):
                continue
        _set_one(quant_model, name, module, attribute)
        count += 1
    return count


def _inside_sequential(model: nn.Module, name: str) -> bool:
    if "." not in name:
        return False
    parent, _ = parent_of(model, name)
    return isinstance(parent, SequentialQuantizer)


def _iter_cfg(quant_cfg: dict) -> Iterator[tuple[Any, Any, type | None]]:
    """(pattern, attributes, parent class) in application order: "default" first."""
    if "default" in quant_cfg:
        yield "*", quant_cfg["default"], None
    for pattern, cfg in quant_cfg.items():
        if pattern == "default":
            continue
        if isinstance(pattern, str) and pattern in QuantModuleRegistry:
            if not isinstance(cfg, dict):
                raise ValueError(f"quant_cfg[{pattern!r}] must map sub-patterns to attributes")
            for sub_pattern, sub_cfg in cfg.items():
                yield sub_pattern, sub_cfg, QuantModuleRegistry[pattern]
            continue
        yield pattern, cfg, None


def set_quantizer_by_cfg(quant_model: nn.Module, quant_cfg: dict) -> None:
    """Applies a quant_cfg dict: "default" first, then in order, the last match wins; plain dict
    entries set only the keys they name. On error no quantizer is changed."""
    with _restored_on_error(quant_model):
        for pattern, cfg, parent_class in _iter_cfg(quant_cfg):
            _set_quantizer_attribute(quant_model, pattern, cfg, parent_class)


def _full(cfg: Any) -> Any:
    if isinstance(cfg, (list, tuple)):
        return [_full(c) for c in cfg]
    if isinstance(cfg, QuantizerAttributeConfig):
        return cfg
    return QuantizerAttributeConfig(**cfg)


def _enables(cfg: Any) -> bool:
    if isinstance(cfg, (list, tuple)):
        return any(_enables(c) for c in cfg)
    if isinstance(cfg, QuantizerAttributeConfig):
        return cfg.enable
    return cfg.get("enable", True)


def apply_quant_cfg_full(quant_model: nn.Module, quant_cfg: dict) -> None:
    """quantize()'s application: every matched entry resets all attributes (omitted fields take
    their defaults). Raises ValueError naming the enabling patterns that match no quantizer."""
    unmatched = []
    for pattern, cfg, parent_class in _iter_cfg(quant_cfg):
        n = set_quantizer_attribute(quant_model, pattern, _full(cfg), parent_class)
        if n == 0 and _enables(cfg) and isinstance(pattern, str):
            owner = "" if parent_class is None else f"{parent_class.__name__}/"
            unmatched.append(f"{owner}{pattern}")
    if unmatched:
        raise ValueError(
            f"mopt: quant_cfg enables quantizers with pattern(s) {unmatched} that match no "
            "quantizer in the model; check the names with mtq.print_quant_summary(model)"
        )


@contextlib.contextmanager
def set_quantizer_by_cfg_context(quant_model: nn.Module, quant_cfg: dict) -> Iterator[None]:
    """Applies quant_cfg for the duration of the block, then restores every quantizer."""
    for _, cfg, _ in _iter_cfg(quant_cfg):
        if isinstance(cfg, (list, tuple)):
            raise ValueError("set_quantizer_by_cfg_context does not take sequential (list) configs")
    restore = _snapshot(quant_model)
    try:
        set_quantizer_by_cfg(quant_model, quant_cfg)
        yield
    finally:
        restore()


def register(original_cls: type, quantized_cls: type) -> None:
    """Registers `quantized_cls` (with a ``_setup()`` creating its quantizers) for
    `original_cls`."""
    if not hasattr(quantized_cls, "_setup"):
        raise TypeError(f"{quantized_cls.__name__} must define _setup() to create its quantizers")
    QuantModuleRegistry.register({original_cls: original_cls.__name__})(quantized_cls)


def unregister(original_cls: type) -> None:
    """Removes the quantized class registered for `original_cls`."""
    QuantModuleRegistry.unregister(original_cls)
