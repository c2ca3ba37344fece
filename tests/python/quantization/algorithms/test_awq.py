"""AWQ lite / clip / full against float64 oracles of the published algorithm on real
stories260K activations, end to end with INT4_AWQ_CFG, W4A8_AWQ_BETA_CFG and the NVFP4 AWQ
configs, plus fallbacks and errors."""

from __future__ import annotations

import copy
import math

import mopt.quantization as mtq
import pytest
from mopt.quantization.nn import SequentialQuantizer

import torch
from torch import nn

from ._sq_awq_common import (
    eval_perplexity,
    float_activations,
    fresh_model,
    linear_weights,
    oracle_awq_clip,
    oracle_awq_lite,
    oracle_awq_scale,
    oracle_int_quant_blocks,
    quantize,
    with_block,
)

ALPHAS = [round(0.1 * k, 10) for k in range(11)]
RATIOS = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0]


def _awq_config(method: str, block: int, **options) -> dict:
    config = with_block(mtq.INT4_AWQ_CFG, block)
    config["algorithm"] = {"method": method, **options}
    return config


def _check_lite_layer(module, x_batches, w, block, info=None):
    """The chosen alpha is the oracle's best (or within float32 noise of it) and the fold is the
    oracle's fold for that alpha. Returns the oracle scale."""
    losses, act, wscale = oracle_awq_lite(x_batches, w, block, ALPHAS)
    pqs = module.input_quantizer.pre_quant_scale.double()
    # which alpha did mopt pick? the one whose oracle scale it applied
    dists = [float(((1 / oracle_awq_scale(act, wscale, a)) - pqs).abs().max()) for a in ALPHAS]
    k = min(range(len(ALPHAS)), key=dists.__getitem__)
    assert dists[k] < 1e-4 * float(pqs.abs().max())
    assert losses[k] <= losses.min() * (1 + 1e-3), (k, losses)
    s = oracle_awq_scale(act, wscale, ALPHAS[k])
    torch.testing.assert_close(pqs, 1 / s, rtol=1e-5, atol=0)
    torch.testing.assert_close(module.weight.double(), w * s, rtol=1e-5, atol=1e-8)
    if info is not None:
        assert info.best_alpha == pytest.approx(ALPHAS[k])
        torch.testing.assert_close(info.losses, losses, rtol=2e-3, atol=0)
        torch.testing.assert_close(info.act_scale.double(), act, rtol=1e-5, atol=0)
        torch.testing.assert_close(info.weight_scale.double(), wscale, rtol=1e-5, atol=1e-7)
    return s


@pytest.mark.parametrize("block", [32, 128])
def test_awq_lite_matches_float64_oracle(block):
    acts = float_activations()
    weights = linear_weights(fresh_model())
    model = quantize(_awq_config("awq_lite", block, debug=True))
    n = 0
    for name, module in model.named_modules():
        if name not in acts:
            continue
        _check_lite_layer(module, acts[name], weights[name], block, module.awq_lite)
        # weight amax: max calibration of the folded weight per (row, block)
        w = module.weight.detach().double()
        pad = (-w.shape[1]) % block
        want = torch.nn.functional.pad(w.abs(), (0, pad)).reshape(w.shape[0], -1, block).amax(-1)
        torch.testing.assert_close(module.weight_quantizer.amax.double().reshape(want.shape),
                                   want, rtol=1e-6, atol=0)
        n += 1
    assert n == 35


def _check_clip_layer(module, x_batches, w, block):
    """Per (row, block) the chosen ratio is the oracle's, or within float32 noise of it."""
    losses = oracle_awq_clip(x_batches, w, block, RATIOS)
    rows, nb = losses.shape[1:]
    pad = (-w.shape[1]) % block
    wmax = torch.nn.functional.pad(w.abs(), (0, pad)).reshape(rows, nb, block).amax(-1)
    amax = module.weight_quantizer.amax.double().reshape(rows, nb)
    ratio = amax / wmax
    idx = torch.stack([(ratio - r).abs() for r in RATIOS]).argmin(0)  # [rows, nb]
    torch.testing.assert_close(ratio, torch.tensor(RATIOS, dtype=torch.float64)[idx], rtol=1e-6,
                               atol=0)
    chosen = losses.gather(0, idx.unsqueeze(0))[0]
    best = losses.min(0).values
    assert bool((chosen <= best * (1 + 1e-3) + 1e-12).all())
    agree = float((chosen == best).double().mean())
    assert agree > 0.95, agree
    return float((idx < len(RATIOS) - 1).double().mean())  # fraction actually clipped


