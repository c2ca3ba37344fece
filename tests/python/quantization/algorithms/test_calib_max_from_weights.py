"""Max calibration without forward_loop when only weight quantizers need calibration: on the real
stories260K model the amaxes are bitwise those of the forward-loop path (forced with the max
step's ``skip_forward_without_activation_calib: False``), the loop is not called, one line says
so, and anything that needs data (static activations, hooks, other calibrators, other
algorithms) keeps the loop."""

from __future__ import annotations

import copy

import mopt.quantization as mtq
import pytest
import torch
from mopt import _C
from mopt.quantization.algorithms.collect import calibrates_from_weights
from mopt.quantization.model_calib import calibration_steps, max_calibrate
from mopt.quantization.utils import named_quantizers
from torch import nn

from ._sq_awq_common import forward_loop, fresh_model

NOTE = _C.MAX_CALIBRATION_FROM_WEIGHTS_NOTE
FORCE_LOOP = {"method": "max", "skip_forward_without_activation_calib": False}


class CountingLoop:
    """The seeded stories260K calibration loop, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self._loop = forward_loop()

    def __call__(self, model: nn.Module) -> None:
        self.calls += 1
        self._loop(model)


def _amaxes(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.endswith("_amax")}


def _quantize(config: dict, algorithm, model: nn.Module | None = None):
    loop = CountingLoop()
    model = fresh_model() if model is None else model
    mtq.quantize(model, {**copy.deepcopy(config), "algorithm": algorithm}, loop)
    return model, loop.calls


def _w4a8_weights_only() -> dict:
    # W4A8's SequentialQuantizer weights (INT4 blocks, then FP8) with the inputs left in float
    cfg = copy.deepcopy(mtq.W4A8_AWQ_BETA_CFG)
    cfg["quant_cfg"]["*input_quantizer"] = {"enable": False}
    return cfg


WEIGHT_ONLY_CONFIGS = {
    "int8_weight_only": mtq.INT8_WEIGHT_ONLY_CFG,
    "int8_dynamic_w8a8": mtq.INT8_DYNAMIC_CFG,
    "int4_blocks_weight_only": mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG,
    "fp8_dynamic_per_token": mtq.FP8_PER_CHANNEL_PER_TOKEN_CFG,
    "w4a8_sequential_weights": _w4a8_weights_only(),
}


@pytest.mark.parametrize("name", list(WEIGHT_ONLY_CONFIGS))
def test_weight_only_amax_is_bitwise_the_forward_loop_amax(name, capsys):
    config = WEIGHT_ONLY_CONFIGS[name]
    skipped, skipped_calls = _quantize(config, "max")
    skip_out = capsys.readouterr().out
    looped, looped_calls = _quantize(config, FORCE_LOOP)
    loop_out = capsys.readouterr().out
    assert skipped_calls == 0 and looped_calls == 1
    assert skip_out.count(NOTE) == 1 and NOTE not in loop_out
    a, b = _amaxes(skipped), _amaxes(looped)
    assert a.keys() == b.keys() and len(a) > 0
    assert any("weight_quantizer" in k for k in a)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    x = torch.randint(0, 512, (2, 64))
    with torch.no_grad():
        assert torch.equal(skipped(x).logits, looped(x).logits)


def test_the_option_is_parsed_once_in_cpp():
    assert calibration_steps("max") == [("max", {"skip_forward_without_activation_calib": True})]
    assert calibration_steps(FORCE_LOOP) == [
        ("max", {"skip_forward_without_activation_calib": False})]
    with pytest.raises(TypeError, match="must be a bool"):
        calibration_steps({"method": "max", "skip_forward_without_activation_calib": 1})


def test_calibrate_and_max_calibrate_skip_too(capsys):
    model, _ = _quantize(mtq.INT8_WEIGHT_ONLY_CFG, FORCE_LOOP)
    expected = _amaxes(model)
    for _, q in named_quantizers(model):
        q.reset_amax()
    capsys.readouterr()
    loop = CountingLoop()
    mtq.calibrate(model, "max", loop)
    assert loop.calls == 0 and capsys.readouterr().out.count(NOTE) == 1
    for key, value in _amaxes(model).items():
        assert torch.equal(value, expected[key]), key
    # ModelOpt's max_calibrate(model, forward_loop) is mopt's, skip included
    max_calibrate(model, loop)
    assert loop.calls == 0
    max_calibrate(model, loop, skip_forward_without_activation_calib=False)
    assert loop.calls == 1


@pytest.mark.parametrize("config", [mtq.INT8_DEFAULT_CFG, mtq.FP8_DEFAULT_CFG, mtq.FP8_KV_CFG])
def test_static_activation_quantizers_keep_the_loop(config, capsys):
    _, calls = _quantize(config, "max")
    assert calls == 1 and NOTE not in capsys.readouterr().out


def test_other_algorithms_keep_the_loop(capsys):
    for algorithm in ("mse", "percentile", "awq_lite"):
        _, calls = _quantize(mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG, algorithm)
        assert calls >= 1, algorithm
    assert NOTE not in capsys.readouterr().out


def test_a_histogram_weight_calibrator_keeps_the_loop():
    # a histogram counts every batch: one pass over the weight is not N passes
    model = mtq.quantize(fresh_model(), copy.deepcopy(mtq.INT8_WEIGHT_ONLY_CFG))
    assert calibrates_from_weights(model)
    mtq.set_quantizer_attribute(model, "*layers.0.self_attn.q_proj.weight_quantizer",
                                {"calibrator": "histogram"})
    assert not calibrates_from_weights(model)


def _pre_hook_on_decoder_layer(model: nn.Module) -> None:
    # FSDP2 and ZeRO-3 gather a layer's weight in a pre-hook, here on the decoder layer that
    # holds the linear layers: the weight read outside forward may differ
    layer = next(m for n, m in model.named_modules() if n.endswith("layers.0"))
    layer.register_forward_pre_hook(lambda mod, args: None)


def _instance_forward(model: nn.Module) -> None:
    # accelerate wraps a module's forward on the instance
    proj = next(m for n, m in model.named_modules() if n.endswith("q_proj"))
    proj.forward = lambda *args, **kwargs: type(proj).forward(proj, *args, **kwargs)


@pytest.mark.parametrize("change", [_pre_hook_on_decoder_layer, _instance_forward])
def test_a_layer_whose_forward_may_see_another_weight_keeps_the_loop(change):
    model = fresh_model()
    change(model)
    looped, calls = _quantize(mtq.INT8_WEIGHT_ONLY_CFG, "max", model)
    assert calls == 1
    reference, _ = _quantize(mtq.INT8_WEIGHT_ONLY_CFG, FORCE_LOOP)
    a, b = _amaxes(looped), _amaxes(reference)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_layer_with_its_own_forward_keeps_the_loop():
    class Doubled(nn.Linear):
        pass

    class QuantDoubled(mtq.nn.QuantLinear):
        def forward(self, x):  # the weight quantizer sees 2 * weight
            return nn.functional.linear(x, self.weight_quantizer(2 * self.weight), self.bias)

    mtq.register(Doubled, QuantDoubled)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(Doubled(16, 8))
        x = torch.randn(4, 16)
        mtq.quantize(model, mtq.INT8_WEIGHT_ONLY_CFG, lambda m: m(x))
        expected = (2 * model[0].weight).abs().amax(dim=1, keepdim=True)
        assert torch.equal(model[0].weight_quantizer.amax, expected)
    finally:
        mtq.unregister(Doubled)


def test_without_forward_loop_nothing_changes(capsys):
    model = fresh_model()
    mtq.quantize(model, copy.deepcopy(mtq.INT8_WEIGHT_ONLY_CFG))
    assert NOTE not in capsys.readouterr().out
    looped, _ = _quantize(mtq.INT8_WEIGHT_ONLY_CFG, FORCE_LOOP)
    a, b = _amaxes(model), _amaxes(looped)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
