"""Bad input: each case raises a clear error, and a failed quantize leaves the model exactly as
it was (same classes, same parameters and buffers, no quantizer left behind)."""

import copy

import pytest
import torch
from torch import nn

import mopt.quantization as mtq
from mopt.quantization import model_calib
from mopt.quantization.nn import SequentialQuantizer, TensorQuantizer
from mopt.quantization.utils import ParameterBackup


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))))


def _snapshot(model):
    return ([(n, type(m)) for n, m in model.named_modules()],
            {k: v.detach().clone() for k, v in model.state_dict().items()},
            model.training)


def _assert_unchanged(model, snap):
    modules, state, training = snap
    assert [(n, type(m)) for n, m in model.named_modules()] == modules
    now = model.state_dict()
    assert list(now) == list(state)
    for k, v in state.items():
        torch.testing.assert_close(now[k], v, rtol=0, atol=0, equal_nan=True, msg=k)
    assert model.training == training
    assert not any(isinstance(m, (TensorQuantizer, SequentialQuantizer)) for m in model.modules())
    assert not any(hasattr(m, "_mopt_original_cls") for m in model.modules())
    model(torch.randn(2, 1, 6, 6))  # still a working float model


def _failing_quantize(config, forward_loop=None, exc=Exception, match=None):
    model = Net()
    model.train()
    snap = _snapshot(model)
    with pytest.raises(exc, match=match) as info:
        mtq.quantize(model, config, forward_loop)
    _assert_unchanged(model, snap)
    return info


