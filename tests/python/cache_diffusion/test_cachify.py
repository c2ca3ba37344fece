"""mtc.cachify: ModelOpt's prepare / enable / disable / reset_status / infer, block and step
caching, the C++ policies (schedule, adaptive, Taylor forecast), pipelines and bad input."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import mopt.cache_diffusion as mtc
from mopt import _C


class Block(nn.Module):
    """Counts its real calls; returns a tuple like diffusers' down blocks."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.calls = 0

    def forward(self, x, temb=None):
        self.calls += 1
        h = self.conv(x) + (0 if temb is None else temb)
        return h, (h * 2,)


class ToyUNet(nn.Module):
    """The block layout of a diffusers UNet: down_blocks, mid_block, up_blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.down_blocks = nn.ModuleList([Block(), Block()])
        self.mid_block = Block()
        self.up_blocks = nn.ModuleList([Block(), Block(), Block()])

    def forward(self, x, t):
        temb = t.float().view(-1, 1, 1, 1) / 1000
        for b in self.down_blocks:
            x, _ = b(x, temb)
        x, _ = self.mid_block(x, temb)
        for b in self.up_blocks:
            x, _ = b(x, temb)
        return x


class ToyDiT(nn.Module):
    def __init__(self, n: int = 4) -> None:
        super().__init__()
        self.transformer_blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(n)])

    def forward(self, x, t=None):
        for b in self.transformer_blocks:
            x = b(x)
        return x


class LinearInT(nn.Module):
    """A denoiser whose output is exactly linear in the call index (for forecasting)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        return x * 0 + 3.0 - 0.5 * t.float().view(-1, 1, 1, 1)


class Loop:
    """A minimal pipeline: holds the denoiser and calls it once per step."""

    def __init__(self, denoiser: nn.Module) -> None:
        self.denoiser = denoiser

    def __call__(self, num_inference_steps: int = 10):
        x = torch.ones(2, 4, 6, 6)
        outs = []
        for i in range(num_inference_steps):
            outs.append(self.denoiser(x, torch.full((2,), i)))
        return outs


def _calls(model):
    return [m.calls for m in model.modules() if isinstance(m, Block)]


def test_sdxl_default_caches_all_but_up_blocks_2_on_odd_steps():
    torch.manual_seed(0)
    model = ToyUNet()
    ref_model = copy.deepcopy(model)
    pipe = Loop(model)
    mtc.cachify.prepare(pipe, mtc.SDXL_DEFAULT_CONFIG)
    assert sorted(mtc.cachify.cached_blocks(pipe)) == [
        "down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"]
    outs = pipe(num_inference_steps=6)
    # cached blocks ran on even steps only; up_blocks.2 every step
    assert _calls(model) == [3, 3, 3, 3, 3, 6]
    ref = Loop(ref_model)(num_inference_steps=6)
    for i in (0, 2, 4):  # computed steps: exactly the uncached outputs
        assert torch.equal(outs[i], ref[i])
    assert not torch.equal(outs[1], ref[1])  # a reused step differs (temb changed)
    # the names and state_dict are untouched
    assert list(model.state_dict()) == list(ref_model.state_dict())
    # a new pipeline call starts counting again
    pipe(num_inference_steps=2)
    assert _calls(model)[0] == 4
    assert mtc.cachify.stats(pipe)["mid_block"] == {"calls": 2, "recomputes": 1, "reuses": 1}


def test_reused_outputs_keep_the_block_output_structure():
    block = Block()
    mtc.cachify.prepare(block_holder := nn.Sequential(block), [
        {"wildcard_or_filter_func": "0", "select_cache_step_func": lambda s: s > 0}])
    x = torch.randn(1, 4, 5, 5)
    first = block_holder[0](x)
    second = block_holder[0](x * 3)
    assert block.calls == 1
    assert isinstance(second, tuple) and isinstance(second[1], tuple)
    assert torch.equal(second[0], first[0]) and torch.equal(second[1][0], first[1][0])
    assert second[0] is not first[0]  # a copy, not the cache itself


def test_enable_disable_infer_and_reset():
    model = ToyUNet()
    mtc.cachify.prepare(model, [{"wildcard_or_filter_func": "*_blocks.*",
                                 "select_cache_step_func": lambda s: True}])
    x, t = torch.randn(1, 4, 6, 6), torch.zeros(1)
    with mtc.cachify.infer(model) as m:
        m(x, t)
        m(x, t)
    assert model.down_blocks[0].calls == 1 and model.mid_block.calls == 2
    mtc.cachify.disable(model)
    model(x, t)
    assert model.down_blocks[0].calls == 2
    mtc.cachify.enable(model)
    model(x, t)  # infer() cleared the cache on exit: computed
    model(x, t)  # reused
    assert model.down_blocks[0].calls == 3
    mtc.cachify.reset_status(model)
    model(x, t)
    assert model.down_blocks[0].calls == 4
    mtc.cachify.remove(model)
    model(x, t)
    assert model.down_blocks[0].calls == 5 and not mtc.cachify.cached_blocks(model)


