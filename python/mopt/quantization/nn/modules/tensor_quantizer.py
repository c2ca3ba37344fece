"""TensorQuantizer and SequentialQuantizer modules (SPEC §1 "Modules").

A TensorQuantizer is an ``nn.Module`` that keeps the state PyTorch serializes and moves (the
``_amax`` and ``_pre_quant_scale`` buffers) around one ``mopt._C.QuantizerCore``, the C++ object
the C++ ``mopt::TensorQuantizer`` module wraps too. The core holds the attributes, the mode
flags and the calibrator and makes every decision (flag semantics, calibrator choice, the
calibration view and kept axes, the amax policy, the input checks, the printed form); this
module only passes its buffers in and stores what comes back.

The forward is one call: ``torch.ops.mopt.quantize_tensor`` with the config the core names when
the forward is exactly that operator (quantizing or disabled, not calibrating), so
``torch.compile`` traces it into a graph, and the core's forward otherwise.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Iterator

import torch
from torch import nn

from .... import _C
from ...._compat import refused_method
from ...config import QuantizerAttributeConfig, _from_json

__all__ = ["TensorQuantizer", "SequentialQuantizer"]



_DEFAULT_ATTRIBUTES: list[QuantizerAttributeConfig] = []


def _default_attributes() -> QuantizerAttributeConfig:
    """The default attributes, built once (the config is immutable; models have hundreds of
    quantizers)."""
    if not _DEFAULT_ATTRIBUTES:
        _DEFAULT_ATTRIBUTES.append(QuantizerAttributeConfig())
    return _DEFAULT_ATTRIBUTES[0]


# attributes JSON -> a core built from it that never collects: new quantizers start as copies
# (a C++ copy is several times cheaper than resolving the attributes again, and conversion and
# restore build hundreds of quantizers from a handful of configs). Bounded: cleared when full.
_PROTOTYPE_CORES: dict[str, Any] = {}
_MAX_PROTOTYPES = 64


def _new_core(attr: QuantizerAttributeConfig) -> Any:
    """A fresh C++ core for `attr` (a Python calibrator class gets its own factory)."""
    factory = _calibrator_factory(attr)
    key = attr.to_json()
    if factory is not None:
        return _C.QuantizerCore(key, factory)
    prototype = _PROTOTYPE_CORES.get(key)
    if prototype is None:
        if len(_PROTOTYPE_CORES) >= _MAX_PROTOTYPES:
            _PROTOTYPE_CORES.clear()
        prototype = _PROTOTYPE_CORES[key] = _C.QuantizerCore(key, None)
    return prototype.__copy__()


def _calibrator_factory(attr: QuantizerAttributeConfig):
    """A factory for a Python calibrator class given as ``(cls, args, kwargs)`` (or a callable);
    None for the built-in calibrators, which the core builds itself."""
    calib = attr.calibrator
    if isinstance(calib, str):
        return None
    if isinstance(calib, (tuple, list)):
        cls, args, kwargs = (list(calib) + [(), {}])[:3]
        return lambda: cls(*args, **kwargs)
    return calib


class TensorQuantizer(nn.Module):
    """Fake-quantizes a tensor as its attribute config describes; calibrates its amax.

    Forward: multiply by ``pre_quant_scale``; if disabled, return; reshape into static blocks
    (zero padding); if calibrating, feed the calibrator; if quantizing, fake-quantize; undo the
    reshape. A static quantizer that was never calibrated uses its input's dynamic amax (with a
    one-time warning).
    """

    # Learned scales (algorithm lsq): None, or (learn_pre, learn_post, tied). `_amax` is then the
    # dequantization ("post") amax and `_amax_pre` (untied only) the quantization one; each is an
    # nn.Parameter when learned, else a buffer.
    _lsq: tuple[bool, bool, bool] | None = None

    def __init__(
        self,
        quant_attribute_cfg: QuantizerAttributeConfig | dict | None = None,
        if_quant: bool = True,
        if_calib: bool = False,
        amax: torch.Tensor | float | None = None,
    ) -> None:
        super().__init__()
        if quant_attribute_cfg is None:
            quant_attribute_cfg = _default_attributes()
        elif isinstance(quant_attribute_cfg, dict):
            quant_attribute_cfg = QuantizerAttributeConfig(**quant_attribute_cfg)
        # neither is a Module, Parameter or Tensor: plain attributes, set without
        # nn.Module.__setattr__'s checks (models hold hundreds of quantizers)
        self.__dict__["_attr"] = quant_attribute_cfg
        self.__dict__["_core"] = _new_core(quant_attribute_cfg)
        self._core.if_quant = if_quant
        self._core.if_calib = if_calib
        self._refresh()
        if amax is not None:
            self.amax = amax

    def __setstate__(self, state: dict) -> None:
        # deepcopy and unpickling: the core came back without the factory of a Python calibrator
        # class (a closure), which the attributes give again.
        super().__setstate__(state)
        factory = _calibrator_factory(self._attr)
        if factory is not None:
            self._core.set_attributes(self._attr.to_json(), factory)

    def _refresh(self) -> None:
        """Caches, as plain attributes a traced forward can read, what the core decided."""
        self.__dict__["_cfg_json"] = self._core.attributes_json
        self.__dict__["_forward_cfg"] = self._core.forward_config(
            self._amax_tensor() is not None)

    # -- configuration --------------------------------------------------------------------------
    def set_from_attribute_config(self, attribute_cfg: QuantizerAttributeConfig | dict) -> None:
        """Applies attributes: a QuantizerAttributeConfig replaces all of them, a dict only the
        keys it names."""
        if isinstance(attribute_cfg, QuantizerAttributeConfig):
            self._set_attr(attribute_cfg)
        elif isinstance(attribute_cfg, dict):
            self._set_attr(self._attr.model_copy(update=attribute_cfg))
        else:
            raise TypeError(
                f"attribute config must be a dict or QuantizerAttributeConfig, got "
                f"{type(attribute_cfg).__name__}"
            )

    def _set_attr(self, attr: QuantizerAttributeConfig) -> None:
        self._core.set_attributes(attr.to_json(), _calibrator_factory(attr))
        self.__dict__["_attr"] = attr
        self._refresh()

    @property
    def attribute_config(self) -> QuantizerAttributeConfig:
        """The current attributes."""
        return self._attr

    @property
    def core(self) -> Any:
        """The C++ quantizer core (``mopt._C.QuantizerCore``) the algorithms hand to C++."""
        return self._core

    @property
    def format(self) -> dict:
        """The format the attributes resolve to (a row of ``_C.format_table()`` plus the element
        format: name, element_bits, block_size, dynamic, calibrated)."""
        return self._core.format

    def kept_axes(self, ndim: int) -> list[int]:
        """Axes of the calibration view kept in amax for an input of `ndim` dims."""
        return list(self._core.kept_axes(ndim))

    def _update(self, key: str, value: Any) -> None:
        self.set_from_attribute_config({key: value})

    num_bits = property(lambda self: self._attr.num_bits, lambda self, v: self._update("num_bits", v))
    axis = property(lambda self: self._attr.axis, lambda self, v: self._update("axis", v))
    block_sizes = property(
        lambda self: self._attr.block_sizes, lambda self, v: self._update("block_sizes", v)
    )
    unsigned = property(lambda self: self._attr.unsigned, lambda self, v: self._update("unsigned", v))
    narrow_range = property(
        lambda self: self._attr.narrow_range, lambda self, v: self._update("narrow_range", v)
    )
    full_range = property(
        lambda self: self._attr.full_range, lambda self, v: self._update("full_range", v)
    )
    asymmetric = property(
        lambda self: self._attr.asymmetric, lambda self, v: self._update("asymmetric", v)
    )
    fake_quant = property(
        lambda self: self._attr.fake_quant, lambda self, v: self._update("fake_quant", v)
    )
    pass_through_bwd = property(
        lambda self: self._attr.pass_through_bwd,
        lambda self, v: self._update("pass_through_bwd", v),
    )
    trt_high_precision_dtype = property(
        lambda self: self._attr.trt_high_precision_dtype,
        lambda self, v: self._update("trt_high_precision_dtype", v),
    )

    # modelopt-style private aliases used by scripts that poke at quantizers
    _num_bits = property(lambda self: self._attr.num_bits)
    _axis = property(lambda self: self._attr.axis)
    _block_sizes = property(lambda self: self._attr.block_sizes)
    _unsigned = property(lambda self: self._attr.unsigned)
    _narrow_range = property(lambda self: self._attr.narrow_range)
    _fake_quant = property(lambda self: self._attr.fake_quant)

    def _flag(name: str):  # noqa: N805 (a property factory used in the class body)
        def get(self) -> bool:
            return getattr(self._core, name)

        def set_(self, value: bool) -> None:
            setattr(self._core, name, bool(value))
            self._refresh()

        return property(get, set_)

    # ModelOpt's mode flags, kept by the core
    _disabled = _flag("disabled")
    _if_quant = _flag("if_quant")
    _if_calib = _flag("if_calib")
    del _flag

    @property
    def name(self) -> str:
        """Full name in the model, used in messages (set by mtq.quantize)."""
        return self._core.name

    @name.setter
    def name(self, name: str) -> None:
        self._core.name = name

    _mopt_name = name

    @property
    def is_enabled(self) -> bool:
        return not self._core.disabled

    @property
    def is_static(self) -> bool:
        """True when amax comes from calibration rather than from each input."""
        return self._core.is_static

    @property
    def is_quant_enabled(self) -> bool:
        return self._core.if_quant

    @property
    def is_calib_enabled(self) -> bool:
        return self._core.if_calib

    @property
    def mode(self) -> tuple[bool, bool, bool]:
        """(disabled, quantizing, calibrating): the mode flags, to save and restore with
        ``set_mode``."""
        return self._core.disabled, self._core.if_quant, self._core.if_calib

    def set_mode(self, mode: tuple[bool, bool, bool]) -> None:
        """Restores flags saved from ``mode``."""
        self._core.disabled, self._core.if_quant, self._core.if_calib = mode
        self._refresh()

    @property
    def needs_calibration(self) -> bool:
        """Enabled, static and with a calibrator: this quantizer takes part in calibration."""
        return self._core.needs_calibration

    @property
    def maxbound(self) -> float:
        """The magnitude amax maps to: 2^(b-1+unsigned)-1 (an int; 2^(b-1) - 0.5 with
        full_range), or the minifloat maximum. step_size = amax / maxbound."""
        bound = self._core.maxbound
        return int(bound) if isinstance(self._attr.num_bits, int) and bound.is_integer() else bound

    @property
    def step_size(self) -> torch.Tensor | None:
        """amax / maxbound (None before calibration)."""
        return None if self.amax is None else self.amax / self.maxbound

    # -- state ----------------------------------------------------------------------------------
    def _amax_tensor(self, name: str = "_amax") -> torch.Tensor | None:
        """The amax buffer, or parameter when it is learned (algorithm lsq)."""
        t = self._buffers.get(name)
        return self._parameters.get(name) if t is None else t

    @property
    def amax(self) -> torch.Tensor | None:
        """The calibrated amax (with learned scales: the dequantization one, ``amax_post``)."""
        return self._amax_tensor()

    @property
    def amax_pre(self) -> torch.Tensor | None:
        """The amax the input is quantized with: ``_amax_pre`` for untied learned scales."""
        if self._lsq is not None and not self._lsq[2]:
            return self._amax_tensor("_amax_pre")
        return self._amax_tensor()

    @property
    def amax_post(self) -> torch.Tensor | None:
        """The amax the codes are dequantized with (``amax``)."""
        return self._amax_tensor()

    @property
    def learnable_amax(self) -> list[str]:
        """Which amaxes are trained (algorithm lsq): a subset of ["pre", "post"]."""
        if self._lsq is None:
            return []
        return [n for n, on in zip(("pre", "post"), self._lsq[:2]) if on]

    def enable_lsq(self, learnable_amax: str | list[str] = ("post",),
                   tied_amax: bool = False) -> None:
        """Learned scales (LSQ): the calibrated amax becomes a quantization ("pre") and a
        dequantization ("post") amax, ``w_q = Q(w / s_pre) * s_post`` with ``s = amax / B``; the
        ones in `learnable_amax` become nn.Parameters that the C++ ops give the LSQ gradient.
        `tied_amax`: one tensor serves as both (learned when both are named). Options are
        checked by the `lsq` algorithm's parser (mopt._C.parse_algorithm)."""
        amax = self._amax_tensor()
        if amax is None:
            raise ValueError(f"mopt: quantizer '{self.name}': enable_lsq needs a calibrated amax")
        learn = {learnable_amax} if isinstance(learnable_amax, str) else set(learnable_amax)
        value = amax.detach().float().clone()
        self._drop_amax_tensors()
        self._put_amax("_amax", value, "post" in learn)
        if not tied_amax:
            self._put_amax("_amax_pre", value.clone(), "pre" in learn)
        self.__dict__["_lsq"] = ("pre" in learn, "post" in learn, bool(tied_amax))
        self._refresh()

    def _put_amax(self, name: str, value: torch.Tensor, learned: bool) -> None:
        if learned:
            self.register_parameter(name, nn.Parameter(value))
        else:
            self.register_buffer(name, value)

    def _drop_amax_tensors(self) -> None:
        for name in ("_amax", "_amax_pre"):
            self._buffers.pop(name, None)
            self._parameters.pop(name, None)

    @amax.setter
    def amax(self, value: torch.Tensor | float | None) -> None:
        if value is None:
            self.reset_amax()
            return
        self._store_amax(value, validate=True)

    def _store_amax(self, value: torch.Tensor | float, validate: bool) -> None:
        current = self._amax_tensor()
        value = self._core.amax_to_store(torch.as_tensor(value, dtype=torch.float32), current,
                                         validate)
        if current is None:
            self.register_buffer("_amax", value.clone())
            self._refresh()
        else:
            with torch.no_grad():
                current.copy_(value.to(current.device))

    def reset_amax(self) -> None:
        """Removes the calibrated amax (and zero point, and learned scales) and resets the
        calibrator."""
        self._drop_amax_tensors()
        self.__dict__["_lsq"] = None
        self._buffers.pop("_zero_point", None)
        self._core.reset_calibrator()
        self._refresh()

    @property
    def zero_point(self) -> torch.Tensor | None:
        """The zero points of an asymmetric quantizer (integer codes in amax's shape), None
        when unset; calibration sets them with amax."""
        return self._buffers.get("_zero_point")

    @zero_point.setter
    def zero_point(self, value: torch.Tensor | float | None) -> None:
        if value is None:
            self._buffers.pop("_zero_point", None)
            return
        amax = self._buffers.get("_amax")
        value = self._core.zero_point_to_store(torch.as_tensor(value, dtype=torch.float32), amax)
        current = self._buffers.get("_zero_point")
        if current is None or current.shape != value.shape:
            device = amax.device if amax is not None else value.device
            self.register_buffer("_zero_point", value.to(device).clone())
        else:
            with torch.no_grad():
                current.copy_(value.to(current.device))

    @property
    def pre_quant_scale(self) -> torch.Tensor | None:
        return self._buffers.get("_pre_quant_scale")

    @pre_quant_scale.setter
    def pre_quant_scale(self, value: torch.Tensor | None) -> None:
        if value is None:
            self._buffers.pop("_pre_quant_scale", None)
            return
        value = torch.as_tensor(value).detach()
        current = self._buffers.get("_pre_quant_scale")
        if current is None or current.shape != value.shape:
            self.register_buffer("_pre_quant_scale", value.clone())
        else:
            with torch.no_grad():
                current.copy_(value.to(current.device))

    # -- modes ----------------------------------------------------------------------------------
    def enable(self) -> None:
        self._disabled = False

    def disable(self) -> None:
        self._disabled = True

    def enable_quant(self) -> None:
        self._if_quant = True

    def disable_quant(self) -> None:
        self._if_quant = False

    def enable_calib(self) -> None:
        self._core.enable_calib()
        self._refresh()

    def disable_calib(self) -> None:
        self._if_calib = False

    # -- calibration ----------------------------------------------------------------------------
    @property
    def calibrator(self) -> Any:
        """The calibrator (a built-in C++ calibrator or a Python one); assignable."""
        return self._core.calibrator

    @calibrator.setter
    def calibrator(self, calibrator: Any) -> None:
        self._core.calibrator = calibrator
        self._refresh()

    _calibrator = calibrator  # ModelOpt's name

    def collect(self, inputs: torch.Tensor) -> None:
        """Feeds one batch to the calibrator (whatever the calib flag)."""
        self._core.collect(inputs, self.pre_quant_scale)

    def load_calib_amax(self, *args, **kwargs) -> None:
        """Sets amax from the calibrator (arguments go to its compute_amax, e.g.
        ``load_calib_amax("percentile", percentile=99.9)``)."""
        builtin = isinstance(self.calibrator, (_C.MaxCalibrator, _C.HistogramCalibrator,
                                               _C.MseCalibrator))
        if builtin or not (args or kwargs):
            amax = self._core.compute_amax(*args, **kwargs)
        else:
            # a Python calibrator's own compute_amax arguments, which only it understands
            amax = self.calibrator.compute_amax(*args, **kwargs)
        if amax is None:
            return
        current = self._amax_tensor()
        if self._lsq is not None or (current is not None and current.shape != amax.shape):
            # recalibration replaces learned scales by the calibrated amax
            self._drop_amax_tensors()
            self.__dict__["_lsq"] = None
        self._store_amax(amax, validate=False)  # check_amax reports bad calibration results
        zero_point = self._core.compute_zero_point()
        if zero_point is not None:
            self.zero_point = zero_point

    def export_amax(self) -> torch.Tensor | None:
        """amax for export (fp32), None for dynamic quantizers."""
        return None if self.amax is None else self.amax.float()

    # -- forward --------------------------------------------------------------------------------
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        amax = self._amax_tensor()
        pqs = self._buffers.get("_pre_quant_scale")
        zp = self._buffers.get("_zero_point")
        post = None
        if self._lsq is not None and not self._lsq[2]:
            amax, post = self._amax_tensor("_amax_pre"), amax
        if self._forward_cfg is not None:
            return torch.ops.mopt.quantize_tensor(inputs, amax, pqs, self._forward_cfg, zp, post)
        out = self._core.forward(inputs, amax, pqs, zp, post)
        # the core may have warned once and switched to plain quantization
        self.__dict__["_forward_cfg"] = self._core.forward_config(amax is not None)
        return out

    # -- state save / restore -------------------------------------------------------------------
    def get_modelopt_state(self, properties_only: bool = False) -> dict:
        """Properties to rebuild this quantizer, in ModelOpt's layout (``_num_bits``,
        ``_disabled``, ..., and the buffer shapes under ``_pytorch_state_metadata``); tensors
        live in state_dict, so `properties_only` changes nothing."""
        buffers = {k: self._buffers.get(k) for k in ("_pre_quant_scale", "_zero_point")}
        buffers["_amax"] = self._amax_tensor()
        buffers["_amax_pre"] = self._amax_tensor("_amax_pre")
        return json.loads(_C.quantizer_state_json(self._core, buffers, self._lsq))

    def set_from_modelopt_state(self, modelopt_state: dict, properties_only: bool = False) -> None:
        """Restores properties from get_modelopt_state() (mopt's or nvidia-modelopt's); buffers
        get placeholders of the recorded shapes that load_state_dict fills (not with
        `properties_only`)."""
        self.apply_parsed_state(_C.parse_quantizer_state(self.name, json.dumps(modelopt_state)),
                                properties_only)

    def apply_parsed_state(self, p: dict, properties_only: bool = False,
                           attribute_configs: dict | None = None) -> None:
        """Applies a state parsed by ``_C.parse_quantizer_state``: attributes, mode flags and
        placeholder buffers of the recorded shapes and dtypes. `attribute_configs` caches the
        (immutable) attribute configs, with a prototype core, by their JSON across the
        quantizers of one restore."""
        if p["sequential"]:
            raise ValueError(f"mopt: quantizer '{self.name}': the state is a SequentialQuantizer's")
        buffers = {}
        for buf, (dtype_name, shape) in p["buffers"].items():
            dtype = getattr(torch, dtype_name, None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"mopt: quantizer '{self.name}': {buf} has unknown dtype "
                                 f"'{dtype_name}'")
            fill = torch.ones if buf == "_pre_quant_scale" else torch.zeros
            buffers[buf] = fill(shape, dtype=dtype)
        cache = {} if attribute_configs is None else attribute_configs
        entry = cache.get(p["attributes_json"])
        if entry is None:
            attr = QuantizerAttributeConfig(**_from_json(json.loads(p["attributes_json"])))
            # a core that never collects: the quantizers of this state copy what it derived
            entry = (attr, _new_core(attr))
            cache[p["attributes_json"]] = entry
        attr, prototype = entry
        if attr is not self._attr:  # _set_attr without its refresh: done once, below
            self._core.copy_attributes_from(prototype)
            self.__dict__["_attr"] = attr
        self._core.disabled, self._core.if_quant, self._core.if_calib = p["flags"]
        # nvidia-modelopt's block quantizers store amax flattened: load_state_dict reshapes it
        layout = p.get("file_amax_shape")
        self.__dict__["_file_amax_shape"] = None if layout is None else tuple(layout)
        lsq = p.get("lsq")
        if not properties_only:
            self._drop_amax_tensors()
            for buf in ("_pre_quant_scale", "_zero_point"):
                self._buffers.pop(buf, None)
            for buf in ("_amax", "_amax_pre", "_pre_quant_scale", "_zero_point"):
                if buf not in buffers:
                    continue
                learned = lsq is not None and (
                    (buf == "_amax" and lsq["learn_post"]) or
                    (buf == "_amax_pre" and lsq["learn_pre"]))
                if learned:
                    self._parameters[buf] = nn.Parameter(buffers[buf])
                else:  # register_buffer's effect for a name known to be valid
                    self._buffers[buf] = buffers[buf]
                    self._non_persistent_buffers_set.discard(buf)
            self.__dict__["_lsq"] = None if lsq is None else (
                lsq["learn_pre"], lsq["learn_post"], lsq["tied"])
        self._refresh()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        amax = state_dict.get(prefix + "_amax")
        current = self._amax_tensor()
        layout = self.__dict__.get("_file_amax_shape")
        if (isinstance(amax, torch.Tensor) and current is not None and layout is not None
                and tuple(amax.shape) == layout and amax.numel() == current.numel()):
            amax = state_dict[prefix + "_amax"] = amax.reshape(current.shape)
        if isinstance(amax, torch.Tensor):  # checked before anything is copied
            self._core.amax_to_store(amax, None, True)
        zero_point = state_dict.get(prefix + "_zero_point")
        if isinstance(zero_point, torch.Tensor):
            self._core.zero_point_to_store(zero_point,
                                           amax if isinstance(amax, torch.Tensor) else current)
        # A checkpoint may hold buffers this quantizer has not created yet.
        for buf in ("_amax", "_pre_quant_scale", "_zero_point"):
            key = prefix + buf
            if key in state_dict and buf not in self._buffers and buf not in self._parameters:
                self.register_buffer(buf, torch.empty_like(state_dict[key]))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        self._refresh()

    # -- printing -------------------------------------------------------------------------------
    # -- ModelOpt's format predicates, rotation and bias surface ---------------------------------
    @property
    def is_mx_format(self) -> bool:
        b = self.block_sizes
        return b is not None and b.get("type") == "dynamic" and b.get("scale_bits") == (8, 0)

    @property
    def is_fp8(self) -> bool:
        """Per-tensor FP8 E4M3."""
        return self.num_bits == (4, 3) and self.block_sizes is None and self.axis is None

    @property
    def is_static_block_quant(self) -> bool:
        b = self.block_sizes
        return b is not None and b.get("type") != "dynamic" and self.fake_quant

    @property
    def is_nvfp4_dynamic(self) -> bool:
        b = self.block_sizes
        return (b is not None and b.get("type") == "dynamic" and self.num_bits == (2, 1)
                and b.get("scale_bits") == (4, 3))

    @property
    def is_nvfp4_static(self) -> bool:
        b = self.block_sizes
        return (self.is_static_block_quant and self.num_bits == (2, 1)
                and b.get("scale_bits") == (4, 3))

    def is_mxfp(self, bits: int) -> bool:
        """MXFP4 / MXFP6 / MXFP8 (bits 4, 6, 8) with blocks of 32."""
        elem = {4: [(2, 1)], 6: [(3, 2), (2, 3)], 8: [(4, 3), (5, 2)]}.get(bits, [])
        return (self.is_mx_format and self.num_bits in elem
                and self.block_sizes.get(-1) == 32)

    # mopt has no Hadamard rotation of quantizer inputs: nothing is ever rotated.
    rotate_is_enabled = property(lambda self: False)
    rotate_is_fp32 = property(lambda self: False)
    rotate_back_is_enabled = property(lambda self: False)
    rotate_block_size = property(lambda self: None)

    def disable_rotate(self) -> None:
        """Nothing to do: mopt never rotates."""

    @property
    def bias(self):
        """ModelOpt's float affine offset of the attribute config (always None in mopt; integer
        zero points are the ``asymmetric`` attribute)."""
        return self._attr.bias

    def reset_bias(self) -> None:
        """Nothing to do: mopt keeps no calibrated bias."""

    _NO_BIAS = ("affine-bias calibration of quantizers (a calibrated float `bias` for KV "
                "caches); mopt's affine integers use zero points instead ('asymmetric': True)")
    bias_axis = property(refused_method("TensorQuantizer.bias_axis", _NO_BIAS))
    bias_method = property(refused_method("TensorQuantizer.bias_method", _NO_BIAS))
    bias_type = property(refused_method("TensorQuantizer.bias_type", _NO_BIAS))
    bias_value = property(refused_method("TensorQuantizer.bias_value", _NO_BIAS))
    bias_calibrator = property(refused_method("TensorQuantizer.bias_calibrator", _NO_BIAS))
    load_calib_bias = refused_method("TensorQuantizer.load_calib_bias", _NO_BIAS)
    dequantize = refused_method(
        "TensorQuantizer.dequantize", "real quantization (quantized tensors to dequantize); "
        "mopt fake-quantizes")
    disable_pre_quant_scale = refused_method(
        "TensorQuantizer.disable_pre_quant_scale", "the SVDQuant context that turns the "
        "pre_quant_scale off; set `quantizer.pre_quant_scale = None` instead")
    sync_amax_across_distributed_group = refused_method(
        "TensorQuantizer.sync_amax_across_distributed_group", "syncing one quantizer by hand; "
        "mtq.calibrate reduces every amax across processes itself (mopt._C.CalibrationGroup)")
    validate_attr = refused_method(
        "TensorQuantizer.validate_attr", "ModelOpt's attribute validator; mopt checks every "
        "amax after calibration (mtq.calibrate)")

    def _short_amax(self, fmt: str = ".2e") -> str:
        return self._core.short_amax(self.amax)

    def extra_repr(self) -> str:
        text = self._core.extra_repr(self.amax, self.pre_quant_scale)
        if self._lsq is None:
            return text
        return text + _C.lsq_extra_repr(self._lsq, self.amax_pre)