def test_awq_clip_matches_float64_oracle():
    block = 32
    acts = float_activations()
    weights = linear_weights(fresh_model())
    model = quantize(_awq_config("awq_clip", block, debug=True))
    clipped = []
    for name, module in model.named_modules():
        if name not in acts:
            continue
        clipped.append(_check_clip_layer(module, acts[name], weights[name], block))
        assert module.input_quantizer.pre_quant_scale is None
        assert module.awq_clip.losses.shape == (11, module.weight.shape[0],
                                                -(-module.weight.shape[1] // block), 1)
        torch.testing.assert_close(module.weight, weights[name].float())  # weight untouched
    assert len(clipped) == 35 and sum(clipped) / 35 > 0.05  # the search does clip


def test_awq_full_matches_float64_oracle():
    block = 32
    acts = float_activations()
    weights = linear_weights(fresh_model())
    model = quantize(_awq_config("awq_full", block))
    for name, module in model.named_modules():
        if name not in acts:
            continue
        s = _check_lite_layer(module, acts[name], weights[name], block)
        # clip runs on the scaled weight with inputs x / s
        _check_clip_layer(module, [x / s for x in acts[name]], weights[name] * s, block)


def test_w4a8_awq_searches_the_int4_stage_and_calibrates_the_fp8_stage():
    acts = float_activations()
    weights = linear_weights(fresh_model())
    model = quantize(mtq.W4A8_AWQ_BETA_CFG)
    for name, module in model.named_modules():
        if name not in acts:
            continue
        wq, iq = module.weight_quantizer, module.input_quantizer
        assert isinstance(wq, SequentialQuantizer)
        # the search ignores the input quantizer (it is off while searching), so it matches
        # the weight-only INT4 oracle at block 128
        s = _check_lite_layer(module, acts[name], weights[name], 128)
        w = weights[name] * s
        pad = (-w.shape[1]) % 128
        block_max = torch.nn.functional.pad(w.abs(), (0, pad)).reshape(w.shape[0], -1, 128)
        torch.testing.assert_close(wq[0].amax.double().reshape(w.shape[0], -1),
                                   block_max.amax(-1), rtol=1e-6, atol=0)
        # FP8 stage: max |INT4(W s)|
        torch.testing.assert_close(wq[1].amax.double().reshape(()),
                                   oracle_int_quant_blocks(w, 128).abs().max(), rtol=1e-5, atol=0)
        # FP8 input: per-tensor max of the scaled activations
        act_amax = torch.stack([x.abs().amax(0) for x in acts[name]]).amax(0)
        torch.testing.assert_close(iq.amax.double().reshape(()), (act_amax / s).max(), rtol=1e-5,
                                   atol=0)


def test_w4a8_awq_clip_keeps_the_clipped_int4_amax():
    config = copy.deepcopy(mtq.W4A8_AWQ_BETA_CFG)
    config["quant_cfg"]["*weight_quantizer"][0]["block_sizes"] = {-1: 32, "type": "static"}
    config["algorithm"] = "awq_full"
    model = quantize(config)
    module = model.get_submodule("model.layers.1.mlp.up_proj")
    wq = module.weight_quantizer
    w = module.weight.detach()
    wmax = w.abs().reshape(w.shape[0], -1, 32).amax(-1)
    assert bool((wq[0].amax.reshape(wmax.shape) < wmax * 0.999).any())  # clipped somewhere
    with torch.no_grad():
        int4 = wq[0](w)
    torch.testing.assert_close(wq[1].amax.reshape(()), int4.abs().max())


def test_awq_beats_rtn_on_real_text():
    # INT4 with AWQ (lite, and full) has a lower perplexity than INT4 round-to-nearest at the
    # same block size; docs/benchmarks.md has the full table.
    n = 3000
    rtn = eval_perplexity(quantize(with_block(mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG, 32)), n)
    lite = eval_perplexity(quantize(_awq_config("awq_lite", 32)), n)
    full = eval_perplexity(quantize(_awq_config("awq_full", 32)), n)
    assert lite < rtn and full < rtn, (rtn, lite, full)


@pytest.mark.parametrize("name", ["NVFP4_AWQ_LITE_CFG", "NVFP4_AWQ_CLIP_CFG",
                                  "NVFP4_AWQ_FULL_CFG"])
def test_nvfp4_awq_configs(name):
    model = quantize(getattr(mtq, name))
    module = model.get_submodule("model.layers.0.mlp.gate_proj")
    if name != "NVFP4_AWQ_CLIP_CFG":
        assert module.input_quantizer.pre_quant_scale is not None
    assert module.weight_quantizer.amax is not None and module.weight_quantizer.amax.numel() == 1
    assert module.input_quantizer.amax is not None
    ppl = eval_perplexity(model, 2000)
    assert math.isfinite(ppl) and ppl < 2 * eval_perplexity(fresh_model(), 2000)


# -------------------------------------------------------------------------------------------
# fallbacks and errors


class _TwoBranch(nn.Module):
    """`skip` is never called by forward."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(32, 8)
        self.skip = nn.Linear(32, 8)

    def forward(self, x):
        return self.used(x)


def _small_cfg(method: str = "awq_lite", **options) -> dict:
    return _awq_config(method, 16, **options)


@pytest.mark.parametrize("method", ["awq_lite", "awq_clip", "awq_full"])
def test_unreached_layer_falls_back_with_its_name(method):
    torch.manual_seed(0)
    model = _TwoBranch()
    x = torch.randn(4, 32)
    with pytest.warns(UserWarning, match="'skip' was not reached"):
        mtq.quantize(model, _small_cfg(method), lambda m: m(x))
    assert model.skip.input_quantizer.pre_quant_scale is None
    assert model.skip.weight_quantizer.amax is not None
    assert model.used.weight_quantizer.amax is not None


def test_forward_loop_that_runs_once_falls_back():
    torch.manual_seed(0)
    model = _TwoBranch()
    batches = iter([torch.randn(4, 32)])

    def once(m):
        for x in batches:  # exhausted after the first call
            m(x)

    with pytest.warns(UserWarning, match="'used' was reached by the first call"):
        mtq.quantize(model, _small_cfg(), once)
    assert model.used.input_quantizer.pre_quant_scale is None
    assert model.used.weight_quantizer.amax is not None


@pytest.mark.parametrize("method,bad_call", [("awq_lite", 0), ("awq_lite", 1), ("awq_full", 2)])
def test_nan_activations_raise_naming_the_layer_and_restore_weights(method, bad_call):
    torch.manual_seed(0)
    model = _TwoBranch()
    before = copy.deepcopy(model.state_dict())
    calls = []

    def loop(m):
        x = torch.randn(4, 32)
        if len(calls) == bad_call:
            x[0, 5] = float("nan")
        calls.append(1)
        m(x)

    with pytest.raises(RuntimeError, match="'used'"):
        mtq.quantize(model, _small_cfg(method), loop)
    assert type(model.used) is nn.Linear
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_bad_options():
    x = torch.randn(4, 32)
    with pytest.raises(ValueError, match="alpha_step"):
        mtq.quantize(_TwoBranch(), _small_cfg(alpha_step=0.0), lambda m: m(x))
    with pytest.raises(ValueError, match="max_tokens_per_batch"):
        mtq.quantize(_TwoBranch(), _small_cfg("awq_clip", max_tokens_per_batch=0),
                     lambda m: m(x))
    with pytest.raises(ValueError, match="min_clip_ratio"):
        mtq.quantize(_TwoBranch(), _small_cfg("awq_full", min_clip_ratio=1.5), lambda m: m(x))
    with pytest.raises(TypeError, match="alpha_stp"):
        mtq.quantize(_TwoBranch(), _small_cfg(alpha_stp=0.2), lambda m: m(x))
    # blocks that do not run along the input axis
    config = _small_cfg()
    config["quant_cfg"]["*weight_quantizer"]["block_sizes"] = {0: 4}
    with pytest.raises(ValueError, match="'used'.*input axis"):
        mtq.quantize(_TwoBranch(), config, lambda m: m(x))


def test_without_forward_loop_only_weights_are_calibrated():
    model = _TwoBranch()
    with pytest.warns(UserWarning, match="awq_lite needs forward_loop"):
        mtq.quantize(model, _small_cfg())
    assert model.used.weight_quantizer.amax is not None
    assert model.used.input_quantizer.pre_quant_scale is None


def test_float_function_is_preserved_by_the_fold():
    ref = fresh_model()
    model = quantize(_awq_config("awq_lite", 32))
    ids = torch.arange(3, 67).reshape(1, 64) % 512
    mtq.disable_quantizer(model, "*")
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=1e-4, atol=1e-4)


def test_no_searchable_layer_still_calibrates_the_other_quantizers():
    # weights not quantized: nothing for AWQ to search, the inputs still get max calibration
    config = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
    config["quant_cfg"]["*weight_quantizer"] = {"enable": False}
    config["algorithm"] = "awq_full"
    model = _TwoBranch()
    x = torch.randn(4, 32)
    mtq.quantize(model, config, lambda m: m(x))
    torch.testing.assert_close(model.used.input_quantizer.amax.reshape(()), x.abs().max())
