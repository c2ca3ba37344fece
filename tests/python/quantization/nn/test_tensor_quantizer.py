"""mtq.nn.TensorQuantizer, SequentialQuantizer and mtq.calib.MaxCalibrator."""

import warnings

import pytest
import torch

import mopt.quantization as mtq
from mopt.quantization.calib import MaxCalibrator
from mopt.quantization.nn import SequentialQuantizer, TensorQuantizer

from .. import _ref


def _calibrate(q: TensorQuantizer, *batches: torch.Tensor) -> None:
    q.disable_quant()
    q.enable_calib()
    for b in batches:
        assert torch.equal(q(b), b)  # collecting leaves the activations untouched
    q.load_calib_amax()
    q.disable_calib()
    q.enable_quant()


def test_per_tensor_calibrate_then_quantize():
    q = TensorQuantizer()
    a, b = torch.randn(4, 16), torch.randn(4, 16) * 3
    _calibrate(q, a, b)
    expected_amax = torch.maximum(_ref.amax(a), _ref.amax(b))
    assert q.amax.shape == (1, 1)  # keepdims reduction of the input
    torch.testing.assert_close(q.amax, expected_amax, rtol=0, atol=0)
    x = torch.randn(5, 16) * 4
    torch.testing.assert_close(q(x), _ref.fake_quant_int(x, expected_amax, 8), rtol=0, atol=0)


def test_quantizers_of_one_config_calibrate_independently():
    # new quantizers start as copies of one prototype core per config: what one collects, its
    # flags and name must not reach another built from the same config
    cfg = mtq.QuantizerAttributeConfig(num_bits=8, axis=0)
    a, b = TensorQuantizer(cfg), TensorQuantizer(cfg)
    a.name, b.name = "a", "b"
    _calibrate(a, torch.randn(3, 8) * 5)
    x = torch.randn(3, 8)
    _calibrate(b, x)
    torch.testing.assert_close(b.amax, _ref.amax(x, keep_axes=[0]), rtol=0, atol=0)
    assert not torch.equal(a.amax, b.amax)
    a.disable()
    assert b.is_enabled and a.name == "a" and b.name == "b"
    c = TensorQuantizer(cfg)  # built after the others calibrated: starts empty
    assert c.amax is None and c.is_enabled


@pytest.mark.parametrize("axis,keep", [(0, [0]), (-1, [2]), ((0, 2), [0, 2])])
def test_per_channel_axis(axis, keep):
    q = TensorQuantizer({"num_bits": 4, "axis": axis, "narrow_range": True})
    x = torch.randn(3, 5, 7)
    _calibrate(q, x)
    torch.testing.assert_close(q.amax, _ref.amax(x, keep), rtol=0, atol=0)
    y = torch.randn(3, 5, 7)
    torch.testing.assert_close(q(y), _ref.fake_quant_int(y, _ref.amax(x, keep), 4, False, True),
                               rtol=0, atol=0)


def test_static_blocks_amax_per_block_and_zero_padding():
    q = TensorQuantizer({"num_bits": 4, "block_sizes": {-1: 8}})
    x = torch.randn(3, 20)
    _calibrate(q, x)
    assert q.amax.shape == (3, 3, 1)  # 20 columns -> 3 blocks of 8 (4 padded zeros)
    padded = torch.nn.functional.pad(x, (0, 4)).reshape(3, 3, 8)
    torch.testing.assert_close(q.amax, _ref.amax(padded, [0, 1]), rtol=0, atol=0)
    y = torch.randn(3, 20)
    expected = _ref.fake_quant_int_blocks(y, 8, 4, amax_blocks=q.amax)
    torch.testing.assert_close(q(y), expected, rtol=0, atol=0)


def test_dynamic_quantizer_uses_each_input_amax():
    q = TensorQuantizer({"num_bits": 8, "type": "dynamic", "axis": 0})
    assert not q.is_static
    for scale in (1.0, 10.0):
        x = torch.randn(4, 9) * scale
        torch.testing.assert_close(q(x), _ref.fake_quant_int(x, _ref.amax(x, [0]), 8),
                                   rtol=0, atol=0)


def test_uncalibrated_static_quantizer_warns_once_and_uses_dynamic_amax():
    q = TensorQuantizer()
    x = torch.randn(6, 6)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        y = q(x)
        q(x)
    assert len([m for m in w if "no calibrated amax" in str(m.message)]) == 1
    torch.testing.assert_close(y, _ref.fake_quant_int(x, _ref.amax(x), 8), rtol=0, atol=0)


def test_pre_quant_scale_applies_before_quantization_and_when_disabled():
    q = TensorQuantizer(amax=2.0)
    s = torch.rand(8) + 0.5
    q.pre_quant_scale = s
    x = torch.randn(4, 8)
    torch.testing.assert_close(q(x), _ref.fake_quant_int(x * s, 2.0, 8), rtol=0, atol=0)
    q.disable()
    torch.testing.assert_close(q(x), x * s, rtol=0, atol=0)
    q.pre_quant_scale = None
    assert torch.equal(q(x), x)
    assert "_pre_quant_scale" not in q.state_dict()


