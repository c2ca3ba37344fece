"""SmoothQuant (algorithm "smoothquant") against a float64 oracle of the published algorithm on
real stories260K activations, end to end with INT8_SMOOTHQUANT_CFG, and its error paths."""

from __future__ import annotations

import copy
import warnings

import mopt.quantization as mtq
import pytest

import torch
from torch import nn

from ._sq_awq_common import (
    eval_perplexity,
    float_activations,
    fresh_model,
    linear_weights,
    oracle_int_quant_blocks,
    oracle_smoothquant,
    quantize,
)


def _sq_config(**options) -> dict:
    config = copy.deepcopy(mtq.INT8_SMOOTHQUANT_CFG)
    if options:
        config["algorithm"] = {"method": "smoothquant", **options}
    return config


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_matches_float64_oracle_on_real_activations(alpha):
    acts = float_activations()
    weights = linear_weights(fresh_model())
    model = quantize(_sq_config(alpha=alpha) if alpha != 1.0 else _sq_config())
    n = 0
    for name, module in model.named_modules():
        if name not in acts:
            continue
        s, w_smooth, input_amax = oracle_smoothquant(acts[name], weights[name], alpha)
        iq, wq = module.input_quantizer, module.weight_quantizer
        torch.testing.assert_close(iq.pre_quant_scale.double(), s, rtol=2e-6, atol=0)
        torch.testing.assert_close(module.weight.double(), w_smooth, rtol=2e-6, atol=1e-9)
        torch.testing.assert_close(iq.amax.double(), input_amax, rtol=2e-6, atol=0)
        # weight amax recalibrated per output channel on the smoothed weight
        torch.testing.assert_close(wq.amax.double().reshape(-1), w_smooth.abs().amax(1),
                                   rtol=2e-6, atol=0)
        n += 1
    assert n == 35  # 5 blocks x (q, k, v, o, gate, up, down)


def test_float_function_is_preserved():
    # With the quantizers off, x * s @ (W / s)^T is the float layer again.
    ref = fresh_model()
    model = quantize(_sq_config(alpha=0.7))
    ids = torch.arange(0, 64).reshape(1, 64) % 512
    mtq.disable_quantizer(model, "*")
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=1e-4, atol=1e-4)


def test_perplexity_close_to_float_and_better_than_int8_max():
    # On the real evaluation text, SmoothQuant W8A8 with the paper's alpha 0.5 stays within 1%
    # of the float perplexity and beats plain max calibration of the same W8A8 config (the full
    # table, alpha 1.0 included, is in docs/benchmarks.md).
    float_ppl = eval_perplexity(fresh_model())
    max_ppl = eval_perplexity(quantize(mtq.INT8_DEFAULT_CFG))
    sq_ppl = eval_perplexity(quantize(_sq_config(alpha=0.5)))
    assert sq_ppl < float_ppl * 1.01, (sq_ppl, float_ppl)
    assert sq_ppl < max_ppl, (sq_ppl, max_ppl)


def test_debug_information():
    model = quantize(_sq_config(alpha=0.5, debug=True))
    name = "model.layers.2.mlp.down_proj"
    module = model.get_submodule(name)
    info = module.smoothquant
    assert info.alpha == 0.5
    s, _, input_amax = oracle_smoothquant(float_activations()[name],
                                          linear_weights(fresh_model())[name], 0.5)
    torch.testing.assert_close(info.scale.double(), s, rtol=2e-6, atol=0)
    torch.testing.assert_close(info.input_amax.double(), input_amax, rtol=2e-6, atol=0)
    assert info.act_amax.shape == info.weight_max.shape == (172,)
    # without debug nothing is kept
    assert not hasattr(quantize(mtq.INT8_SMOOTHQUANT_CFG).get_submodule(name), "smoothquant")


