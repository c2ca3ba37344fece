"""Every quantized module against its functional definition: the float op applied to inputs and
weights fake-quantized with the naive SPEC formulas (amax from max calibration)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mopt.quantization as mtq
from mopt.quantization.nn import QuantModuleRegistry, TensorQuantizer

from .. import _ref

INT8_IN = {"num_bits": 8, "axis": None}


def _quantize(module: nn.Module, calib: torch.Tensor, weight_cfg=None, input_cfg=INT8_IN,
              output_cfg=None) -> nn.Module:
    model = nn.Sequential(copy.deepcopy(module))
    quant_cfg = {"default": {"enable": False}, "*input_quantizer": input_cfg}
    if weight_cfg is not None:
        quant_cfg["*weight_quantizer"] = weight_cfg
    if output_cfg is not None:
        quant_cfg["*output_quantizer"] = output_cfg
    mtq.quantize(model, {"quant_cfg": quant_cfg, "algorithm": "max"}, lambda m: m(calib))
    return model.eval()


def _weight_ref(weight: torch.Tensor, axis: int, num_bits: int = 8) -> torch.Tensor:
    return _ref.fake_quant_int(weight, _ref.amax(weight, [axis]), num_bits)


CONV_CASES = [
    (nn.Conv1d(3, 4, 3, padding=1), (2, 3, 9), F.conv1d, 0),
    (nn.Conv2d(3, 4, 3, stride=2, groups=1), (2, 3, 9, 8), F.conv2d, 0),
    (nn.Conv2d(4, 6, 3, groups=2, bias=False), (2, 4, 7, 7), F.conv2d, 0),
    (nn.Conv3d(2, 3, 2), (1, 2, 4, 5, 4), F.conv3d, 0),
    (nn.ConvTranspose1d(3, 4, 3, stride=2), (2, 3, 6), F.conv_transpose1d, 1),
    (nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), (2, 4, 5, 5), F.conv_transpose2d, 1),
    (nn.ConvTranspose3d(2, 3, 2, stride=2), (1, 2, 3, 3, 2), F.conv_transpose3d, 1),
]


@pytest.mark.parametrize("module,shape,fn,waxis", CONV_CASES,
                         ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else None)
def test_conv_modules_match_functional_definition(module, shape, fn, waxis):
    calib = torch.randn(*shape)
    model = _quantize(module, calib, weight_cfg={"num_bits": 8, "axis": waxis})
    qmod = model[0]
    assert type(qmod).__name__ == "Quant" + type(module).__name__
    assert isinstance(qmod, type(module))
    x = torch.randn(*shape) * 1.5  # larger than the calibration range: clipping exercised
    xq = _ref.fake_quant_int(x, _ref.amax(calib), 8)
    wq = _weight_ref(module.weight, waxis)
    kwargs = dict(stride=module.stride, padding=module.padding, dilation=module.dilation,
                  groups=module.groups)
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        kwargs["output_padding"] = module.output_padding
    expected = fn(xq, wq, module.bias, **kwargs)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-6, atol=1e-6)
        # and it really is quantized: the float module gives something else
        assert not torch.allclose(module(x), expected, rtol=1e-4, atol=1e-4)


def test_conv_transpose_output_size_argument():
    module = nn.ConvTranspose2d(2, 3, 3, stride=2)
    calib = torch.randn(1, 2, 4, 4)
    model = _quantize(module, calib, weight_cfg={"num_bits": 8, "axis": 1})
    x = torch.randn(1, 2, 4, 4)
    out = model[0](x, output_size=[10, 10])
    xq = _ref.fake_quant_int(x, _ref.amax(calib), 8)
    expected = F.conv_transpose2d(xq, _weight_ref(module.weight, 1), module.bias, stride=2,
                                  output_padding=1)
    assert out.shape == (1, 3, 10, 10)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_linear_matches_functional_definition_with_output_quantizer():
    module = nn.Linear(16, 8)
    calib = torch.randn(4, 5, 16)
    model = _quantize(module, calib, weight_cfg={"num_bits": 8, "axis": 0},
                      output_cfg={"num_bits": (4, 3)})
    x = torch.randn(3, 5, 16)
    xq = _ref.fake_quant_int(x, _ref.amax(calib), 8)
    wq = _weight_ref(module.weight, 0)
    # while calibrating every quantizer only collects: the output sees the float layer
    calib_out = F.linear(calib, module.weight, module.bias).detach()
    expected = _ref.fake_quant_fp(F.linear(xq, wq, module.bias), _ref.amax(calib_out), 4, 3)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-6, atol=1e-6)


def test_linear_int4_blocks_and_fp8_inputs():
    module = nn.Linear(40, 6)
    calib = torch.randn(8, 40)
    model = _quantize(module, calib, weight_cfg={"num_bits": 4, "block_sizes": {-1: 16}},
                      input_cfg={"num_bits": (4, 3)})
    x = torch.randn(8, 40)
    xq = _ref.fake_quant_fp(x, _ref.amax(calib), 4, 3)
    wq = _ref.fake_quant_int_blocks(module.weight.detach(), 16, 4)
    with torch.no_grad():
        torch.testing.assert_close(model(x), F.linear(xq, wq, module.bias), rtol=2e-6, atol=2e-6)


INPUT_ONLY_CASES = [
    (nn.BatchNorm1d(4), (6, 4)),
    (nn.BatchNorm2d(3), (2, 3, 5, 5)),
    (nn.BatchNorm3d(2), (2, 2, 3, 3, 3)),
    (nn.InstanceNorm1d(3, affine=True), (2, 3, 8)),
    (nn.InstanceNorm2d(3), (2, 3, 5, 5)),
    (nn.InstanceNorm3d(2), (2, 2, 3, 3, 3)),
    (nn.MaxPool1d(2), (2, 3, 8)),
    (nn.MaxPool2d(2), (2, 3, 6, 6)),
    (nn.MaxPool3d(2), (1, 2, 4, 4, 4)),
    (nn.AvgPool1d(3), (2, 3, 9)),
    (nn.AvgPool2d(2), (2, 3, 6, 6)),
    (nn.AvgPool3d(2), (1, 2, 4, 4, 4)),
    (nn.AdaptiveAvgPool1d(2), (2, 3, 7)),
    (nn.AdaptiveAvgPool2d((2, 3)), (2, 3, 7, 7)),
    (nn.AdaptiveAvgPool3d(1), (1, 2, 3, 4, 5)),
    (nn.LeakyReLU(0.1), (4, 10)),
]


@pytest.mark.parametrize("module,shape", INPUT_ONLY_CASES, ids=lambda v: type(v).__name__
                         if isinstance(v, nn.Module) else None)
def test_input_only_modules_match_functional_definition(module, shape):
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        with torch.no_grad():  # non-trivial running statistics
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-0.2, 0.2)
    module.eval()
    calib = torch.randn(*shape)
    model = _quantize(module, calib)
    qmod = model[0]
    assert type(qmod).__name__ == "Quant" + type(module).__name__
    assert not hasattr(qmod, "weight_quantizer")
    assert not qmod.output_quantizer.is_enabled  # the output quantizer is off by default
    x = torch.randn(*shape) * 1.3
    expected = module(_ref.fake_quant_int(x, _ref.amax(calib), 8))
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-6, atol=1e-6)


def test_registry_covers_the_spec_modules():
    names = ["nn.Linear", "nn.Conv1d", "nn.Conv2d", "nn.Conv3d", "nn.ConvTranspose1d",
             "nn.ConvTranspose2d", "nn.ConvTranspose3d"]
    for dims in ("1d", "2d", "3d"):
        names += [f"nn.{k}{dims}" for k in ("BatchNorm", "InstanceNorm", "MaxPool", "AvgPool",
                                             "AdaptiveAvgPool")]
    names.append("nn.LeakyReLU")
    for name in names:
        assert name in QuantModuleRegistry, name
    assert nn.Linear in QuantModuleRegistry
    assert QuantModuleRegistry["nn.Linear"] is mtq.nn.QuantLinear
    assert "nn.ReLU" not in QuantModuleRegistry


def test_conversion_keeps_parameters_hooks_and_defaults():
    lin = nn.Linear(4, 3)
    weight = lin.weight
    calls = []
    lin.register_forward_hook(lambda *a: calls.append(1))
    model = nn.Sequential(lin)
    mtq.quantize(model, {"quant_cfg": {}, "algorithm": None})
    assert model[0] is lin and lin.weight is weight
    with pytest.warns(UserWarning, match="has no calibrated amax") as record:
        model(torch.randn(2, 4))
    assert sorted(str(w.message).split("'")[1] for w in record) == ["0.input_quantizer",
                                                                    "0.weight_quantizer"]
    assert calls == [1]
    assert isinstance(lin.weight_quantizer, TensorQuantizer) and lin.weight_quantizer.axis == 0
    assert lin.input_quantizer.axis is None and not lin.output_quantizer.is_enabled
    ct = nn.Sequential(nn.ConvTranspose2d(2, 3, 3))
    mtq.quantize(ct, {"quant_cfg": {}, "algorithm": None})
    assert ct[0].weight_quantizer.axis == 1  # output channels of a transposed conv


def test_gradients_flow_through_quantized_linear():
    module = nn.Linear(6, 3)
    calib = torch.randn(10, 6)
    model = _quantize(module, calib, weight_cfg={"num_bits": 8, "axis": 0})
    model.train()
    x = (torch.randn(4, 6) * 2).requires_grad_()
    model(x).sum().backward()
    amax = _ref.amax(calib)
    w_sum = _weight_ref(module.weight, 0).sum(0)
    torch.testing.assert_close(x.grad, _ref.ste_grad(w_sum.expand(4, 6), x, amax))
    xq = _ref.fake_quant_int(x, amax, 8)
    torch.testing.assert_close(model[0].weight.grad, xq.sum(0).expand(3, 6), rtol=1e-6, atol=1e-6)
    assert model[0].weight_quantizer.amax.grad is None


def test_builtin_registry_is_the_cxx_class_list():
    from mopt import _C
    from mopt.quantization.nn.modules.quant_module import QuantModuleRegistry

    names = {name for name, _ in _C.quant_classes()}
    for name in names:
        assert name in QuantModuleRegistry, name
    builtin = {n for n in QuantModuleRegistry._names.values() if n.startswith("nn.")}
    assert builtin == names
