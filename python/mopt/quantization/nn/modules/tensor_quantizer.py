"""TensorQuantizer and SequentialQuantizer modules (SPEC §1 "Modules").

The module keeps the state (buffers ``_amax`` and ``_pre_quant_scale``, flags, the calibrator)
and the control flow; the arithmetic of the forward is one C++ operator,
``torch.ops.mopt.quantize_tensor``, shared with the C++ API.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import torch
from torch import nn

from .... import _C
from ...config import QuantizerAttributeConfig

__all__ = ["TensorQuantizer", "SequentialQuantizer"]

# State restored by set_from_modelopt_state and reported by get_modelopt_state.
_FLAG_KEYS = ("_disabled", "_if_quant", "_if_calib")


def _make_calibrator(attr: QuantizerAttributeConfig):
    calib = attr.calibrator
    axis = attr.axis
    if calib == "max":
        from ...calib import MaxCalibrator

        return MaxCalibrator(num_bits=attr.num_bits, axis=axis, unsigned=attr.unsigned)
    if calib == "histogram":
        from ...calib import HistogramCalibrator

        return HistogramCalibrator(num_bits=attr.num_bits, axis=axis, unsigned=attr.unsigned)
    if isinstance(calib, (tuple, list)):
        cls, args, kwargs = (list(calib) + [(), {}])[:3]
        return cls(*args, **kwargs)
    if callable(calib):
        return calib()
    raise ValueError(f"unknown calibrator {calib!r}")


class TensorQuantizer(nn.Module):
    """Fake-quantizes a tensor as its attribute config describes; calibrates its amax.

    Forward: multiply by ``pre_quant_scale``; if disabled, return; reshape into static blocks
    (zero padding); if calibrating, feed the calibrator; if quantizing, fake-quantize; undo the
    reshape. A static quantizer that was never calibrated uses its input's dynamic amax (with a
    one-time warning).
    """

    def __init__(
        self,
        quant_attribute_cfg: QuantizerAttributeConfig | dict | None = None,
        if_quant: bool = True,
        if_calib: bool = False,
        amax: torch.Tensor | float | None = None,
    ) -> None:
        super().__init__()
        self._if_quant = if_quant
        self._if_calib = if_calib
        self._disabled = False
        self._calibrator = None
        self._warned_uncalibrated = False
        self._mopt_name = ""  # set by mtq.quantize for messages
        if quant_attribute_cfg is None:
            quant_attribute_cfg = QuantizerAttributeConfig()
        elif isinstance(quant_attribute_cfg, dict):
            quant_attribute_cfg = QuantizerAttributeConfig(**quant_attribute_cfg)
        self._set_attr(quant_attribute_cfg)
        if amax is not None:
            self.amax = amax

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
        old = self.__dict__.get("_attr")
        self._attr = attr
        self._cfg_json = attr.to_json()
        self._disabled = not attr.enable
        self._kind = _C.format_info(self._cfg_json)["family"]
        block = attr.block_sizes or {}
        self._dynamic = attr.type == "dynamic" or block.get("type") == "dynamic"
        # NVFP4 blocks are dynamic but keep a calibrated per-tensor amax for the tensor scale.
        self._needs_amax = (not self._dynamic) or self._kind == "nvfp4"
        calib_fields = ("calibrator", "num_bits", "axis", "unsigned", "block_sizes")
        if (
            self._calibrator is None
            or old is None
            or any(getattr(old, k) != getattr(attr, k) for k in calib_fields)
        ):
            self._calibrator = _make_calibrator(attr)

    @property
    def attribute_config(self) -> QuantizerAttributeConfig:
        """The current attributes."""
        return self._attr

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

    @property
    def is_enabled(self) -> bool:
        return not self._disabled

    @property
    def is_static(self) -> bool:
        """True when amax comes from calibration rather than from each input."""
        return self._needs_amax

    @property
    def maxbound(self) -> float:
        """Largest quantized magnitude: 2^(b-1+unsigned)-1, or the minifloat maximum."""
        nb = self._attr.num_bits
        if isinstance(nb, tuple):
            return _C.minifloat_max_value(nb[0], nb[1])
        return (1 << (nb - 1 + int(self._attr.unsigned))) - 1

    @property
    def step_size(self) -> torch.Tensor | None:
        """amax / maxbound (None before calibration)."""
        return None if self.amax is None else self.amax / self.maxbound

    # -- state ----------------------------------------------------------------------------------
    @property
    def amax(self) -> torch.Tensor | None:
        return self._buffers.get("_amax")

    @amax.setter
    def amax(self, value: torch.Tensor | float | None) -> None:
        if value is None:
            self.reset_amax()
            return
        value = torch.as_tensor(value, dtype=torch.float32).detach()
        current = self._buffers.get("_amax")
        if current is None:
            self.register_buffer("_amax", value.clone())
            return
        if current.shape != value.shape:
            raise RuntimeError(
                f"Changing shape when setting amax is not allowed: {tuple(current.shape)} -> "
                f"{tuple(value.shape)} (call reset_amax() first)"
            )
        with torch.no_grad():
            current.copy_(value.to(current.device))

    def reset_amax(self) -> None:
        """Removes the calibrated amax and resets the calibrator."""
        self._buffers.pop("_amax", None)
        if self._calibrator is not None:
            self._calibrator.reset()

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
        if self._calibrator is None:
            raise ValueError("this quantizer has no calibrator")
        self._if_calib = True

    def disable_calib(self) -> None:
        self._if_calib = False

    # -- calibration ----------------------------------------------------------------------------
    def _calib_view(self, inputs: torch.Tensor) -> torch.Tensor:
        self._check_floating(inputs)
        view = torch.ops.mopt.quantizer_calib_view(inputs, self.pre_quant_scale, self._cfg_json)
        # Checked here so that quantize() fails (and rolls back) instead of the first forward.
        if self._attr.unsigned and bool((view < 0).any()):
            raise ValueError(
                f"mopt: unsigned quantizer '{self._mopt_name or 'TensorQuantizer'}' met negative "
                "values while calibrating; use unsigned=False for this tensor"
            )
        axes = list(_C.quantizer_amax_axes(self._cfg_json, inputs.dim()))
        self._calibrator._axis = tuple(axes) if axes else None
        return view

    def _check_floating(self, inputs: torch.Tensor) -> None:
        if not inputs.is_floating_point():
            raise TypeError(
                f"mopt: quantizer '{self._mopt_name or 'TensorQuantizer'}' got a {inputs.dtype} "
                "tensor; only floating-point tensors (float32, float16, bfloat16) can be quantized"
            )

    def collect(self, inputs: torch.Tensor) -> None:
        """Feeds one batch to the calibrator (whatever the calib flag)."""
        self._calibrator.collect(self._calib_view(inputs))

    def load_calib_amax(self, *args, **kwargs) -> None:
        """Sets amax from the calibrator (arguments go to its compute_amax, e.g.
        ``load_calib_amax("percentile", percentile=99.9)``)."""
        amax = self._calibrator.compute_amax(*args, **kwargs)
        if amax is None:
            warnings.warn(
                f"mopt: quantizer '{self._mopt_name or 'TensorQuantizer'}' collected no data; "
                "its amax is left unset (it quantizes with the dynamic amax of each input)",
                stacklevel=2,
            )
            return
        current = self._buffers.get("_amax")
        if current is not None and current.shape != amax.shape:
            self._buffers.pop("_amax")
        self.amax = amax

    def export_amax(self) -> torch.Tensor | None:
        """amax for export (fp32), None for dynamic quantizers."""
        return None if self.amax is None else self.amax.float()

    # -- forward --------------------------------------------------------------------------------
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        pqs = self.pre_quant_scale
        if self._disabled or not (self._if_quant or self._if_calib):
            return inputs if pqs is None else inputs * pqs.to(inputs.dtype)
        if self._if_calib and self._needs_amax:
            self._calibrator.collect(self._calib_view(inputs))
        if not self._if_quant:
            return inputs if pqs is None else inputs * pqs.to(inputs.dtype)
        self._check_floating(inputs)
        amax = self._buffers.get("_amax")
        if amax is None and self._needs_amax and not self._warned_uncalibrated:
            self._warned_uncalibrated = True
            warnings.warn(
                f"mopt: static quantizer '{self._mopt_name or 'TensorQuantizer'}' has no "
                "calibrated amax; using the dynamic amax of its input",
                stacklevel=2,
            )
        return torch.ops.mopt.quantize_tensor(inputs, amax, pqs, self._cfg_json)

    # -- state save / restore -------------------------------------------------------------------
    def get_modelopt_state(self) -> dict:
        """Properties to rebuild this quantizer (tensors live in state_dict)."""
        attrs = self._attr.model_dump()
        if not isinstance(attrs["calibrator"], str):
            attrs["calibrator"] = "max"  # Python calibrator classes are not serialized
        state = {k: getattr(self, k) for k in _FLAG_KEYS}
        state["attributes"] = attrs
        for buf in ("_amax", "_pre_quant_scale"):
            t = self._buffers.get(buf)
            state[f"{buf}_shape"] = None if t is None else list(t.shape)
        return state

    def set_from_modelopt_state(self, state: dict) -> None:
        """Restores properties from get_modelopt_state(); buffers get placeholders that
        load_state_dict fills."""
        self._set_attr(QuantizerAttributeConfig(**state["attributes"]))
        for k in _FLAG_KEYS:
            setattr(self, k, state[k])
        for buf in ("_amax", "_pre_quant_scale"):
            shape = state.get(f"{buf}_shape")
            if shape is not None:
                self.register_buffer(buf, torch.zeros(shape, dtype=torch.float32))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A checkpoint may hold buffers this quantizer has not created yet.
        for buf in ("_amax", "_pre_quant_scale"):
            key = prefix + buf
            if key in state_dict and buf not in self._buffers:
                self.register_buffer(buf, torch.empty_like(state_dict[key]))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    # -- printing -------------------------------------------------------------------------------
    @staticmethod
    def _short_tensor(t: torch.Tensor, fmt: str = ".2e") -> str:
        if t.numel() == 1:
            return f"{t.item():{fmt}}"
        return f"[{t.min().item():{fmt}}, {t.max().item():{fmt}}]({t.numel()})"

    def _short_amax(self, fmt: str = ".2e") -> str:
        amax = self.amax
        if amax is None:
            return "dynamic"
        if amax.is_meta:
            return "meta"
        return self._short_tensor(amax, fmt)

    def extra_repr(self) -> str:
        if self._disabled:
            s = "disabled"
            if self.pre_quant_scale is not None:
                s += f" pre_quant_scale={self._short_tensor(self.pre_quant_scale)}"
            return s
        a = self._attr
        s = f"{'unsigned ' if a.unsigned else ''}{a.num_bits} bit"
        s += " narrow" if a.narrow_range else ""
        s += " fake" if a.fake_quant else ""
        if a.block_sizes is not None:
            s += f" block_sizes={a.block_sizes},"
        else:
            s += f" axis={a.axis}" if a.axis is not None else " per-tensor"
        s += f" amax={self._short_amax()}"
        if self.pre_quant_scale is not None:
            s += f" pre_quant_scale={self._short_tensor(self.pre_quant_scale)}"
        if self._calibrator is not None:
            s += f" calibrator={type(self._calibrator).__name__}"
        s += " quant" if self._if_quant else ""
        s += " calib" if self._if_calib else ""
        return s


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
