"""Calibration algorithms and their registry (SPEC §1 ``calibrate``).

``max`` lives here; other algorithms register themselves with
``register_calibration_algorithm(name, fn)``, where ``fn(model, forward_loop, **options)``.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from torch import nn

from .nn.modules.tensor_quantizer import TensorQuantizer
from .utils import named_quantizers, quantized_modules

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
]

ForwardLoop = Callable[[nn.Module], Any]

_ALGORITHMS: dict[str, Callable[..., None]] = {}


def register_calibration_algorithm(name: str, fn: Callable[..., None]) -> None:
    """Makes ``algorithm=name`` (or ``{"method": name, **options}``) call ``fn``."""
    _ALGORITHMS[name] = fn


def calibration_algorithms() -> list[str]:
    """Names accepted by ``algorithm``."""
    _load_algorithm_modules()
    return sorted(_ALGORITHMS)


def _load_algorithm_modules() -> None:
    # Algorithm modules register on import; importing here keeps calibrate() the single entry.
    from . import algorithms  # noqa: F401


def _needs_calibration(q: TensorQuantizer) -> bool:
    return q.is_enabled and q.is_static and q._calibrator is not None


def enable_stats_collection(model: nn.Module) -> None:
    """Puts every enabled static quantizer in collect-only mode."""
    for _, q in named_quantizers(model):
        if _needs_calibration(q):
            q.disable_quant()
            q.enable_calib()


def finish_stats_collection(model: nn.Module, method: str | None = None, **kwargs) -> None:
    """Loads amax from each calibrating quantizer (``compute_amax(method, **kwargs)`` for
    histogram calibrators) and switches it back to quantizing."""
    for _, q in named_quantizers(model):
        if not q._if_calib:
            continue
        if q._calibrator is not None:
            if method is None:
                q.load_calib_amax()
            else:
                q.load_calib_amax(method, **kwargs)
        q.disable_calib()
        q.enable_quant()


def abort_stats_collection(model: nn.Module) -> None:
    """Switches calibrating quantizers back to quantizing and drops what they collected (the
    forward loop failed part-way: a partial statistic must not become an amax)."""
    for _, q in named_quantizers(model):
        if not q._if_calib:
            continue
        if q._calibrator is not None:
            q._calibrator.reset()
        q.disable_calib()
        q.enable_quant()


def weight_only_calibrate(model: nn.Module, only_uncalibrated: bool = False) -> None:
    """Calibrates weight quantizers from the weights themselves (no data needed). With
    `only_uncalibrated`, only layers the forward loop never reached, with a warning naming
    each."""
    for name, module in quantized_modules(model):
        wq = getattr(module, "weight_quantizer", None)
        weight = getattr(module, "weight", None)
        if wq is None or weight is None:
            continue
        quantizers = list(wq) if isinstance(wq, nn.Sequential) else [wq]
        pending = [q for q in quantizers if _needs_calibration(q)
                   and (not only_uncalibrated or q.amax is None)]
        if not pending:
            continue
        if only_uncalibrated:
            warnings.warn(
                f"mopt: layer '{name}' ({type(module).__name__}) was not reached by the "
                "forward loop; its weight quantizer is calibrated from the weight alone",
                stacklevel=3,
            )
        with torch.no_grad():
            x = weight
            for q in quantizers:
                if q in pending:
                    q.reset_amax()
                    q.collect(x)
                    q.load_calib_amax()
                x = q(x)


def max_calibrate(model: nn.Module, forward_loop: ForwardLoop | None = None, **kwargs) -> None:
    """Max calibration: running max of |x| per quantizer; weights only without forward_loop."""
    if kwargs:
        raise ValueError(f"unknown option(s) {sorted(kwargs)} for algorithm 'max'")
    if forward_loop is None:
        weight_only_calibrate(model)
        return
    enable_stats_collection(model)
    try:
        with torch.no_grad():
            forward_loop(model)
    except BaseException:
        abort_stats_collection(model)
        raise
    with warnings.catch_warnings():
        # a weight quantizer the loop never reached is reported once, by weight_only_calibrate
        warnings.filterwarnings("ignore", message=r"mopt: quantizer '[^']*weight_quantizer[^']*' "
                                r"collected no data")
        finish_stats_collection(model)
    weight_only_calibrate(model, only_uncalibrated=True)


register_calibration_algorithm("max", max_calibrate)


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
                f"amax={q._short_amax()}"
            )
    if bad:
        raise RuntimeError(
            "mopt: calibration produced invalid amax (NaN, Inf or negative) - the data reaching "
            "these layers holds NaN/Inf:\n  " + "\n  ".join(bad)
        )


def _normalize_algorithm(algorithm: Any) -> list[tuple[str, dict]]:
    if algorithm is None:
        return []
    if isinstance(algorithm, str):
        return [(algorithm, {})]
    if isinstance(algorithm, dict):
        if "method" not in algorithm:
            raise ValueError(f"algorithm dict needs a 'method' key, got {algorithm!r}")
        opts = {k: v for k, v in algorithm.items() if k != "method"}
        return [] if algorithm["method"] is None else [(algorithm["method"], opts)]
    if isinstance(algorithm, (list, tuple)):
        return [step for a in algorithm for step in _normalize_algorithm(a)]
    raise TypeError(f"algorithm must be a str, dict, list or None, got {type(algorithm).__name__}")


def calibrate(model: nn.Module, algorithm: Any = "max",
              forward_loop: ForwardLoop | None = None) -> nn.Module:
    """Calibrates a quantized model in eval mode (the training flag is restored).

    `algorithm`: a name, ``{"method": name, **options}``, a list of those (applied in order) or
    None. Without `forward_loop` only the weights are calibrated. Afterwards every amax is
    checked: NaN, Inf or negative values raise RuntimeError naming the quantizer.
    """
    steps = _normalize_algorithm(algorithm)
    if steps:
        _load_algorithm_modules()
    for method, _ in steps:
        if method not in _ALGORITHMS:
            raise ValueError(
                f"unknown calibration algorithm {method!r}; available: {sorted(_ALGORITHMS)}"
            )
    was_training = model.training
    model.eval()
    try:
        for method, opts in steps:
            _ALGORITHMS[method](model, forward_loop, **opts)
    finally:
        model.train(was_training)
    check_amax(model)
    return model
