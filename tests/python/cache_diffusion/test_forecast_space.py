"""forecast_space "sample": a step-level cache keeps the denoised-sample estimate x0 of an epsilon
prediction and turns it back into eps at every reused step, at that step's noise level. Checked
against a float64 wrapper written here (no mopt code) on the real MNIST DDPM."""

from __future__ import annotations

import math
import types

import pytest
import torch
from torch import nn

import mopt.cache_diffusion as mtc
from mopt.cache_diffusion.models import load_ddpm

STEPS = 12


class _X0Reuse(nn.Module):
    """Recomputes every `interval`-th call; in between reuses x0 of the last recompute."""

    def __init__(self, denoiser, pipe, interval):
        super().__init__()
        self.denoiser, self.pipe, self.interval = denoiser, pipe, interval
        self.k, self.x0 = 0, None

    def forward(self, x, t):
        k, self.k = self.k, self.k + 1
        ab = float(self.pipe.alphas_cumprod[int(self.pipe.timesteps[k])])
        if k % self.interval == 0:
            eps = self.denoiser(x, t)
            self.x0 = (x.double() - math.sqrt(1 - ab) * eps.double()) / math.sqrt(ab)
            return eps
        return ((x.double() - math.sqrt(ab) * self.x0) / math.sqrt(1 - ab)).to(x.dtype)


@pytest.fixture(scope="module")
def pipe():
    return load_ddpm(kind="mnist")


def test_sample_space_reuse_matches_the_formula(pipe):
    den = pipe.denoiser
    pipe.denoiser = _X0Reuse(den, pipe, 3)
    try:
        expected = pipe(2, seed=5, num_inference_steps=STEPS)
    finally:
        pipe.denoiser = den
    mtc.cachify.prepare(pipe, [{"level": "step", "policy": {"interval": 3},
                                "forecast_space": "sample"}])
    try:
        got = pipe(2, seed=5, num_inference_steps=STEPS)
        stats = mtc.cachify.stats(pipe)["<denoiser>"]
    finally:
        mtc.cachify.remove(pipe)
    assert stats == {"calls": STEPS, "recomputes": 4, "reuses": 8}
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # not what reusing eps itself gives
    mtc.cachify.prepare(pipe, [{"level": "step", "policy": {"interval": 3}}])
    try:
        eps_reuse = pipe(2, seed=5, num_inference_steps=STEPS)
    finally:
        mtc.cachify.remove(pipe)
    assert (eps_reuse - expected).abs().max() > 1e-2


def test_recomputing_every_call_in_sample_space_is_uncached(pipe):
    ref = pipe(2, seed=1, num_inference_steps=STEPS)
    mtc.cachify.prepare(pipe, [{"level": "step", "policy": {"interval": 1, "order": 2},
                                "forecast_space": "sample"}])
    try:
        out = pipe(2, seed=1, num_inference_steps=STEPS)
    finally:
        mtc.cachify.remove(pipe)
    assert torch.equal(out, ref)


def test_sample_space_needs_a_pipeline_schedule_and_step_level(pipe):
    entry = {"level": "step", "policy": {"interval": 2}, "forecast_space": "sample"}
    with pytest.raises(ValueError, match="bare denoiser"):
        mtc.cachify.prepare(pipe.denoiser, [entry])
    assert not mtc.cachify.cached_blocks(pipe.denoiser)
    with pytest.raises(ValueError, match="needs level 'step'"):
        mtc.cachify.prepare(pipe, [{"wildcard_or_filter_func": "*", "forecast_space": "sample"}])
    with pytest.raises(ValueError, match="forecast_space must be"):
        mtc.cachify.prepare(pipe, [{**entry, "forecast_space": "x0"}])
    holder = types.SimpleNamespace(denoiser=pipe.denoiser)
    with pytest.raises(ValueError, match="alphas_cumprod and timesteps"):
        mtc.cachify.prepare(holder, [entry])
    scheduler = types.SimpleNamespace(
        alphas_cumprod=pipe.alphas_cumprod, timesteps=pipe.timesteps,
        config=types.SimpleNamespace(prediction_type="v_prediction"))
    v_pred = types.SimpleNamespace(unet=pipe.denoiser, scheduler=scheduler)
    with pytest.raises(ValueError, match="v_prediction"):
        mtc.cachify.prepare(v_pred, [entry])
    assert not mtc.cachify.cached_blocks(pipe)


def test_calibrate_searches_both_spaces_and_applies_the_winner(pipe):
    def sample(p, seed):
        return p(4, seed=seed, num_inference_steps=STEPS)

    res = mtc.calibrate(pipe, 20.0, calib_seeds=(0,), sample_fn=sample, orders=(0,),
                        families=("interval",), apply=False)
    assert {c["space"] for c in res.candidates} == {"output", "sample"}
    assert res.forecast_space in ("output", "sample")
    assert res.config_list[0]["forecast_space"] == res.forecast_space
    only_x0 = mtc.calibrate(pipe, 20.0, calib_seeds=(0,), sample_fn=sample, orders=(0,),
                            families=("interval",), spaces=("sample",), apply=True)
    try:
        assert only_x0.forecast_space == "sample"
        assert next(iter(mtc.cachify.cached_blocks(pipe).values())).space == "sample"
    finally:
        mtc.cachify.remove(pipe)
    with pytest.raises(ValueError, match="needs a level 'step' config"):
        mtc.calibrate(pipe, 20.0, (0,), config={"wildcard_or_filter_func": "*"},
                      sample_fn=sample, spaces=("sample",))
