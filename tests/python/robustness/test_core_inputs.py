"""Bad and edge inputs to the quantizer core, its ops and the calibration algorithms (issue 9's
sweep): each gives a clear error or a correct result, and a failed call leaves the model as it
was."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn

import mopt.quantization as mtq
from mopt.quantization.nn import TensorQuantizer


class TwoLinear(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.a = nn.Linear(width, width)
        self.b = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _data(width: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(8, width, generator=g) for _ in range(4)]


def _loop(data):
    def loop(model):
        for x in data:
            model(x)

    return loop


def _model(seed: int = 0) -> TwoLinear:
    torch.manual_seed(seed)
    return TwoLinear()


def _snapshot(model: nn.Module) -> tuple:
    """Everything a failed call must leave unchanged: module classes, tensors, quantizer state."""
    classes = [(n, type(m)) for n, m in model.named_modules()]
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    quantizers = [(n, repr(m), m.mode) for n, m in model.named_modules()
                  if isinstance(m, TensorQuantizer)]
    return classes, tensors, quantizers


def _assert_same(model: nn.Module, snap: tuple) -> None:
    classes, tensors, quantizers = snap
    assert [(n, type(m)) for n, m in model.named_modules()] == classes
    now = model.state_dict()
    assert now.keys() == tensors.keys()
    for k, v in tensors.items():
        assert torch.equal(now[k], v), k
    assert [(n, repr(m), m.mode) for n, m in model.named_modules()
            if isinstance(m, TensorQuantizer)] == quantizers


def _quantized(cfg=None, seed: int = 0) -> TwoLinear:
    model = _model(seed)
    mtq.quantize(model, cfg or mtq.INT8_DEFAULT_CFG, _loop(_data()))
    return model


# -- block sizes and bit widths: no overflow, no unbounded allocation -------------------------


def test_nvfp4_block_near_int64_max_is_one_block_per_row():
    x = torch.randn(4, 8)
    huge = torch.ops.mopt.fake_quant_nvfp4(x, None, 2**63 - 1)
    assert torch.equal(huge, torch.ops.mopt.fake_quant_nvfp4(x, None, 8))


def test_nf4_scale_block_near_int64_max_is_one_group():
    x = torch.randn(4, 64)
    huge = torch.ops.mopt.fake_quant_nf4(x, 16, 2**63 - 1)
    assert torch.equal(huge, torch.ops.mopt.fake_quant_nf4(x, 16, -1))
    assert huge.abs().sum() > 0


@pytest.mark.parametrize("num_bits", [2**32 + 4, 2**31, -1, 0, 2**63 - 1])
def test_num_bits_out_of_range_is_refused(num_bits):
    with pytest.raises(ValueError, match="num_bits"):
        mtq.QuantizerAttributeConfig(num_bits=num_bits)


@pytest.mark.filterwarnings("ignore:mopt. static quantizer")
def test_block_longer_than_the_axis_is_one_block_without_padding():
    w = torch.randn(16, 16)
    q_huge = TensorQuantizer(mtq.QuantizerAttributeConfig(num_bits=4, block_sizes={-1: 10**7}))
    q_row = TensorQuantizer(mtq.QuantizerAttributeConfig(num_bits=4, block_sizes={-1: 16}))
    assert torch.equal(q_huge(w), q_row(w))
    # and through mtq.quantize with calibration (the static amax has the one-block shape)
    model = _model()
    cfg = {"quant_cfg": {"*weight_quantizer": {"num_bits": 4, "block_sizes": {-1: 10**7}},
                         "default": {"enable": False}}, "algorithm": "max"}
    mtq.quantize(model, cfg, _loop(_data()))
    assert model.a.weight_quantizer.amax.shape == (16, 1, 1)
    ref = TensorQuantizer(mtq.QuantizerAttributeConfig(num_bits=4, block_sizes={-1: 16}))
    assert torch.equal(model.a.weight_quantizer(model.a.weight), ref(model.a.weight))


def test_same_block_axis_twice_names_it():
    model = _model()
    snap = _snapshot(model)
    cfg = {"quant_cfg": {"*weight_quantizer": {"num_bits": 4, "block_sizes": {-1: 8, 1: 8}},
                         "default": {"enable": False}}, "algorithm": "max"}
    with pytest.raises(ValueError, match="axis 1 .*twice"):
        mtq.quantize(model, cfg, _loop(_data()))
    _assert_same(model, snap)


@pytest.mark.parametrize("option", [{"method": "awq_lite", "alpha_step": 1e-9},
                                    {"method": "awq_clip", "shrink_step": 1e-12}])
def test_awq_grids_without_practical_end_are_refused(option):
    model = _model()
    snap = _snapshot(model)
    cfg = {**mtq.INT4_AWQ_CFG, "algorithm": option}
    with pytest.raises(ValueError, match="more than"):
        mtq.quantize(model, cfg, _loop(_data()))
    _assert_same(model, snap)


# -- copying a quantized model ----------------------------------------------------------------


@pytest.mark.parametrize("cfg", ["INT8_DEFAULT_CFG", "INT4_AWQ_CFG", "NVFP4_DEFAULT_CFG",
                                 "W4A8_AWQ_BETA_CFG"])
def test_quantized_model_deepcopies_pickles_and_saves_whole(cfg):
    model = _quantized(getattr(mtq, cfg))
    x = _data()[0]
    ref = model(x)
    copies = [copy.deepcopy(model), pickle.loads(pickle.dumps(model))]
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    copies.append(torch.load(buf, weights_only=False))
    for other in copies:
        assert torch.equal(other(x), ref)
        # independent: changing the copy leaves the original alone
        mtq.disable_quantizer(other, "*")
        assert torch.equal(model(x), ref)
    # the calibrator state came along: another batch extends the same running max
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        q, q0 = other.a.input_quantizer, model.a.input_quantizer
        if q0.core.calibrator is not None and hasattr(q0.core.calibrator, "_calib_amax"):
            mine, theirs = q.core.calibrator._calib_amax, q0.core.calibrator._calib_amax
            assert (mine is None and theirs is None) or torch.equal(mine, theirs)


def test_quantizer_holding_histograms_deepcopies_and_pickles_after_reset():
    q = TensorQuantizer(mtq.QuantizerAttributeConfig(calibrator="histogram"))
    q.disable_quant()
    q.enable_calib()
    q(torch.randn(8, 16))
    twin = copy.deepcopy(q)
    assert torch.equal(twin.core.calibrator.histogram(), q.core.calibrator.histogram())
    with pytest.raises(TypeError, match="reset_calibrator"):
        pickle.dumps(q)
    q.core.reset_calibrator()
    assert not pickle.loads(pickle.dumps(q)).core.calibrator._has_data()


def test_attribute_config_copies():
    attr = mtq.QuantizerAttributeConfig(num_bits=4, block_sizes={-1: 32})
    assert copy.deepcopy(attr) == attr
    assert copy.copy(attr) == attr
    assert pickle.loads(pickle.dumps(attr)) == attr


# -- tied weights -----------------------------------------------------------------------------


@pytest.mark.parametrize("cfg,algorithm", [("INT8_SMOOTHQUANT_CFG", None), ("INT4_AWQ_CFG", None),
                                           ("INT4_BLOCKWISE_WEIGHT_ONLY_CFG", None),
                                           ("INT4_BLOCKWISE_WEIGHT_ONLY_CFG", "gptq")])
def test_tied_weight_is_changed_by_no_layer(cfg, algorithm):
    config = copy.deepcopy(getattr(mtq, cfg))
    if algorithm:
        config["algorithm"] = algorithm
    model = _model()
    model.b.weight = model.a.weight
    x = _data()[0]
    ref = model(x)
    weight = model.a.weight.detach().clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mtq.quantize(model, config, _loop(_data()))
    assert model.b.weight is model.a.weight
    assert torch.equal(model.a.weight, weight)
    searched = algorithm == "gptq" or cfg != "INT4_BLOCKWISE_WEIGHT_ONLY_CFG"  # max: no change
    assert searched == any("tied" in str(w.message) and "'a'" in str(w.message)
                           and "'b'" in str(w.message) for w in caught)
    mtq.disable_quantizer(model, "*")
    assert torch.equal(model(x), ref)  # no scale folded into the shared weight


# -- empty calibration batches ----------------------------------------------------------------


def test_amax_of_an_empty_tensor():
    assert torch.ops.mopt.amax(torch.empty(0, 16), [0]).shape == (0, 1)
    assert torch.equal(torch.ops.mopt.amax(torch.empty(0, 16), [1]), torch.zeros(1, 16))
    assert torch.equal(torch.ops.mopt.amax(torch.empty(0, 16), []), torch.zeros(1, 1))


def test_empty_calibration_batch_is_no_data():
    data = _data()
    only_empty = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mtq.quantize(only_empty, mtq.INT8_DEFAULT_CFG, lambda m: m(torch.empty(0, 16)))
    assert only_empty.a.input_quantizer.amax is None  # not a silent 0

    mixed, plain = _model(), _model()
    mtq.quantize(mixed, mtq.INT8_DEFAULT_CFG, lambda m: [m(torch.empty(0, 16)), *map(m, data)])
    mtq.quantize(plain, mtq.INT8_DEFAULT_CFG, _loop(data))
    assert torch.equal(mixed.a.input_quantizer.amax, plain.a.input_quantizer.amax)


# -- user-set amax and pre_quant_scale --------------------------------------------------------


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_bad_amax_from_the_setter_is_refused(value):
    model = _quantized()
    q = model.a.input_quantizer
    before = q.amax.clone()
    with pytest.raises(ValueError, match="a.input_quantizer.*finite and non-negative"):
        q.amax = torch.full_like(before, value)
    assert torch.equal(q.amax, before)


def test_bad_amax_from_load_state_dict_is_refused():
    model = _quantized()
    snap = _snapshot(model)
    sd = model.state_dict()
    sd["a.input_quantizer._amax"] = torch.full_like(sd["a.input_quantizer._amax"], -3.0)
    with pytest.raises(ValueError, match="finite and non-negative"):
        model.load_state_dict(sd)
    _assert_same(model, snap)


def test_bad_amax_from_postprocess_changes_nothing():
    model = _quantized()
    snap = _snapshot(model)
    calls = []

    def fn(amax):
        calls.append(1)
        return amax if len(calls) < 3 else -amax  # fails on the third quantizer

    with pytest.raises(ValueError, match="finite and non-negative"):
        mtq.postprocess_amax(model, "*", fn)
    _assert_same(model, snap)


def test_amax_along_the_wrong_axis_is_refused():
    model = _quantized()
    q = model.a.weight_quantizer  # per output channel: amax (16, 1)
    assert q.amax.shape == (16, 1)
    q.reset_amax()
    q.amax = torch.ones(16)  # would broadcast along the input axis
    with pytest.raises(ValueError, match=r"amax of shape \[16\] does not fit"):
        model(_data()[0])


def test_pre_quant_scale_of_the_wrong_shape_is_named():
    model = _quantized()
    model.a.input_quantizer.pre_quant_scale = torch.ones(7)
    with pytest.raises(ValueError, match=r"pre_quant_scale of shape \[7\] does not fit"):
        model(_data()[0])


# -- partial configuration changes roll back --------------------------------------------------


def test_set_quantizer_attribute_failing_midway_changes_nothing():
    model = _quantized()
    snap = _snapshot(model)
    seen = []

    def filter_func(name):  # a user's filter that breaks on the third quantizer
        seen.append(name)
        if len(seen) == 3:
            raise ValueError(f"cannot decide on {name}")
        return True

    with pytest.raises(ValueError, match="cannot decide"):
        mtq.set_quantizer_attribute(model, filter_func, {"num_bits": 4})
    _assert_same(model, snap)


def test_set_quantizer_by_cfg_failing_on_a_later_entry_changes_nothing():
    model = _quantized()
    snap = _snapshot(model)
    with pytest.raises(ValueError):
        mtq.set_quantizer_by_cfg(model, {"*input_quantizer": {"num_bits": 4},
                                         "*weight_quantizer": {"num_bits": (9, 9)}})
    _assert_same(model, snap)


def test_set_quantizer_attribute_replacing_with_sequential_rolls_back():
    model = _quantized()
    original = model.a.weight_quantizer
    snap = _snapshot(model)
    with pytest.raises(ValueError):
        mtq.set_quantizer_attribute(model, "*weight_quantizer",
                                    [{"num_bits": 4}, {"num_bits": (9, 9)}])
    assert model.a.weight_quantizer is original
    _assert_same(model, snap)


# -- unclear errors made clear ----------------------------------------------------------------


def test_config_given_as_a_string_is_named():
    model = _model()
    snap = _snapshot(model)
    with pytest.raises(TypeError, match=r"must be a dict.*mtq\.INT8_DEFAULT_CFG"):
        mtq.quantize(model, "INT8_DEFAULT_CFG", _loop(_data()))
    _assert_same(model, snap)


@pytest.mark.parametrize("cfg", ["INT8_SMOOTHQUANT_CFG", "INT4_AWQ_CFG"])
def test_weight_searching_algorithms_on_the_meta_device_are_refused(cfg):
    with torch.device("meta"):
        model = TwoLinear()
    with pytest.raises(ValueError, match="meta device"):
        mtq.quantize(model, getattr(mtq, cfg),
                     lambda m: m(torch.randn(8, 16, device="meta")))
    assert type(model.a) is nn.Linear


@pytest.mark.parametrize("cfg,option", [("INT8_SMOOTHQUANT_CFG", "alpah"),
                                        ("INT4_AWQ_CFG", "alpah")])
def test_unknown_algorithm_options_are_named(cfg, option):
    config = copy.deepcopy(getattr(mtq, cfg))
    method = config["algorithm"] if isinstance(config["algorithm"], str) else \
        config["algorithm"]["method"]
    config["algorithm"] = {"method": method, option: 0.5}
    model = _model()
    snap = _snapshot(model)
    with pytest.raises(TypeError, match=f"unknown option.*{option}.*accepted"):
        mtq.quantize(model, config, _loop(_data()))
    _assert_same(model, snap)


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_mxfp4_block_with_inf_or_nan_is_nan_not_six(bad):
    w = torch.randn(2, 64)
    w[0, 3] = bad
    y = torch.ops.mopt.fake_quant_mx(w, 2, 1, 32)
    assert torch.isnan(y[0, :32]).all()  # the block holding it
    assert torch.equal(y[0, 32:], torch.ops.mopt.fake_quant_mx(w[0:1, 32:], 2, 1, 32)[0])
    assert not torch.isnan(y[1]).any()


def test_attributes_nested_beyond_the_recursion_limit_are_a_value_error():
    nested: list = []
    for _ in range(5000):
        nested = [nested]
    with pytest.raises(ValueError, match="nested too deeply"):
        mtq.QuantizerAttributeConfig(block_sizes=nested)