def _x(n=4):
    return torch.randn(n, 1, 6, 6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_during_calibration_names_quantizer_and_module(bad):
    x = _x()
    x[1, 0, 2, 3] = bad
    info = _failing_quantize(mtq.INT8_DEFAULT_CFG, lambda m: m(x), RuntimeError,
                             "invalid amax")
    msg = str(info.value)
    assert "quantizer 'conv.input_quantizer' of module 'conv' (QuantConv2d)" in msg
    assert "head.1.input_quantizer" in msg  # the NaN/Inf propagates to the next layer


def test_nan_in_a_later_batch_is_not_hidden_by_the_running_max():
    good, bad = _x(), _x()
    bad[0, 0, 0, 0] = float("nan")
    _failing_quantize(mtq.INT8_DEFAULT_CFG, lambda m: [m(good), m(bad), m(good)], RuntimeError,
                      "conv.input_quantizer")


def test_nan_weight_with_weight_only_calibration():
    model = Net()
    with torch.no_grad():
        model.head[1].weight[2, 7] = float("nan")
    snap = _snapshot(model)
    with pytest.raises(RuntimeError, match=r"'head\.1\.weight_quantizer' of module 'head\.1' "
                                           r"\(QuantLinear\)"):
        mtq.quantize(model, mtq.INT8_WEIGHT_ONLY_CFG)
    _assert_unchanged(model, snap)


def test_unknown_config_keys():
    _failing_quantize({"quant_cfg": {"*weight_quantizer": {"num_bits": 8, "axes": 0}}},
                      exc=ValueError, match="unknown quantizer attribute 'axes'")
    _failing_quantize({"quant_cfg": {}, "algorithm": "max", "extra": 1}, exc=ValueError,
                      match=r"unknown quantize config key\(s\) \['extra'\]")
    _failing_quantize({"quant_cfg": {"*weight_quantizer": {"num_bits": 4,
                                                           "block_sizes": {-1: 16, "typ": 1}}}},
                      exc=ValueError, match="unknown key 'typ' in block_sizes")


def test_axis_with_block_sizes():
    _failing_quantize({"quant_cfg": {"*weight_quantizer": {"num_bits": 4, "axis": 0,
                                                           "block_sizes": {-1: 16}}}},
                      exc=ValueError, match="'axis' and 'block_sizes' cannot both be set")


def test_enabling_patterns_that_match_nothing():
    cfg = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
    cfg["quant_cfg"]["*attn.q_proj*"] = {"num_bits": 8}
    cfg["quant_cfg"]["nn.Conv1d"] = {"*input_quantizer": {"num_bits": 8}}
    info = _failing_quantize(cfg, lambda m: m(_x()), ValueError, "match no quantizer")
    assert "*attn.q_proj*" in str(info.value) and "Conv1d/*input_quantizer" in str(info.value)
    # disabling patterns that match nothing are fine: the predefined configs are full of them
    model = Net()
    mtq.quantize(model, mtq.INT8_DEFAULT_CFG, lambda m: m(_x()))
    assert "*lm_head*" in mtq.INT8_DEFAULT_CFG["quant_cfg"]


def test_amax_of_the_wrong_shape():
    q = TensorQuantizer({"num_bits": 8, "axis": 0}, amax=torch.ones(4, 1))
    with pytest.raises(RuntimeError, match=r"Changing shape when setting amax is not allowed: "
                                           r"\(4, 1\) -> \(5, 1\)"):
        q.amax = torch.ones(5, 1)
    with pytest.raises(ValueError, match=r"amax of shape \[4, 1\] does not fit this quantizer: "
                                         r"for an input .* of shape \[3, 7\] it must be \[3, 1\]"):
        q(torch.randn(3, 7))
    with pytest.raises(ValueError, match="amax"):
        torch.ops.mopt.fake_quant_int(torch.randn(3, 7), torch.ones(2, 7, 1), 8)
    # a checkpoint from a layer of another size
    small, big = nn.Sequential(nn.Linear(4, 3)), nn.Sequential(nn.Linear(4, 5))
    for m in (small, big):
        mtq.quantize(m, mtq.INT8_DEFAULT_CFG, lambda mm: mm(torch.randn(2, 4)))
    with pytest.raises(RuntimeError, match=r"weight_quantizer\._amax"):
        small.load_state_dict(big.state_dict())


def test_unsigned_quantization_of_negative_values():
    cfg = {"quant_cfg": {"*input_quantizer": {"num_bits": 8, "unsigned": True}},
           "algorithm": "max"}
    info = _failing_quantize(cfg, lambda m: m(_x()), ValueError, "negative")
    assert "'conv.input_quantizer'" in str(info.value)  # named
    # after a ReLU the same quantizer is fine, and a negative input at inference is refused
    model = nn.Sequential(nn.ReLU(), nn.Linear(4, 2))
    mtq.quantize(model, cfg, lambda m: m(torch.randn(8, 4)))
    assert model[1].input_quantizer.unsigned
    with pytest.raises(ValueError, match="unsigned quantization met negative input values"):
        model[1](torch.randn(8, 4))
    with pytest.raises(ValueError, match="negative"):
        TensorQuantizer({"num_bits": 8, "unsigned": True}, amax=1.0)(torch.randn(5))


def test_integer_input_tensors():
    info = _failing_quantize(mtq.INT8_DEFAULT_CFG,
                             lambda m: m(torch.randint(0, 5, (2, 1, 6, 6))), TypeError,
                             "conv.input_quantizer")
    assert "torch.int64" in str(info.value)
    with pytest.raises(TypeError, match="floating-point"):
        TensorQuantizer(amax=1.0)(torch.arange(4))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        torch.ops.mopt.fake_quant_int(torch.arange(4), torch.tensor(1.0), 8)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        torch.ops.mopt.amax(torch.arange(4), [])


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failing_forward_loop_rolls_back(exc):
    calls = []

    def loop(model):
        model(_x())
        calls.append(1)
        raise exc("stop")

    _failing_quantize(mtq.INT8_DEFAULT_CFG, loop, exc, "stop")
    assert calls == [1]


def test_failing_algorithm_restores_the_parameters_it_changed():
    def destructive(model, forward_loop, **kw):
        for _, m in model.named_modules():
            if isinstance(m, nn.Linear):
                ParameterBackup.save(m, "weight")
                with torch.no_grad():
                    m.weight.mul_(0.0)
        raise RuntimeError("algorithm failed half-way")

    mtq.register_calibration_algorithm("test_destructive", destructive)
    try:
        _failing_quantize({"quant_cfg": mtq.INT8_DEFAULT_CFG["quant_cfg"],
                           "algorithm": ["max", "test_destructive"]},
                          lambda m: m(_x()), RuntimeError, "half-way")
    finally:
        model_calib._ALGORITHMS.pop("test_destructive")


def test_other_bad_arguments():
    _failing_quantize(mtq.INT8_DEFAULT_CFG, forward_loop=42, exc=TypeError,
                      match="forward_loop must be callable")
    _failing_quantize({"quant_cfg": {}, "algorithm": "nonexistent"}, exc=ValueError,
                      match="unknown calibration algorithm 'nonexistent'")
    with pytest.raises(ValueError, match="wrap it in a container"):
        mtq.quantize(nn.Linear(3, 3), mtq.INT8_DEFAULT_CFG)
    model = nn.Sequential(nn.Linear(2, 2))
    mtq.quantize(model, mtq.INT8_WEIGHT_ONLY_CFG)
    with pytest.raises(TypeError, match="wildcard"):
        mtq.disable_quantizer(model, 3)


class _BrokenQuantGELU(nn.GELU):
    def _setup(self):
        self.input_quantizer = TensorQuantizer()
        raise RuntimeError("setup exploded")


def test_failing_setup_of_a_registered_module_rolls_back():
    mtq.register(nn.GELU, _BrokenQuantGELU)
    try:
        model = nn.Sequential(nn.Linear(4, 4), nn.GELU())
        snap = ([(n, type(m)) for n, m in model.named_modules()],
                {k: v.clone() for k, v in model.state_dict().items()})
        with pytest.raises(RuntimeError, match="setup exploded"):
            mtq.quantize(model, mtq.INT8_DEFAULT_CFG, lambda m: m(torch.randn(2, 4)))
        assert [(n, type(m)) for n, m in model.named_modules()] == snap[0]
        assert not hasattr(model[1], "input_quantizer") and type(model[0]) is nn.Linear
    finally:
        mtq.unregister(nn.GELU)
