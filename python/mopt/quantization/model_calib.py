"""``calibrate`` (SPEC §1): the entry point over the algorithm registry.

``algorithm`` is parsed and checked in C++ (``mopt._C.parse_algorithm``: methods, options,
defaults, the same parser the C++ API uses); each step then runs its Python driver from
``mopt.quantization.algorithms``. When ``torch.distributed`` is initialized with more than one
process, calibration runs inside a ``mopt._C.CalibrationGroup`` of the default group: amax,
histograms, MSE losses, SmoothQuant/AWQ statistics and GPTQ Hessians are reduced across the ranks,
so every rank ends with identical quantizers (each rank runs ``forward_loop`` on its own shard).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import torch
from torch import nn

from .. import _C
from .algorithms import algorithm_function, calibration_algorithms, register_calibration_algorithm
from .algorithms.registry import _ALGORITHMS  # noqa: F401  (tests unregister through it)
from .algorithms.collect import (
    ForwardLoop,
    abort_stats_collection,
    enable_stats_collection,
    finish_stats_collection,
    max_calibrate,
    weight_only_calibrate,
)
from .utils import named_quantizers

__all__ = [
    "calibrate",
    "max_calibrate",
    "register_calibration_algorithm",
    "calibration_algorithms",
    "enable_stats_collection",
    "finish_stats_collection",
    "abort_stats_collection",
    "weight_only_calibrate",
    "check_amax",
    "calibration_group",
    "calibration_steps",
]


def check_amax(model: nn.Module) -> None:
    """Raises RuntimeError naming the quantizer and its module for a negative, infinite or NaN
    amax (the calibration data that reached it held NaN or Inf)."""
    bad = []
    for name, q in named_quantizers(model):
        amax = q.amax
        if amax is None or amax.is_meta:
            continue
        if not bool(torch.isfinite(amax).all()) or bool((amax < 0).any()):
            module_name = name.rsplit(".", 1)[0] if "." in name else ""
            module = model.get_submodule(module_name) if module_name else model
            # a quantizer inside a SequentialQuantizer: name the layer that owns it
            while module_name and not hasattr(module, "input_quantizer") and "." in module_name:
                module_name = module_name.rsplit(".", 1)[0]
                module = model.get_submodule(module_name)
            bad.append(
                f"quantizer '{name}' of module '{module_name}' ({type(module).__name__}): "
                f"amax={_C.QuantizerCore.short_amax(q.amax)}"
            )
    if bad:
        raise RuntimeError(
            "mopt: calibration produced invalid amax (NaN, Inf or negative) - the data reaching "
            "these layers holds NaN/Inf:\n  " + "\n  ".join(bad)
        )


def calibration_group() -> contextlib.AbstractContextManager:
    """The group calibration reduces over: torch.distributed's default group when it is
    initialized with more than one process (gloo reduces on the CPU, NCCL on this rank's GPU),
    otherwise nothing."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return contextlib.nullcontext()
    device = "cpu"
    if dist.get_backend() == "nccl":
        device = f"cuda:{torch.cuda.current_device()}"
    return _C.CalibrationGroup(dist.group.WORLD.group_name, dist.get_rank(),
                               dist.get_world_size(), device)


def _algorithm_json(algorithm: Any) -> str:
    try:
        return json.dumps(algorithm)
    except TypeError as e:
        raise TypeError(
            f"algorithm must be a str, dict, list or None of plain values, got {algorithm!r}"
        ) from e


def calibration_steps(algorithm: Any) -> list[tuple[str, dict]]:
    """[(method, options)] of `algorithm`, checked and completed by the C++ parser; methods
    registered from Python keep their options as given."""
    external = [m for m in calibration_algorithms() if m not in _C.calibration_methods()]
    return _C.parse_algorithm(_algorithm_json(algorithm), external)


def calibrate(model: nn.Module, algorithm: Any = "max",
              forward_loop: ForwardLoop | None = None) -> nn.Module:
    """Calibrates a quantized model in eval mode (the training flag is restored).

    `algorithm`: a name, ``{"method": name, **options}``, a list of those (applied in order) or
    None. Without `forward_loop` only the weights are calibrated. Afterwards every amax is
    checked: NaN, Inf or negative values raise RuntimeError naming the quantizer.
    """
    steps = calibration_steps(algorithm)
    searching = [method for method, _ in steps if method != "max"]
    if searching:
        meta = next((n for n, p in model.named_parameters() if p.is_meta), None)
        if meta is not None:
            raise ValueError(
                f"{searching[0]} calibration needs real weights and data, but parameter '{meta}' "
                "is on the meta device; materialize the model first (e.g. model.to_empty("
                "device=...) then load_state_dict)"
            )
    was_training = model.training
    model.eval()
    try:
        with calibration_group():
            for method, options in steps:
                algorithm_function(method)(model, forward_loop, **options)
    finally:
        model.train(was_training)
    check_amax(model)
    return model
