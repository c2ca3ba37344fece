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