def test_enable_disable_and_quant_flags():
    q = TensorQuantizer(amax=1.0)
    x = torch.randn(4, 4) * 3
    assert q.is_enabled
    q.disable()
    assert not q.is_enabled and torch.equal(q(x), x)
    q.enable()
    assert not torch.equal(q(x), x)
    q.disable_quant()
    assert torch.equal(q(x), x)
    q.enable_quant()
    torch.testing.assert_close(q(x), _ref.fake_quant_int(x, 1.0, 8), rtol=0, atol=0)


def test_amax_setter_refuses_shape_change_and_reset():
    q = TensorQuantizer({"axis": 0}, amax=torch.ones(4, 1))
    q.amax = torch.full((4, 1), 2.0)  # same shape: copied in place
    assert torch.all(q.amax == 2.0)
    with pytest.raises(RuntimeError, match="shape"):
        q.amax = torch.ones(3, 1)
    q.reset_amax()
    assert q.amax is None and q.export_amax() is None
    q.amax = torch.ones(3, 1)
    assert q.amax.shape == (3, 1)


def test_properties():
    q = TensorQuantizer({"num_bits": 4, "axis": 0, "unsigned": True, "narrow_range": True})
    assert (q.num_bits, q.axis, q.unsigned, q.narrow_range, q.fake_quant) == (4, 0, True, True,
                                                                             True)
    assert q.block_sizes is None and q.maxbound == 15
    assert TensorQuantizer().maxbound == 127
    assert TensorQuantizer({"num_bits": (4, 3)}).maxbound == 448
    assert TensorQuantizer({"num_bits": (5, 2)}).maxbound == 57344
    assert TensorQuantizer({"num_bits": (2, 1)}).maxbound == 6
    q.amax = torch.tensor([[3.0], [1.5]])
    torch.testing.assert_close(q.step_size, torch.tensor([[0.2], [0.1]]))
    assert q.export_amax().dtype == torch.float32
    q.num_bits = 8  # property setters validate and keep the other fields
    assert q.num_bits == 8 and q.axis == 0 and q.maxbound == 255
    with pytest.raises(ValueError, match="num_bits"):
        q.num_bits = 1
    b = TensorQuantizer({"num_bits": 4, "block_sizes": {-1: 16}})
    assert b.block_sizes[-1] == 16 and b.axis is None


def test_set_from_attribute_config_dict_keeps_other_fields():
    q = TensorQuantizer({"num_bits": 4, "axis": 0, "narrow_range": True})
    q.set_from_attribute_config({"num_bits": 6})
    assert (q.num_bits, q.axis, q.narrow_range) == (6, 0, True)
    q.set_from_attribute_config(mtq.QuantizerAttributeConfig(num_bits=6))
    assert (q.num_bits, q.axis, q.narrow_range) == (6, None, False)  # full config: all fields
    q.set_from_attribute_config({"enable": False})
    assert not q.is_enabled
    with pytest.raises(TypeError):
        q.set_from_attribute_config(8)


class _RecordingCalibrator:
    """A user calibrator plugged in with calibrator=(cls, args, kwargs)."""

    def __init__(self, bias, scale=1.0):
        self.bias, self.scale, self.seen = bias, scale, []

    def collect(self, x):
        self.seen.append(x.detach().abs().max())

    def compute_amax(self, factor=1.0, *, offset=0.0):
        return torch.stack(self.seen).max() * self.scale * factor + self.bias + offset

    def reset(self):
        self.seen = []


def test_custom_calibrator_and_load_calib_amax_forwards_arguments():
    q = TensorQuantizer({"calibrator": (_RecordingCalibrator, (0.5,), {"scale": 2.0})})
    assert isinstance(q._calibrator, _RecordingCalibrator)
    x = torch.tensor([[1.0, -3.0]])
    q.collect(x)
    q.load_calib_amax(10.0, offset=1.0)
    assert q.amax.item() == pytest.approx(3.0 * 2.0 * 10.0 + 0.5 + 1.0)


def test_gradient_through_quantizer_is_clipped_ste():
    q = TensorQuantizer(amax=1.0)
    x = (torch.randn(6, 6) * 2).requires_grad_()
    q(x).sum().backward()
    torch.testing.assert_close(x.grad, _ref.ste_grad(torch.ones(6, 6), x, 1.0), rtol=0, atol=0)
    assert q.amax.grad is None and not q.amax.requires_grad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_inputs_keep_their_dtype(dtype):
    q = TensorQuantizer({"num_bits": 8, "axis": 0}, amax=torch.rand(4, 1) + 0.5)
    x = torch.randn(4, 8).to(dtype)
    y = q(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y, _ref.fake_quant_int(x, q.amax, 8), rtol=0, atol=0)