def _oracle_search_losses(x_batches, w, alphas, dynamic, max_tokens=64):
    """float64 alpha search: per alpha, the summed per-batch mean over sampled tokens
    x[::max(1, T // max_tokens)] and outputs of (Q_in(x s) Q_w(W / s)^T - x W^T)^2; Q_w int8 per
    output row, Q_in int8 per tensor with amax max_j(act_j s_j), or per token when dynamic."""
    losses = []
    for alpha in alphas:
        s, w_smooth, input_amax = oracle_smoothquant(x_batches, w, alpha)
        wq = oracle_int_quant_blocks(w_smooth, w.shape[1], bits=8)
        loss = 0.0
        for x in x_batches:
            xs = x[:: max(1, x.shape[0] // max_tokens)]
            amax = None if dynamic else input_amax.expand(xs.shape[0], 1)
            xq = oracle_int_quant_blocks(xs * s, xs.shape[1], bits=8, amax=amax)
            loss += float(((xq @ wq.T - xs @ w.T) ** 2).mean())
        losses.append(loss)
    return torch.tensor(losses, dtype=torch.float64)


@pytest.mark.parametrize("dynamic", [False, True])
def test_alpha_search_matches_float64_oracle_on_real_activations(dynamic):
    # {"alpha": "auto"}: every layer's losses over the grid, its chosen alpha and the smoothing
    # it applies match a float64 search on the real stories260K activations.
    base = mtq.INT8_SMOOTHQUANT_DYNAMIC_CFG if dynamic else mtq.INT8_SMOOTHQUANT_CFG
    config = copy.deepcopy(base)
    config["algorithm"] = {"method": "smoothquant", "alpha": "auto", "alpha_step": 0.25,
                           "debug": True}
    acts = float_activations()
    weights = linear_weights(fresh_model())
    model = quantize(config)
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    chosen = set()
    n = 0
    for name, module in model.named_modules():
        if name not in acts:
            continue
        info = module.smoothquant
        assert info.alphas == alphas
        expected = _oracle_search_losses(acts[name], weights[name], alphas, dynamic)
        # fp32 rounding may flip a code that lands within float error of a half step
        torch.testing.assert_close(info.losses, expected, rtol=2e-3, atol=0)
        best = int(torch.argmin(expected))
        runner_up = torch.sort(expected).values[1]
        if runner_up > expected[best] * 1.004:  # a clear winner must be the one chosen
            assert info.alpha == alphas[best], (name, info.losses, expected)
        s, _, input_amax = oracle_smoothquant(acts[name], weights[name], info.alpha)
        torch.testing.assert_close(module.input_quantizer.pre_quant_scale.double(), s, rtol=2e-6,
                                   atol=0)
        if not dynamic:
            torch.testing.assert_close(module.input_quantizer.amax.double(), input_amax,
                                       rtol=2e-6, atol=0)
        chosen.add(info.alpha)
        n += 1
    assert n == 35
    assert len(chosen) > 1  # the layers do not all want the same alpha


def test_alpha_search_perplexity_close_to_float():
    # Sanity bounds on the real evaluation text (the measured tables, SmolLM2 included, are in
    # docs/benchmarks.md): per-token W8A8 with the search within 0.5% of float, static per-tensor
    # within 2%.
    float_ppl = eval_perplexity(fresh_model())
    for base, bound in ((mtq.INT8_SMOOTHQUANT_DYNAMIC_CFG, 1.005), (mtq.INT8_SMOOTHQUANT_CFG, 1.02)):
        config = copy.deepcopy(base)
        config["algorithm"] = {"method": "smoothquant", "alpha": "auto"}
        assert eval_perplexity(quantize(config)) < float_ppl * bound, base["quant_cfg"]


def test_alpha_search_needs_the_same_data_twice():
    # A layer reached by the statistics pass but not by the search pass is named and gets max
    # calibration instead of a smoothing.
    torch.manual_seed(0)
    model = _TwoBranch()
    x = torch.randn(4, 16)
    calls = []

    def forward_loop(m):
        if not calls:
            m(x)
        calls.append(1)

    config = _sq_config(alpha="auto")
    with pytest.warns(UserWarning, match="'used' was reached by the first call"):
        mtq.quantize(model, config, forward_loop)
    assert len(calls) == 2
    assert model.used.input_quantizer.pre_quant_scale is None
    torch.testing.assert_close(model.used.input_quantizer.amax, x.abs().amax())
    assert model.used.weight_quantizer.amax is not None


def test_chained_smoothing_composes_pre_quant_scales():
    # A second smoothquant sees the inputs already scaled by the first: the scales multiply and
    # the float function stays the same.
    ref = fresh_model()
    config = _sq_config()
    config["algorithm"] = [{"method": "smoothquant", "alpha": 0.5},
                           {"method": "smoothquant", "alpha": 0.5}]
    model = quantize(config)
    ids = torch.arange(7, 71).reshape(1, 64) % 512
    mtq.disable_quantizer(model, "*")
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=1e-4, atol=1e-4)


class _TwoBranch(nn.Module):
    """`skip` is never called by forward."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(16, 8)
        self.skip = nn.Linear(16, 8)

    def forward(self, x):
        return self.used(x)


def test_unreached_layer_is_named_and_left_unsmoothed():
    torch.manual_seed(0)
    model = _TwoBranch()
    x = torch.randn(4, 16)
    with pytest.warns(UserWarning, match="'skip' was not reached"):
        mtq.quantize(model, copy.deepcopy(mtq.INT8_SMOOTHQUANT_CFG), lambda m: m(x))
    assert model.skip.input_quantizer.pre_quant_scale is None
    assert model.skip.weight_quantizer.amax is not None  # weight-only fallback
    assert model.used.input_quantizer.pre_quant_scale is not None


def test_nan_activations_raise_naming_the_layer_and_restore_the_model():
    torch.manual_seed(0)
    model = _TwoBranch()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(4, 16)
    x[1, 3] = float("nan")
    with pytest.raises(RuntimeError, match="'used'.*NaN"):
        mtq.quantize(model, copy.deepcopy(mtq.INT8_SMOOTHQUANT_CFG), lambda m: m(x))
    assert type(model.used) is nn.Linear
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_bad_options_and_missing_forward_loop():
    model = _TwoBranch()
    with pytest.raises(ValueError, match="alpha"):
        mtq.quantize(model, _sq_config(alpha=1.5), lambda m: m(torch.randn(2, 16)))
    with pytest.raises(ValueError, match="forward_loop"):
        mtq.quantize(_TwoBranch(), copy.deepcopy(mtq.INT8_SMOOTHQUANT_CFG))
    with pytest.raises(TypeError, match="alphaa"):
        mtq.quantize(_TwoBranch(), _sq_config(alphaa=0.5), lambda m: m(torch.randn(2, 16)))
    bad_options = [({"alpha": "best"}, "'auto'"),
                   ({"alpha": 0.5, "alpha_step": 0.1}, "alpha='auto'"),
                   ({"alpha": "auto", "alpha_step": 0.0}, "alpha_step"),
                   ({"alpha": "auto", "max_tokens_per_batch": 0}, "max_tokens_per_batch")]
    for options, match in bad_options:
        model = _TwoBranch()
        before = copy.deepcopy(model.state_dict())
        with pytest.raises(ValueError, match=match):
            mtq.quantize(model, _sq_config(**options), lambda m: m(torch.randn(2, 16)))
        assert type(model.used) is nn.Linear
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_static_asymmetric_inputs_are_skipped_with_a_warning():
    config = _sq_config()
    config["quant_cfg"]["*input_quantizer"] = {"num_bits": 8, "asymmetric": True}
    model = _TwoBranch()
    x = torch.randn(4, 16) + 0.5
    with pytest.warns(UserWarning, match="'used' is not smoothed.*zero point"):
        mtq.quantize(model, config, lambda m: m(x))
    assert model.used.input_quantizer.pre_quant_scale is None
    assert model.used.input_quantizer.zero_point is not None  # min/max calibration instead


def test_non_int8_layers_are_skipped_with_a_warning():
    config = copy.deepcopy(mtq.FP8_DEFAULT_CFG)
    config["algorithm"] = "smoothquant"
    model = _TwoBranch()
    x = torch.randn(4, 16)
    with pytest.warns(UserWarning, match="'used' is not smoothed"):
        mtq.quantize(model, config, lambda m: m(x))
    assert model.used.input_quantizer.pre_quant_scale is None
    assert model.used.input_quantizer.amax is not None  # max calibration instead
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(x)