def test_step_level_taylor_forecast_is_exact_on_a_linear_trajectory():
    den = LinearInT()
    pipe = Loop(den)
    ref = Loop(LinearInT())(num_inference_steps=20)
    mtc.cachify.prepare(pipe, [{"level": "step", "policy": {"interval": 5, "order": 1}}])
    outs = pipe(num_inference_steps=20)
    assert den.calls == 4
    for i in range(5, 20):  # two recomputes known: the line is exact
        torch.testing.assert_close(outs[i], ref[i])
    # plain reuse (order 0) repeats the last computed prediction
    mtc.cachify.remove(pipe)
    mtc.cachify.prepare(pipe, [{"level": "step", "policy": {"interval": 5}}])
    outs = pipe(num_inference_steps=20)
    assert torch.equal(outs[7], ref[5])


def test_adaptive_policy_probes_an_earlier_module():
    torch.manual_seed(0)
    model = ToyDiT(3)
    # blocks 1, 2 are cached and recompute when block 0's output has changed by 20% since
    policy = {"decision": "adaptive", "threshold": 0.2}
    mtc.cachify.prepare(model, [{"wildcard_or_filter_func": "transformer_blocks.[12]",
                                 "policy": policy, "probe": "transformer_blocks.0"}])
    x = torch.randn(2, 8)
    for scale in (1.0, 1.01, 1.02, 1.5, 1.51):
        model(x * scale)
    rec = _C.CachePolicy  # noqa: F841 (the policy type the blocks use)
    state = mtc.cachify.cached_blocks(model)["transformer_blocks.1"]
    assert [r for _, r, _, _ in state.policy.history] == [True, False, False, True, False]
    with pytest.raises(ValueError, match="names no submodule"):
        mtc.cachify.prepare(ToyDiT(), [{"wildcard_or_filter_func": "*", "probe": "nope",
                                        "policy": policy}])


def test_pipeline_call_with_other_step_count_than_calibrated_runs_uncached():
    den = LinearInT()
    pipe = Loop(den)
    mtc.cachify.prepare(pipe, [{"level": "step",
                                "policy": {"recompute_steps": [0, 4], "num_steps": 8}}])
    pipe(num_inference_steps=8)
    assert den.calls == 2
    with pytest.warns(UserWarning, match="calibrated for 8"):
        pipe(num_inference_steps=5)
    assert den.calls == 2 + 5
    pipe(num_inference_steps=8)
    assert den.calls == 9


def test_nan_features_are_recomputed_with_a_warning():
    class Flaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x, t):
            self.calls += 1
            return x * float("nan") if self.calls == 1 else x

    den = Flaky()
    mtc.cachify.prepare(den, [{"level": "step", "policy": {"interval": 3}}])
    with pytest.warns(UserWarning, match="NaN or Inf"):
        den(torch.ones(2), torch.zeros(1))
    out = den(torch.ones(2), torch.zeros(1))  # would be reused: recomputed instead
    assert den.calls == 2 and torch.equal(out, torch.ones(2))


def test_bad_configs_leave_the_model_untouched():
    model = ToyUNet()
    before = [type(m).__dict__.get("forward") for m in model.modules()]
    with pytest.raises(ValueError, match="matches no cacheable block"):
        mtc.cachify.prepare(model, [{"wildcard_or_filter_func": "decoder.*",
                                     "select_cache_step_func": lambda s: True}])
    with pytest.raises(ValueError, match="'dit' block layout"):
        mtc.cachify.prepare(model, mtc.PIXART_DEFAULT_CONFIG)
    with pytest.raises(ValueError, match="'unet' block layout"):
        mtc.cachify.prepare(ToyDiT(), mtc.SDXL_DEFAULT_CONFIG)
    with pytest.raises(ValueError, match="unknown key"):
        mtc.cachify.prepare(model, [{"wildcard_or_filter_func": "*", "policy": {"intervall": 2}}])
    with pytest.raises(ValueError, match="unknown key"):
        mtc.cachify.prepare(model, [{"wildcard_or_filter_func": "*", "every": 2}])
    with pytest.raises(ValueError, match="non-empty list"):
        mtc.cachify.prepare(model, [])
    with pytest.raises(TypeError, match="nn.Module denoiser"):
        mtc.cachify.prepare(object(), mtc.SDXL_DEFAULT_CONFIG)
    assert not mtc.cachify.cached_blocks(model)
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert before == [type(m).__dict__.get("forward") for m in model.modules()]
    mtc.cachify.prepare(model, mtc.SDXL_DEFAULT_CONFIG)
    with pytest.raises(ValueError, match="cached already"):
        mtc.cachify.prepare(model, mtc.SDXL_DEFAULT_CONFIG)


