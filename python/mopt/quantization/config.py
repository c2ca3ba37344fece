"""Quantization configs: the attribute schema and the predefined recipes (SPEC §1).

A config is ``{"quant_cfg": {pattern: attrs}, "algorithm": ...}``. Attribute dicts are validated
by the C++ parser (``mopt._C.normalize_quantizer_config``), the same one the C++ API uses, so the
keys, defaults and error messages are identical in both languages.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from .. import _C

__all__ = [
    "QuantizerAttributeConfig",
    "QuantizeConfig",
    "need_calibration",
    "choices",
    *_C.predefined_config_names(),
]

_BLOCK_SPECIAL_KEYS = ("type", "scale_bits", "scale_block_sizes", "gguf")


def _to_jsonable(value: Any) -> Any:
    """Python attribute values -> JSON (tuples to lists, int dict keys to strings)."""
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    return value


def _block_dict_from_json(d: dict | None) -> dict | None:
    if d is None:
        return None
    out: dict = {}
    for k, v in d.items():
        if k in _BLOCK_SPECIAL_KEYS:
            if k == "scale_bits" and isinstance(v, list):
                v = tuple(v)
            elif k == "scale_block_sizes":
                v = _block_dict_from_json(v)
            if v is None and k != "type":
                continue
            out[k] = v
        else:
            out[int(k)] = v
    return out


def _from_json(d: dict) -> dict:
    """Normalized JSON dict -> the Python form users write (tuples, int axes)."""
    out = dict(d)
    if isinstance(out["num_bits"], list):
        out["num_bits"] = tuple(out["num_bits"])
    axis = out["axis"]
    if isinstance(axis, list):
        out["axis"] = axis[0] if len(axis) == 1 else tuple(axis)
    out["block_sizes"] = _block_dict_from_json(out["block_sizes"])
    return out


def _rebuild_attribute_config(fields: dict) -> QuantizerAttributeConfig:
    return QuantizerAttributeConfig(**fields)


class QuantizerAttributeConfig:
    """Attributes of one TensorQuantizer, validated and completed with defaults.

    ``QuantizerAttributeConfig(num_bits=4, block_sizes={-1: 128})``; fields are attributes
    (``cfg.num_bits``); ``model_dump()`` gives the dict, ``model_copy(update=...)`` a changed copy.
    ``calibrator`` may also be a ``(cls, args, kwargs)`` tuple of a Python calibrator class.
    """

    def __init__(self, **kwargs: Any) -> None:
        custom = kwargs.get("calibrator")
        if custom == "custom":  # the internal JSON marker of a Python calibrator class
            raise ValueError(
                "calibrator must be 'max', 'histogram' or a (cls, args, kwargs) tuple, got 'custom'"
            )
        if custom is not None and not isinstance(custom, str):
            if not (isinstance(custom, (tuple, list)) and len(custom) in (1, 2, 3)) and not callable(
                custom
            ):
                raise ValueError(
                    f"calibrator must be 'max', 'histogram' or a (cls, args, kwargs) tuple, "
                    f"got {custom!r}"
                )
            kwargs = {**kwargs, "calibrator": "custom"}
        try:
            text = json.dumps(_to_jsonable(kwargs))
        except RecursionError:
            raise ValueError("quantizer attributes are nested too deeply to be a config") from None
        normalized = _C.normalize_quantizer_config(text)
        fields = _from_json(json.loads(normalized))
        if custom is not None and not isinstance(custom, str):
            fields["calibrator"] = custom
        self.__dict__["_fields"] = fields
        self.__dict__["_json"] = normalized

    @classmethod
    def keys(cls) -> list[str]:
        """Field names, in schema order."""
        return list(_C.quantizer_attribute_keys())

    def __getattr__(self, name: str) -> Any:
        fields = self.__dict__.get("_fields")
        if fields is None:  # a copy or unpickle in progress: only __dict__ exists yet
            raise AttributeError(name)
        if name == "unsigned_":
            return fields["unsigned"]
        if name in fields:
            return fields[name]
        raise AttributeError(f"QuantizerAttributeConfig has no field {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("QuantizerAttributeConfig is immutable; use model_copy(update=...)")

    def __copy__(self) -> QuantizerAttributeConfig:
        return self  # immutable

    def __deepcopy__(self, memo: dict) -> QuantizerAttributeConfig:
        return self

    def __reduce__(self) -> tuple:
        return (_rebuild_attribute_config, (self.model_dump(),))

    def model_dump(self) -> dict:
        """All fields as a dict in the Python form."""
        return {k: copy.deepcopy(v) if k != "calibrator" else v for k, v in self._fields.items()}

    def model_copy(self, update: dict | None = None) -> QuantizerAttributeConfig:
        """A copy with the fields in `update` replaced (and validated)."""
        return QuantizerAttributeConfig(**{**self._fields, **(update or {})})

    def to_json(self) -> str:
        """The normalized JSON the C++ quantizer reads (a Python calibrator shows as 'custom')."""
        return self._json

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QuantizerAttributeConfig) and self._fields == other._fields

    def __repr__(self) -> str:
        return f"QuantizerAttributeConfig({self._fields})"


def _validate_quant_cfg(quant_cfg: dict) -> None:
    """Validates every attribute dict of a quant_cfg (raises ValueError naming the pattern)."""
    if not isinstance(quant_cfg, dict):
        raise ValueError(f"'quant_cfg' must be a dict of pattern -> attributes, got {type(quant_cfg)}")
    for pattern, attrs in quant_cfg.items():
        entries = attrs.items() if _is_class_pattern(pattern) and isinstance(attrs, dict) else [
            (pattern, attrs)
        ]
        if _is_class_pattern(pattern) and not isinstance(attrs, dict):
            raise ValueError(f"quant_cfg[{pattern!r}] must be a dict of sub-patterns, got {attrs!r}")
        for sub, sub_attrs in entries:
            for one in sub_attrs if isinstance(sub_attrs, (list, tuple)) else [sub_attrs]:
                if not isinstance(one, (dict, QuantizerAttributeConfig)):
                    raise ValueError(f"quant_cfg[{sub!r}] must be a dict of attributes, got {one!r}")
                if isinstance(one, dict):
                    try:
                        QuantizerAttributeConfig(**one)
                    except (ValueError, TypeError, NotImplementedError) as e:
                        raise type(e)(f"quant_cfg[{sub!r}]: {e}") from None


def _is_class_pattern(pattern: Any) -> bool:
    from .nn.modules.quant_module import QuantModuleRegistry

    return isinstance(pattern, str) and pattern in QuantModuleRegistry


class QuantizeConfig(dict):
    """A validated ``{"quant_cfg": ..., "algorithm": ...}`` config."""

    def __init__(self, config: dict | None = None) -> None:
        if config is not None and not isinstance(config, Mapping):
            hint = ""
            if isinstance(config, str) and config in _C.predefined_config_names():
                hint = f" (pass the dict: mtq.{config})"
            raise TypeError(
                f"the quantize config must be a dict like mtq.INT8_DEFAULT_CFG, got "
                f"{type(config).__name__} {config!r:.80}{hint}"
            )
        config = dict(config or {})
        unknown = set(config) - {"quant_cfg", "algorithm"}
        if unknown:
            raise ValueError(
                f"unknown quantize config key(s) {sorted(unknown)}; expected 'quant_cfg' and "
                "'algorithm'"
            )
        super().__init__(
            quant_cfg=config.get("quant_cfg", {"default": {"num_bits": 8, "axis": None}}),
            algorithm=config.get("algorithm", "max"),
        )
        _validate_quant_cfg(self["quant_cfg"])


def need_calibration(config: dict) -> bool:
    """True when quantizing with `config` needs a forward_loop: an algorithm other than max, or
    an enabled activation quantizer with a static amax (NVFP4 included: its blocks are dynamic
    but its tensor scale is calibrated). Weight quantizers calibrate from the weights alone."""
    algorithm = config.get("algorithm", "max")
    if algorithm is None:
        return False
    quant_cfg = config.get("quant_cfg", {})

    def _static_enabled(attrs: Any) -> bool:
        if isinstance(attrs, (list, tuple)):
            return any(_static_enabled(a) for a in attrs)
        if isinstance(attrs, dict):
            if not attrs.get("enable", True):
                return False
            attrs = QuantizerAttributeConfig(**attrs)
        if not isinstance(attrs, QuantizerAttributeConfig) or not attrs.enable:
            return False
        # the format table decides whether the quantizer keeps a calibrated amax (NVFP4's
        # dynamic blocks keep a calibrated tensor amax)
        return _C.format_info(attrs.to_json())["calibrated"]

    def _activation_pattern(pattern: Any) -> bool:
        return not (isinstance(pattern, str) and "weight_quantizer" in pattern)

    for pattern, attrs in quant_cfg.items():
        if isinstance(attrs, dict) and _is_class_pattern(pattern):
            if any(_activation_pattern(p) and _static_enabled(a) for p, a in attrs.items()):
                return True
        elif _activation_pattern(pattern) and _static_enabled(attrs):
            return True  # "default" too: it reaches the activation quantizers
    algo_name = algorithm if isinstance(algorithm, str) else (
        algorithm.get("method") if isinstance(algorithm, dict) else None
    )
    return algo_name not in (None, "max") or isinstance(algorithm, list)


# ---------------------------------------------------------------------------------------------
# Predefined configs (SPEC §1 table): defined once, in C++ (src/torch/configs.cpp), and read here in
# the Python form users write (tuples for (E, M) formats, int block-size axes).


def _python_attrs(d: dict) -> dict:
    out = dict(d)
    for key in ("num_bits", "axis"):
        if isinstance(out.get(key), list):
            out[key] = tuple(out[key])
    if isinstance(out.get("block_sizes"), dict):
        out["block_sizes"] = _python_block(out["block_sizes"])
    return out


def _python_block(d: dict) -> dict:
    out: dict = {}
    for k, v in d.items():
        if k == "scale_bits" and isinstance(v, list):
            v = tuple(v)
        elif k == "scale_block_sizes" and isinstance(v, dict):
            v = _python_block(v)
        out[k if k in _BLOCK_SPECIAL_KEYS else int(k)] = v
    return out


def _python_entry(pattern: str, value: Any) -> Any:
    if isinstance(value, list):
        return [_python_attrs(v) for v in value]
    if _is_class_pattern(pattern):
        return {sub: _python_entry(sub, v) for sub, v in value.items()}
    return _python_attrs(value)


def _predefined(name: str) -> dict:
    cfg = json.loads(_C.predefined_config_json(name))
    return {
        "quant_cfg": {p: _python_entry(p, v) for p, v in cfg["quant_cfg"].items()},
        "algorithm": cfg["algorithm"],
    }


for _name in _C.predefined_config_names():
    globals()[_name] = _predefined(_name)
del _name

# Names of every predefined config (mtq.config.choices).
choices: set[str] = set(_C.predefined_config_names())

# ModelOpt config names mopt lacks (refusals) and the config type aliases.
from .config_compat import *  # noqa: E402,F401,F403
