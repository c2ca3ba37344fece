"""mtq.quantize / calibrate and the model-level API (SPEC §1)."""

import copy
import io
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mopt.quantization as mtq
from mopt.quantization.nn import QuantModuleRegistry, SequentialQuantizer, TensorQuantizer

from . import _ref


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 3 * 3, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.pool(self.conv(x))).flatten(1))


def _data(n=8):
    return torch.randn(n, 1, 8, 8)


def _loop(batches):
    def forward_loop(model):
        for b in batches:
            model(b)
    return forward_loop


def _quantizer_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, TensorQuantizer)]


# ---------------------------------------------------------------------------------------------
# quantize / calibrate


def test_quantize_in_place_prints_count_and_calibrates(capsys):
    model = ConvNet()
    batches = [_data(), _data() * 2]
    out = mtq.quantize(model, mtq.INT8_DEFAULT_CFG, _loop(batches))
    assert out is model
    assert "Inserted 8 quantizers" in capsys.readouterr().out
    assert type(model.conv).__name__ == "QuantConv2d" and type(model.fc).__name__ == "QuantLinear"
    assert type(model.pool).__name__ == "QuantMaxPool2d"
    expected_in = torch.maximum(_ref.amax(batches[0]), _ref.amax(batches[1]))
    torch.testing.assert_close(model.conv.input_quantizer.amax, expected_in, rtol=0, atol=0)
    torch.testing.assert_close(model.conv.weight_quantizer.amax,
                               _ref.amax(model.conv.weight, [0]), rtol=0, atol=0)
    assert model.conv.weight_quantizer.amax.shape == (4, 1, 1, 1)
    assert mtq.is_quantized(model) and not mtq.is_quantized(ConvNet())


def test_calibrate_runs_in_eval_mode_and_restores_training_flag():
    model = ConvNet()
    mtq.quantize(model, mtq.INT8_DEFAULT_CFG, _loop([_data()]))
    seen = []
    model.train()
    mtq.calibrate(model, "max", lambda m: seen.append(m.training) or m(_data()))
    assert seen == [False] and model.training
    model.eval()
    mtq.calibrate(model, "max", lambda m: seen.append(m.training) or m(_data()))
    assert seen == [False, False] and not model.training