def test_state_dict_and_modelopt_state_round_trip():
    q = TensorQuantizer({"num_bits": 4, "block_sizes": {-1: 8}})
    x = torch.randn(2, 16)
    _calibrate(q, x)
    q.pre_quant_scale = torch.rand(16) + 0.5
    sd = q.state_dict()
    assert set(sd) == {"_amax", "_pre_quant_scale"}
    fresh = TensorQuantizer()
    fresh.set_from_modelopt_state(q.get_modelopt_state())
    fresh.load_state_dict(sd)
    assert fresh.num_bits == 4 and fresh.block_sizes == q.block_sizes
    torch.testing.assert_close(fresh(x), q(x), rtol=0, atol=0)
    # a plain freshly built quantizer takes the buffers from a state dict too
    plain = TensorQuantizer({"num_bits": 4, "block_sizes": {-1: 8}})
    plain.load_state_dict(sd)
    torch.testing.assert_close(plain(x), q(x), rtol=0, atol=0)


def test_repr_format():
    q = TensorQuantizer({"num_bits": 8, "axis": 0, "narrow_range": True})
    assert repr(q) == ("TensorQuantizer(8 bit narrow fake axis=0 amax=dynamic "
                       "calibrator=MaxCalibrator quant)")
    q.amax = torch.tensor([[0.5], [2.0]])
    assert "amax=[5.00e-01, 2.00e+00](2)" in repr(q)
    u = TensorQuantizer({"num_bits": 4, "unsigned": True}, amax=3.0)
    assert repr(u) == "TensorQuantizer(unsigned 4 bit fake per-tensor amax=3.00e+00 " \
                      "calibrator=MaxCalibrator quant)"
    u.disable_quant()
    u.enable_calib()
    assert repr(u).endswith("calibrator=MaxCalibrator calib)")
    u.disable()
    assert repr(u) == "TensorQuantizer(disabled)"
    b = TensorQuantizer({"num_bits": (4, 3), "block_sizes": {-1: 128, -2: 128}})
    assert "(4, 3) bit fake block_sizes={-1: 128, -2: 128, 'type': 'static'}, amax=" in repr(b)


def test_sequential_quantizer_applies_in_order():
    w4 = {"num_bits": 4, "block_sizes": {-1: 8}}
    fp8 = {"num_bits": (4, 3)}
    seq = SequentialQuantizer(TensorQuantizer(w4, amax=None), TensorQuantizer(fp8, amax=2.0))
    x = torch.randn(3, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the first one is uncalibrated on purpose
        y = seq(x)
    expected = _ref.fake_quant_fp(_ref.fake_quant_int_blocks(x, 8, 4), 2.0, 4, 3)
    torch.testing.assert_close(y, expected, rtol=1.2e-7, atol=0)
    assert seq.is_enabled
    seq.disable()
    assert not seq.is_enabled and torch.equal(seq(x), x)
    seq.set_from_attribute_config([{"num_bits": 8, "enable": True}, {"enable": True}])
    assert seq[0].num_bits == 8 and seq[1].num_bits == (4, 3) and seq.is_enabled
    with pytest.raises(ValueError, match="2 quantizers"):
        seq.set_from_attribute_config([{}, {}, {}])
    with pytest.raises(TypeError):
        SequentialQuantizer(torch.nn.Identity())


def test_convert_to_single_quantizer_context():
    model = torch.nn.Sequential(torch.nn.Linear(8, 4))
    mtq.quantize(model, {"quant_cfg": {"*weight_quantizer": [{"num_bits": 4, "axis": 0},
                                                              {"num_bits": 8, "axis": 0}]},
                         "algorithm": None})
    seq = model[0].weight_quantizer
    assert isinstance(seq, SequentialQuantizer) and len(seq) == 2
    with SequentialQuantizer.convert_to_single_quantizer(model, indx=1):
        assert model[0].weight_quantizer is seq[1]
    assert model[0].weight_quantizer is seq


# ---------------------------------------------------------------------------------------------
# MaxCalibrator


def test_max_calibrator_running_max_and_axis():
    cal = MaxCalibrator(axis=1, track_amax=True)
    assert cal.compute_amax() is None
    batches = [torch.randn(4, 3) * s for s in (1.0, 5.0, 0.1)]
    for b in batches:
        cal.collect(b)
    expected = torch.stack([_ref.amax(b, [1]) for b in batches]).amax(0)
    torch.testing.assert_close(cal.compute_amax(), expected, rtol=0, atol=0)
    assert len(cal._amaxs) == 3
    torch.testing.assert_close(cal._amaxs[1], _ref.amax(batches[1], [1]), rtol=0, atol=0)
    cal.reset()
    assert cal.compute_amax() is None


def test_max_calibrator_amax_shape_changed():
    cal = MaxCalibrator(axis=0)
    cal.collect(torch.randn(4, 3))
    with pytest.raises(RuntimeError, match="amax shape changed!"):
        cal.collect(torch.randn(5, 3))


def test_max_calibrator_per_tensor_many_batches_keeps_one_tensor():
    cal = MaxCalibrator()
    m = 0.0
    for i in range(20):
        b = torch.randn(8, 8) * (i + 1)
        m = max(m, b.abs().max().item())
        cal.collect(b)
    assert cal.compute_amax().numel() == 1 and cal.compute_amax().item() == m
    assert cal._amaxs == []  # track_amax off: no per-batch history