def test_generic_denoiser_caches_outermost_matches_and_deepcopies():
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Linear(4, 4))
    mtc.cachify.prepare(model, [{"wildcard_or_filter_func": "*",
                                 "select_cache_step_func": lambda s: s % 2 == 1}])
    assert sorted(mtc.cachify.cached_blocks(model)) == ["0", "1"]  # "0.0" is inside "0"
    twin = copy.deepcopy(model)
    x = torch.randn(3, 4)
    assert torch.equal(model(x), twin(x))
    assert mtc.cachify.stats(twin)["0"]["calls"] == 1


def test_cached_quantized_denoiser():
    import mopt.quantization as mtq
    torch.manual_seed(0)
    model = ToyUNet()
    x, t = torch.randn(2, 4, 6, 6), torch.zeros(2)
    mtq.quantize(model, copy.deepcopy(mtq.INT8_DEFAULT_CFG), lambda m: m(x, t))
    quantized = copy.deepcopy(model)
    mtc.cachify.prepare(model, mtc.SDXL_DEFAULT_CONFIG)
    with mtc.cachify.infer(model):
        out0 = model(x, t)
    assert torch.equal(out0, quantized(x, t))  # step 0 computes: the quantized model's output
    assert any("weight_quantizer" in k for k in model.state_dict())


def test_policy_config_is_checked_and_normalized_in_cpp():
    cfg = _C.cache_policy_config('{"decision": "adaptive", "order": 2}')
    assert '"decision":"adaptive"' in cfg and '"order":2' in cfg
    with pytest.raises(ValueError, match="order"):
        _C.cache_policy_config('{"order": 5}')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _C.CachePolicy("{}")


class SmoothDenoiser(nn.Module):
    def forward(self, x, t):
        s = t.float().view(-1, 1) / 200
        return torch.tanh(x) * torch.cos(3 * s) + 0.1 * s * s


class SmoothPipeline:
    """A 200-step sampler over SmoothDenoiser: samples depend smoothly on every prediction."""

    def __init__(self) -> None:
        self.denoiser = SmoothDenoiser()

    def __call__(self, num_samples: int, seed: int = 0, num_inference_steps: int = 200):
        x = torch.randn(num_samples, 16, generator=torch.Generator().manual_seed(seed))
        for i in range(num_inference_steps):
            x = x - 0.01 * self.denoiser(x, torch.full((num_samples,), i))
        return x


def test_calibrate_finds_a_cheaper_policy_within_budget_and_applies_it():
    pipe = SmoothPipeline()
    sample = lambda p, seed: p(4, seed=seed)  # noqa: E731
    result = mtc.calibrate(pipe, {"psnr": 40.0}, calib_seeds=(0, 1), eval_seeds=(2,),
                           sample_fn=sample, orders=(0, 1))
    assert result.num_steps == 200
    assert result.psnr_calib >= 40.0
    assert result.recomputes < 50 and result.call_ratio > 4
    assert result.psnr_eval is not None
    assert {c["family"] for c in result.candidates} == {"interval", "profile"}
    # applied: the pipeline is cached with the winner and reproduces the measured fidelity
    assert mtc.cachify.cached_blocks(pipe)
    ref = SmoothPipeline()(4, seed=0)
    out = pipe(4, seed=0)
    assert _C.psnr_db(out, ref) >= 40.0
    assert mtc.cachify.stats(pipe)["<denoiser>"]["recomputes"] == result.recomputes
    # a calibrated schedule refuses another number of steps (uncached, with a warning)
    if "num_steps" in result.policy:
        with pytest.warns(UserWarning, match="calibrated for 200"):
            pipe(4, seed=0, num_inference_steps=100)


def test_calibrate_bad_input():
    pipe = SmoothPipeline()
    sample = lambda p, seed: p(2, seed=seed)  # noqa: E731
    with pytest.raises(ValueError, match="also calibration seeds"):
        mtc.calibrate(pipe, 30, calib_seeds=(0, 1), eval_seeds=(1,), sample_fn=sample)
    with pytest.raises(ValueError, match="PSNR in dB"):
        mtc.calibrate(pipe, "high", sample_fn=sample)
    with pytest.raises(ValueError, match="chooses the policy"):
        mtc.calibrate(pipe, 30, config={"level": "step", "policy": {"interval": 2}},
                      sample_fn=sample)
    with pytest.raises(ValueError, match="matches no cacheable block"):
        mtc.calibrate(pipe, 30, config={"wildcard_or_filter_func": "nothing.*"},
                      sample_fn=sample)
    assert not mtc.cachify.cached_blocks(pipe)
