"""``step_percentile`` calibration (diffusion PTQ): on the real MNIST DDPM, every activation
quantizer's amax is the percentile over sampling steps of each step's max (or mean) |input|,
computed here with numpy from hooks; percentile 100 of the per-step max is max calibration."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import mopt.quantization as mtq
from mopt import _C
from mopt.cache_diffusion.models import load_ddpm

STEPS = 6


@pytest.fixture(scope="module")
def pipe():
    return load_ddpm(kind="mnist")


def _per_call_input_amax(pipe, runs):
    """{layer name: [max |input| of each call]} over `runs` sampling runs."""
    seen: dict[str, list[float]] = {}
    handles = [m.register_forward_pre_hook(
        lambda mod, args, n=name: seen.setdefault(n, []).append(float(args[0].abs().max())))
        for name, m in pipe.denoiser.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            for seed in runs:
                pipe(2, seed=seed, num_inference_steps=STEPS)
    finally:
        for h in handles:
            h.remove()
    return seen


def _quantized(pipe, algorithm, runs):
    q = copy.copy(pipe)
    q.denoiser = copy.deepcopy(pipe.denoiser)
    cfg = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
    cfg["algorithm"] = algorithm

    def loop(_):
        with torch.no_grad():
            for seed in runs:
                q(2, seed=seed, num_inference_steps=STEPS)

    mtq.quantize(q.denoiser, cfg, loop)
    return q


@pytest.mark.parametrize("percentile, collect", [(50.0, "max"), (0.0, "mean"), (25.0, "max")])
def test_amax_is_the_percentile_over_steps(pipe, percentile, collect):
    runs = (3, 4)
    calls = _per_call_input_amax(pipe, runs)
    q = _quantized(pipe, {"method": "step_percentile", "num_steps": STEPS,
                          "percentile": percentile, "collect": collect}, runs)
    modules = dict(q.denoiser.named_modules())
    checked = 0
    for name, values in calls.items():
        per_call = np.array(values).reshape(len(runs), STEPS)
        per_step = per_call.max(0) if collect == "max" else per_call.mean(0)
        expected = np.percentile(per_step, percentile)
        amax = modules[name].input_quantizer.amax
        assert amax is not None, name
        np.testing.assert_allclose(float(amax), expected, rtol=1e-6, err_msg=name)
        # weights keep max calibration
        w_amax = modules[name].weight_quantizer.amax
        w = modules[name].weight.detach()
        np.testing.assert_allclose(w_amax.flatten().numpy(),
                                   w.abs().flatten(1).amax(1).numpy(), rtol=1e-6)
        checked += 1
    assert checked >= 5


def test_percentile_100_of_step_max_is_max_calibration(pipe):
    runs = (7,)
    a = _quantized(pipe, {"method": "step_percentile", "num_steps": STEPS, "percentile": 100},
                   runs)
    b = _quantized(pipe, "max", runs)
    compared = 0
    for (na, ma), (_, mb) in zip(a.denoiser.named_modules(), b.denoiser.named_modules()):
        if hasattr(ma, "input_quantizer") and ma.input_quantizer.amax is not None:
            assert torch.equal(ma.input_quantizer.amax, mb.input_quantizer.amax), na
            compared += 1
    assert compared >= 5


def test_bad_options_leave_the_model_unquantized(pipe):
    den = copy.deepcopy(pipe.denoiser)
    cfg = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
    cfg["algorithm"] = {"method": "step_percentile"}
    with pytest.raises(ValueError, match="num_steps"):
        mtq.quantize(den, cfg, lambda m: None)
    assert not any("Quant" in type(m).__name__ for m in den.modules())
    with pytest.raises(ValueError, match="collect"):
        _C.StepAmaxCalibrator(num_steps=3, collect="median")