def test_calibrate_algorithm_forms():
    model = ConvNet()
    mtq.quantize(model, mtq.INT8_DEFAULT_CFG, None)
    assert model.conv.input_quantizer.amax is None  # no data: weights only
    assert model.conv.weight_quantizer.amax is not None
    x = _data()
    model.conv.input_quantizer.reset_amax()
    mtq.calibrate(model, None, _loop([x]))
    assert model.conv.input_quantizer.amax is None  # None: no calibration at all
    for algorithm in ("max", {"method": "max"}, ["max", {"method": "max"}]):
        model.conv.input_quantizer.reset_amax()
        mtq.calibrate(model, algorithm, _loop([x]))
        torch.testing.assert_close(model.conv.input_quantizer.amax, _ref.amax(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown calibration algorithm 'maximum'"):
        mtq.calibrate(model, "maximum", _loop([x]))
    # an unknown option is a TypeError naming it, as for a Python function's unknown keyword
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['alpha'\] for algorithm 'max'"):
        mtq.calibrate(model, {"method": "max", "alpha": 0.5}, _loop([x]))
    with pytest.raises(ValueError, match="'method'"):
        mtq.calibrate(model, {"alpha": 0.5}, _loop([x]))
    with pytest.raises(TypeError, match="algorithm must be"):
        mtq.calibrate(model, 3, _loop([x]))
    assert "max" in mtq.calibration_algorithms()


def test_zero_argument_forward_loop_is_deprecated_but_works():
    model = ConvNet()
    x = _data()
    with pytest.warns(DeprecationWarning, match="forward_loop"):
        mtq.quantize(model, mtq.INT8_DEFAULT_CFG, lambda: model(x))
    torch.testing.assert_close(model.conv.input_quantizer.amax, _ref.amax(x), rtol=0, atol=0)


def test_weight_only_calibration_without_forward_loop():
    model = ConvNet()
    mtq.quantize(model, mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG)
    wq = model.fc.weight_quantizer
    assert not model.fc.input_quantizer.is_enabled
    w = model.fc.weight.detach()  # 36 columns: one block of 128 holding 92 padded zeros
    torch.testing.assert_close(wq.amax, _ref.amax(w, [0]).unsqueeze(1), rtol=0, atol=0)
    x = _data()
    with torch.no_grad():
        h = torch.relu(model.pool(model.conv(x))).flatten(1)
        expected = F.linear(h, _ref.fake_quant_int_blocks(w, 128, 4), model.fc.bias)
        torch.testing.assert_close(model.fc(h), expected, rtol=1e-6, atol=1e-6)


def test_layer_not_reached_by_forward_loop_is_calibrated_from_its_weight():
    model = ConvNet()
    model.unused = nn.Linear(3, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mtq.quantize(model, mtq.INT8_DEFAULT_CFG, _loop([_data()]))
    messages = [str(w.message) for w in caught]
    assert any(re.search("layer 'unused' .* not reached", m) for m in messages)
    assert any("'unused.input_quantizer' collected no data" in m for m in messages)
    assert not any("weight_quantizer' collected no data" in m for m in messages)  # reported once
    torch.testing.assert_close(model.unused.weight_quantizer.amax,
                               _ref.amax(model.unused.weight, [0]), rtol=0, atol=0)
    assert model.unused.input_quantizer.amax is None


def test_fold_weight_bakes_the_quantized_weight():
    model = ConvNet()
    mtq.quantize(model, mtq.INT8_DEFAULT_CFG, _loop([_data()]))
    x = _data()
    with torch.no_grad():
        before = model(x)
    w = model.fc.weight.detach().clone()
    mtq.fold_weight(model)
    torch.testing.assert_close(model.fc.weight.detach(), _ref.fake_quant_int(w, _ref.amax(w, [0])),
                               rtol=0, atol=0)
    assert not model.fc.weight_quantizer.is_enabled and model.fc.input_quantizer.is_enabled
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_postprocess_amax():
    model = ConvNet()
    mtq.quantize(model, mtq.INT8_DEFAULT_CFG, _loop([_data()]))
    w_amax = model.fc.weight_quantizer.amax.clone()
    in_amax = model.fc.input_quantizer.amax.clone()
    mtq.postprocess_amax(model, "*input_quantizer", lambda a: a * 0.5)
    torch.testing.assert_close(model.fc.input_quantizer.amax, in_amax * 0.5)
    torch.testing.assert_close(model.fc.weight_quantizer.amax, w_amax)
    # a function may also change the shape (here: per channel -> per tensor)
    mtq.postprocess_amax(model, lambda n: n == "fc.weight_quantizer", lambda a: a.amax())
    assert model.fc.weight_quantizer.amax.shape == () and model.fc.weight_quantizer.amax.item() == \
        w_amax.max().item()


# ---------------------------------------------------------------------------------------------
# register / unregister (the reference documentation's QuantLayerNorm)


class QuantLayerNorm(nn.LayerNorm):
    def __init__(self, normalized_shape):
        super().__init__(normalized_shape)
        self._setup()

    def _setup(self):
        self.input_quantizer = TensorQuantizer()
        self.weight_quantizer = TensorQuantizer()

    def forward(self, input):
        input = self.input_quantizer(input)
        weight = self.weight_quantizer(self.weight)
        return F.layer_norm(input, self.normalized_shape, weight, self.bias, self.eps)


def test_register_custom_module_and_unregister():
    model = nn.Sequential(nn.Linear(6, 6), nn.LayerNorm(6))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
    float_model = copy.deepcopy(model)
    calib = torch.randn(5, 6)
    mtq.register(original_cls=nn.LayerNorm, quantized_cls=QuantLayerNorm)
    try:
        assert nn.LayerNorm in QuantModuleRegistry
        cfg = {"quant_cfg": {"*": {"num_bits": 8}}, "algorithm": "max"}
        mtq.quantize(model, cfg, lambda m: m(calib))
        assert isinstance(model[1], QuantLayerNorm) and isinstance(model[1], nn.LayerNorm)
        x = torch.randn(4, 6)
        with torch.no_grad():
            h = model[0](x)  # the quantized Linear is checked elsewhere: start from its output
            h_calib = float_model[0](calib)  # while calibrating, nothing is quantized
            ln = model[1]
            expected = F.layer_norm(_ref.fake_quant_int(h, _ref.amax(h_calib)), (6,),
                                    _ref.fake_quant_int(ln.weight, _ref.amax(ln.weight)), ln.bias,
                                    ln.eps)
            torch.testing.assert_close(ln(h), expected, rtol=1e-6, atol=1e-6)
            assert not torch.allclose(float_model[1](h), expected, rtol=1e-4, atol=1e-4)
    finally:
        mtq.unregister(nn.LayerNorm)
    assert nn.LayerNorm not in QuantModuleRegistry
    other = nn.Sequential(nn.Linear(6, 6), nn.LayerNorm(6))
    mtq.quantize(other, {"quant_cfg": {"*": {"num_bits": 8}}, "algorithm": None})
    assert type(other[1]) is nn.LayerNorm
    with pytest.raises(KeyError):
        mtq.unregister(nn.LayerNorm)
    with pytest.raises(TypeError, match="_setup"):
        mtq.register(nn.GELU, nn.Module)


# ---------------------------------------------------------------------------------------------
# state_dict round trip, SequentialQuantizer, summary


def test_state_dict_round_trip_into_a_freshly_quantized_model():
    cfg = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
    cfg["quant_cfg"]["*weight_quantizer"] = [{"num_bits": 4, "block_sizes": {-1: 16}},
                                             {"num_bits": 8, "axis": None}]
    model = ConvNet()
    mtq.quantize(model, cfg, _loop([_data(), _data()]))
    model.fc.input_quantizer.pre_quant_scale = torch.rand(36) + 0.5
    sd = model.state_dict()
    assert {"conv.input_quantizer._amax", "fc.weight_quantizer.0._amax",
            "fc.weight_quantizer.1._amax", "fc.input_quantizer._pre_quant_scale"} <= set(sd)
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)

    fresh = ConvNet()  # other random weights: everything must come from the checkpoint
    mtq.quantize(fresh, {**cfg, "algorithm": None})
    fresh.load_state_dict(loaded)
    x = _data()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_sequential_quantizer_calibration_and_single_view():
    model = ConvNet()
    mtq.quantize(model, {
        "quant_cfg": {"*weight_quantizer": [{"num_bits": 4, "block_sizes": {-1: 8}},
                                            {"num_bits": (4, 3)}],
                      "*input_quantizer": {"num_bits": (4, 3)}},
        "algorithm": "max"}, _loop([_data()]))
    seq = model.fc.weight_quantizer
    assert isinstance(seq, SequentialQuantizer)
    w = model.fc.weight.detach()
    # each stage is calibrated on what reaches it: the int4 output feeds the fp8 quantizer
    w4 = _ref.fake_quant_int_blocks(w, 8, 4)
    torch.testing.assert_close(seq[1].amax, _ref.amax(w4), rtol=0, atol=0)
    with SequentialQuantizer.convert_to_single_quantizer(model):
        assert model.fc.weight_quantizer is seq[0]
        assert "fc.weight_quantizer" in _quantizer_names(model)
    assert model.fc.weight_quantizer is seq


def test_print_quant_summary_format(capsys):
    model = ConvNet()
    mtq.quantize(model, mtq.INT8_DEFAULT_CFG, _loop([_data()]))
    capsys.readouterr()
    mtq.print_quant_summary(model)
    lines = capsys.readouterr().out.splitlines()
    names = _quantizer_names(model)
    assert len(lines) == len(names) + 1
    assert lines[-1] == f"{len(names)} TensorQuantizers found in model"
    for line, name in zip(lines, names):
        assert line == f"{name:80} {model.get_submodule(name)!r}"
    conv_w = lines[names.index("conv.weight_quantizer")]
    assert re.fullmatch(r"conv\.weight_quantizer +TensorQuantizer\(8 bit fake axis=0 "
                        r"amax=\[\d\.\d\de[+-]\d\d, \d\.\d\de[+-]\d\d\]\(4\) "
                        r"calibrator=MaxCalibrator quant\)", conv_w)
    assert lines[names.index("fc.output_quantizer")].endswith("TensorQuantizer(disabled)")


# ---------------------------------------------------------------------------------------------
# torch.compile


def _compile_model():
    model = ConvNet()
    cfg = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
    cfg["quant_cfg"]["*fc.weight_quantizer"] = {"num_bits": 4, "block_sizes": {-1: 16}}
    cfg["quant_cfg"]["*conv.input_quantizer"] = {"num_bits": (4, 3)}
    mtq.quantize(model, cfg, _loop([_data()]))
    return model.eval()


def test_torch_compile_fullgraph_matches_eager_with_two_batch_sizes():
    model = _compile_model()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        for n in (8, 3, 5):  # the second size recompiles with a symbolic batch dimension
            x = _data(n)
            torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)


def test_torch_compile_inductor_matches_eager():
    model = _compile_model()
    compiled = torch.compile(model)
    with torch.no_grad():
        for n in (8, 3):
            x = _data(n)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# QAT on real data


def test_qat_steps_through_quant_linear_reduce_the_loss():
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()  # 1797 real 8x8 handwritten digits
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def train(opt, steps, start):
        for step in range(start, start + steps):
            idx = torch.arange(step * 64, step * 64 + 64) % len(x)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()

    def full_loss():
        with torch.no_grad():
            return F.cross_entropy(model(x), y).item()

    # the usual flow: a (briefly) trained float model, quantized, then fine-tuned quantized
    train(torch.optim.Adam(model.parameters(), lr=0.02), 40, 0)
    cfg = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
    cfg["quant_cfg"]["*weight_quantizer"] = {"num_bits": 4, "axis": 0}
    mtq.quantize(model, cfg, lambda m: m(x[:256]))
    amax = {n: q.amax.clone() for n, q in model.named_modules() if isinstance(q, TensorQuantizer)
            and q.amax is not None}
    w0 = model[0].weight.detach().clone()
    before = full_loss()
    model.train()
    train(torch.optim.Adam(model.parameters(), lr=0.003), 20, 40)
    after = full_loss()
    assert after < 0.8 * before, (before, after)
    assert not torch.equal(model[0].weight.detach(), w0)
    for n, a in amax.items():  # amax gets no gradient: training leaves it alone
        assert torch.equal(model.get_submodule(n).amax, a), n
