"""MSE calibration (``MseCalibrator`` and ``algorithm="mse"``) against a plain float64 search
written here, on the real weights and seeded real activations of stories260K."""

from __future__ import annotations

import copy

import mopt.quantization as mtq
import pytest
from mopt.quantization.calib import MseCalibrator

import torch

from .. import _ref

transformers = pytest.importorskip("transformers")

from mopt.eval import make_forward_loop
from mopt.models import load_llama2c

from .. import _stories as stories

LAYERS = ["model.layers.0.self_attn.q_proj", "model.layers.3.mlp.down_proj"]


def naive_search(batches, amax, reduce_dims, quant, multipliers, error=None):
    """Best amax * m per channel: the summed error over batches of every multiplier, float64;
    the first minimum (the smaller multiplier) wins."""
    losses = []
    for m in multipliers:
        a = amax * m
        total = 0.0
        for x in batches:
            x = x.float()
            y = quant(x, a)
            e = (x.double() - y.double()) ** 2 if error is None else error(x, y).double()
            total = total + (e.sum(dim=reduce_dims) if reduce_dims else e.sum())
        losses.append(total)
    best = torch.argmin(torch.stack([torch.as_tensor(v) for v in losses]), dim=0)
    return amax * multipliers[best].reshape(amax.shape)


@pytest.fixture(scope="module")
def calib_batches():
    return stories.calib_batches(8, 256)


@pytest.fixture(scope="module")
def activations(calib_batches):
    return stories.layer_inputs(load_llama2c(), LAYERS, calib_batches, batch_size=2)


def test_calibrator_per_channel_weights_with_python_quant_func():
    w = load_llama2c().model.layers[1].mlp.up_proj.weight.detach()
    amax = w.abs().amax(dim=1, keepdim=True)

    def quant(x, a):
        return _ref.fake_quant_int(x, a, 4)

    cal = MseCalibrator(amax, axis=0, num_steps=16, start_multiplier=0.3, stop_multiplier=1.5,
                        quant_func=quant)
    assert cal.compute_amax() is None
    cal.collect(w)
    cal.collect(w * 0.75)
    mults = torch.linspace(0.3, 1.5, 16)
    expected = naive_search([w, w * 0.75], amax, [1], quant, mults)
    assert torch.equal(cal.compute_amax(), expected)
    assert (cal.compute_amax() < amax).any()  # 4 bits: clipping pays off for some rows


def test_calibrator_error_func_per_tensor(activations):
    x = activations[LAYERS[1]]
    amax = torch.stack([b.abs().max() for b in x]).max()

    def quant(v, a):
        return _ref.fake_quant_int(v, a, 8)

    def abs_error(v, vq):
        return (v - vq).abs()

    cal = MseCalibrator(amax, quant_func=quant, error_func=abs_error)
    for b in x:
        cal.collect(b)
    expected = naive_search(x, amax, None, quant, torch.linspace(0.25, 4.0, 39), abs_error)  # step_size 0.1
    assert torch.equal(cal.compute_amax(), expected)
    cal.reset()
    assert cal.compute_amax() is None


def _int8_cfg(algorithm):
    cfg = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
    cfg["algorithm"] = algorithm
    return cfg


def test_mse_algorithm_matches_naive_search(calib_batches, activations):
    model = mtq.quantize(load_llama2c(), _int8_cfg("mse"), make_forward_loop(calib_batches, 2))
    ref = load_llama2c()
    mults = torch.linspace(0.25, 4.0, 10)

    def quant(v, a):
        return _ref.fake_quant_int(v, a, 8)

    for layer in LAYERS:
        module = model.get_submodule(layer)
        w = ref.get_submodule(layer).weight.detach()
        w_amax = w.abs().amax(dim=1, keepdim=True)
        assert torch.equal(module.weight_quantizer.amax,
                           naive_search([w], w_amax, [1], quant, mults))
        x = activations[layer]
        x_amax = torch.stack([b.abs().max() for b in x]).max().reshape(1, 1, 1)
        assert torch.equal(module.input_quantizer.amax,
                           naive_search(x, x_amax, [0, 1, 2], quant, mults))
        assert type(module.input_quantizer._calibrator).__name__ == "MaxCalibrator"


def test_mse_algorithm_options_and_weight_only(calib_batches):
    model = mtq.quantize(load_llama2c(), _int8_cfg(
        {"method": "mse", "step_size": 0.25, "start_multiplier": 0.5, "stop_multiplier": 1.0}))
    ref = load_llama2c()
    q = model.model.layers[2].self_attn.v_proj
    w = ref.model.layers[2].self_attn.v_proj.weight.detach()
    w_amax = w.abs().amax(dim=1, keepdim=True)
    expected = naive_search([w], w_amax, [1], lambda v, a: _ref.fake_quant_int(v, a, 8),
                            torch.linspace(0.5, 1.0, 3))
    assert torch.equal(q.weight_quantizer.amax, expected)
    assert q.input_quantizer.amax is None  # no forward loop: activations stay uncalibrated
    with pytest.raises(ValueError, match="not both"):
        mtq.quantize(load_llama2c(), _int8_cfg({"method": "mse", "num_steps": 5, "step_size": 0.1}))
    with pytest.raises(ValueError, match="num_steps"):
        mtq.quantize(load_llama2c(), _int8_cfg({"method": "mse", "num_steps": 0}))


def test_calibrator_errors():
    with pytest.raises(ValueError, match="initial amax"):
        MseCalibrator(None)
    with pytest.raises(ValueError, match="multipliers"):
        MseCalibrator(torch.tensor(1.0), start_multiplier=2.0, stop_multiplier=1.0)
    with pytest.raises(TypeError, match="callable"):
        MseCalibrator(torch.tensor(1.0), quant_func=3)
    cal = MseCalibrator(torch.tensor(1.0))
    with pytest.raises(RuntimeError, match="Quantization function not set"):
        cal.collect(torch.randn(4))
    bad = MseCalibrator(torch.ones(3, 1), axis=0, quant_func=lambda x, a: x)
    with pytest.raises(ValueError, match="does not match"):
        bad.collect(torch.randn(4, 5))