class SequentialQuantizer(nn.Sequential):
    """Several TensorQuantizers applied in order (e.g. INT4 blocks then FP8 for W4A8 weights)."""

    def __init__(self, *quantizers: TensorQuantizer) -> None:
        for q in quantizers:
            if not isinstance(q, TensorQuantizer):
                raise TypeError(f"SequentialQuantizer takes TensorQuantizers, got {type(q).__name__}")
        super().__init__(*quantizers)

    def get_modelopt_state(self) -> dict:
        return {"num_quantizers": len(self), "is_sequential_quantizer": True}

    def disable(self) -> None:
        for q in self:
            q.disable()

    def enable(self) -> None:
        for q in self:
            q.enable()

    @property
    def is_enabled(self) -> bool:
        return any(q.is_enabled for q in self)

    # Delegated to the quantizers as ModelOpt does: properties read the first, methods run on
    # all and return the last result.
    @property
    def amax(self):
        return self[0].amax

    @amax.setter
    def amax(self, value) -> None:
        for q in self:
            q.amax = value

    @property
    def fake_quant(self) -> bool:
        return self[0].fake_quant

    @fake_quant.setter
    def fake_quant(self, value: bool) -> None:
        for q in self:
            q.fake_quant = value

    def reset_amax(self) -> None:
        for q in self:
            q.reset_amax()

    def disable_rotate(self) -> None:
        for q in self:
            q.disable_rotate()

    def load_calib_amax(self, *args, **kwargs):
        return [q.load_calib_amax(*args, **kwargs) for q in self][-1]

    load_calib_bias = TensorQuantizer.load_calib_bias

    def set_from_attribute_config(self, attributes: list | tuple | dict | QuantizerAttributeConfig):
        """A list sets one quantizer per element; a single config sets all of them."""
        if isinstance(attributes, (list, tuple)):
            if len(attributes) != len(self):
                raise ValueError(
                    f"{len(attributes)} attribute configs given for a SequentialQuantizer of "
                    f"{len(self)} quantizers"
                )
            for q, attr in zip(self, attributes):
                q.set_from_attribute_config(attr)
        else:
            for q in self:
                q.set_from_attribute_config(attributes)

    @staticmethod
    @contextlib.contextmanager
    def convert_to_single_quantizer(model: nn.Module, indx: int = 0) -> Iterator[None]:
        """Temporarily replaces every SequentialQuantizer in `model` by its `indx`-th quantizer."""
        replaced = []
        for name, module in list(model.named_modules()):
            if isinstance(module, SequentialQuantizer):
                parent_name, _, attr = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                replaced.append((parent, attr, module))
                setattr(parent, attr, module[indx])
        try:
            yield
        finally:
            for parent, attr, module in replaced:
                setattr(parent, attr, module)
