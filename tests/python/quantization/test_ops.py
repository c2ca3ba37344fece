"""torch.ops.mopt.*: opcheck on every device, results against the SPEC §5 formulas, gradients."""

import json

import pytest
import torch
from torch.library import opcheck

import mopt  # noqa: F401  (registers torch.ops.mopt)
from mopt.quantization import QuantizerAttributeConfig

from . import _ref

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                  reason="no CUDA device"))]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _x(shape, dtype=torch.float32, device="cpu", scale=3.0):
    return (torch.randn(*shape, dtype=torch.float32) * scale).to(device=device, dtype=dtype)


def _cfg(**kw) -> str:
    return QuantizerAttributeConfig(**kw).to_json()


# ---------------------------------------------------------------------------------------------
# opcheck: schema, autograd registration, fake tensors, AOT dispatch (static and dynamic).


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck_fake_quant_int(device, dtype):
    x = _x((6, 10), dtype, device).requires_grad_()
    per_row = x.detach().float().abs().amax(1, keepdim=True)
    opcheck(torch.ops.mopt.fake_quant_int.default, (x, per_row, 4, False, True, False))
    if dtype == torch.float32:  # the other flags do not depend on the dtype
        per_tensor = torch.tensor(2.0, device=device)
        opcheck(torch.ops.mopt.fake_quant_int.default, (x, per_tensor, 8, False, False, True))
        opcheck(torch.ops.mopt.fake_quant_int.default,
                (x.detach().abs(), per_tensor, 8, True, False, False))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck_fake_quant_fp(device, dtype):
    x = _x((5, 12), dtype, device).requires_grad_()
    per_col = x.detach().float().abs().amax(0, keepdim=True)
    opcheck(torch.ops.mopt.fake_quant_fp.default, (x, per_col, 4, 3, False))
    if dtype == torch.float32:
        opcheck(torch.ops.mopt.fake_quant_fp.default, (x, None, 4, 3, True))
        opcheck(torch.ops.mopt.fake_quant_fp.default, (x, torch.tensor(2.5, device=device), 5, 2,
                                                       False))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck_amax(device, dtype):
    x = _x((3, 4, 5), dtype, device)
    opcheck(torch.ops.mopt.amax.default, (x, [0, 2]))
    if dtype == torch.float32:
        opcheck(torch.ops.mopt.amax.default, (x, []))


# (config, amax keep axes of the calibration view or None for a dynamic amax)
QUANTIZE_TENSOR_CFGS = [
    (dict(num_bits=8), []),
    (dict(num_bits=8, axis=0), [0]),
    (dict(num_bits=4, narrow_range=True, axis=-1), [1]),
    (dict(num_bits=(4, 3)), []),
    (dict(num_bits=(5, 2), axis=0), [0]),
    (dict(num_bits=4, block_sizes={-1: 8}), [0, 1]),  # 12 columns: the last block is padded
    (dict(num_bits=(4, 3), block_sizes={-1: 4, -2: 4}), [0, 2]),  # 6 rows: padded too
    (dict(num_bits=8, type="dynamic"), None),
    (dict(num_bits=(4, 3), type="dynamic", block_sizes={-1: None}), None),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kw,keep", QUANTIZE_TENSOR_CFGS, ids=lambda v: json.dumps(v))
def test_opcheck_quantize_tensor(device, kw, keep):
    x = _x((6, 12), torch.float32, device).requires_grad_()
    cfg = _cfg(**kw)
    pqs = torch.rand(12, device=device) + 0.5
    view = torch.ops.mopt.quantizer_calib_view(x.detach(), pqs, cfg)
    amax = None if keep is None else _ref.amax(view.cpu(), keep).to(device)
    opcheck(torch.ops.mopt.quantize_tensor.default, (x, amax, pqs, cfg))
    if "block_sizes" in kw:
        opcheck(torch.ops.mopt.quantizer_calib_view.default, (x, pqs, cfg))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_opcheck_quantize_tensor_half(device, dtype):
    x = _x((6, 12), dtype, device).requires_grad_()
    cfg = _cfg(num_bits=4, block_sizes={-1: 8})
    opcheck(torch.ops.mopt.quantize_tensor.default, (x, None, None, cfg))


# ---------------------------------------------------------------------------------------------
# Forward results against the SPEC formulas.


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_bits,narrow", [(8, False), (8, True), (4, False), (3, True)])
def test_fake_quant_int_matches_spec(device, dtype, num_bits, narrow):
    x = _x((33, 65), dtype)
    for amax in (torch.tensor(2.0), x.float().abs().amax(0, keepdim=True) * 0.8,
                 x.float().abs().amax(1, keepdim=True)):
        y = torch.ops.mopt.fake_quant_int(x.to(device), amax.to(device), num_bits, False, narrow)
        assert y.dtype == dtype and y.shape == x.shape
        ref = _ref.fake_quant_int(x, amax, num_bits, False, narrow)
        torch.testing.assert_close(y.cpu(), ref, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_fake_quant_int_unsigned_and_half_even(device):
    # exact ties: 0.5, 1.5, 2.5 ... steps of amax=127 round to the even integer
    x = torch.arange(-10, 10, dtype=torch.float32) + 0.5
    y = torch.ops.mopt.fake_quant_int(x.to(device), torch.tensor(127.0, device=device), 8)
    torch.testing.assert_close(y.cpu(), torch.round(x), rtol=0, atol=0)
    assert y[10].item() == 0.0 and y[11].item() == 2.0  # 0.5 -> 0, 1.5 -> 2
    xu = torch.linspace(0, 4, 2001)
    yu = torch.ops.mopt.fake_quant_int(xu.to(device), torch.tensor(4.0, device=device), 8, True)
    torch.testing.assert_close(yu.cpu(), _ref.fake_quant_int(xu, 4.0, 8, True), rtol=0, atol=0)
    assert yu.unique().numel() == 256  # unsigned: levels 0..255, not 0..127


@pytest.mark.parametrize("device", DEVICES)
def test_fake_quant_int_tiny_amax_and_clipping(device):
    x = _x((4, 8))
    amax = torch.tensor([[1.0], [0.0], [2.0**-25], [2.0**-23]])
    y = torch.ops.mopt.fake_quant_int(x.to(device), amax.to(device), 8).cpu()
    assert torch.all(y[1:3] == 0)  # amax <= 2^-24 quantizes to zero
    torch.testing.assert_close(y, _ref.fake_quant_int(x, amax, 8), rtol=0, atol=0)
    assert y[0].max().item() == 1.0  # clipped to amax
    assert y[0].min().item() == pytest.approx(-128 / 127)  # full range: minbound -128


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt", [(4, 3), (5, 2), (2, 1), (3, 2), (2, 3)])
def test_fake_quant_fp_matches_spec(device, dtype, fmt):
    x = _x((17, 31), dtype)
    amax = x.float().abs().amax(0, keepdim=True) * 0.7  # some values saturate
    y = torch.ops.mopt.fake_quant_fp(x.to(device), amax.to(device), *fmt).cpu()
    ref = _ref.fake_quant_fp(x, amax, *fmt)
    # the reference rescales with * amax/max, the kernel may divide by max/amax: 1 ulp apart
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(y, ref, rtol=eps, atol=0)
    unscaled = torch.ops.mopt.fake_quant_fp(x.to(device), None, *fmt).cpu()
    torch.testing.assert_close(unscaled, _ref.fake_quant_fp(x, None, *fmt), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_fake_quant_fp_saturates_and_agrees_with_torch_float8(device):
    x = torch.tensor([500.0, -1000.0, 448.0, 464.0, 0.0, 1e-9, 3.3, -17.2])
    y = torch.ops.mopt.fake_quant_fp(x.to(device), None, 4, 3).cpu()
    assert y[:4].tolist() == [448.0, -448.0, 448.0, 448.0]
    clamped = x.clamp(-448, 448)
    torch.testing.assert_close(y, clamped.to(torch.float8_e4m3fn).float(), rtol=0, atol=0)
    y52 = torch.ops.mopt.fake_quant_fp(torch.tensor([1e6, -7e4]).to(device), None, 5, 2).cpu()
    assert y52.tolist() == [57344.0, -57344.0]
    assert torch.isnan(torch.ops.mopt.fake_quant_fp(torch.tensor([float("nan")]), None)).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_amax_matches_reference(device, dtype):
    x = _x((3, 5, 7), dtype)
    for keep in ([], [0], [1], [-1], [0, 2]):
        got = torch.ops.mopt.amax(x.to(device), keep).cpu()
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, _ref.amax(x, keep), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_quantize_tensor_static_blocks_pad_with_zeros(device):
    x = _x((5, 20))
    cfg = _cfg(num_bits=4, block_sizes={-1: 8})
    y = torch.ops.mopt.quantize_tensor(x.to(device), None, None, cfg).cpu()
    torch.testing.assert_close(y, _ref.fake_quant_int_blocks(x, 8, 4), rtol=0, atol=0)
    view = torch.ops.mopt.quantizer_calib_view(x.to(device), None, cfg).cpu()
    assert view.shape == (5, 3, 8)
    assert torch.all(view[:, 2, 4:] == 0)  # 20 -> 24: the padding is zero


@pytest.mark.parametrize("device", DEVICES)
def test_quantize_tensor_pre_quant_scale_and_amax(device):
    x = _x((4, 6))
    pqs = torch.rand(6) + 0.5
    amax = torch.tensor([[1.5], [2.0], [0.5], [4.0]])
    cfg = _cfg(num_bits=8, axis=0)
    y = torch.ops.mopt.quantize_tensor(x.to(device), amax.to(device), pqs.to(device), cfg).cpu()
    torch.testing.assert_close(y, _ref.fake_quant_int(x * pqs, amax, 8), rtol=0, atol=0)
    off = _cfg(num_bits=8, enable=False)
    y_off = torch.ops.mopt.quantize_tensor(x.to(device), None, pqs.to(device), off).cpu()
    torch.testing.assert_close(y_off, x * pqs, rtol=0, atol=0)
    # a dynamic quantizer ignores a stored amax and uses each input's own
    dyn = _cfg(num_bits=8, type="dynamic")
    y_dyn = torch.ops.mopt.quantize_tensor(x.to(device), torch.tensor(100.0, device=device), None,
                                           dyn).cpu()
    torch.testing.assert_close(y_dyn, _ref.fake_quant_int(x, _ref.amax(x), 8), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Gradients: clipped straight-through estimator, pass-through, nothing flows to amax.


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fake_quant_int_gradient_is_clipped_ste(device, dtype):
    x = _x((8, 16), dtype, device).requires_grad_()
    amax = (torch.rand(8, 1) + 1.0).to(device).requires_grad_()
    g = _x((8, 16), dtype, device)
    torch.ops.mopt.fake_quant_int(x, amax, 8).backward(g)
    expected = _ref.ste_grad(g, x, amax.detach())
    assert 0 < int((expected == 0).sum()) < expected.numel()  # both branches exercised
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=0)
    # an amax that requires grad gets the LSQ gradient (values: algorithms/test_lsq.py)
    assert amax.grad is not None and amax.grad.shape == amax.shape


@pytest.mark.parametrize("device", DEVICES)
def test_fake_quant_int_pass_through_bwd(device):
    x = _x((8, 16), device=device).requires_grad_()
    g = _x((8, 16), device=device)
    torch.ops.mopt.fake_quant_int(x, torch.tensor(0.5, device=device), 8, False, False,
                                  True).backward(g)
    torch.testing.assert_close(x.grad, g, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_fake_quant_fp_gradient(device):
    x = _x((8, 16), device=device, scale=300.0).requires_grad_()
    g = torch.ones(8, 16, device=device)
    amax = torch.tensor(2.0, device=device, requires_grad=True)
    torch.ops.mopt.fake_quant_fp(x, amax, 4, 3).backward(g)
    torch.testing.assert_close(x.grad, _ref.ste_grad(g, x, 2.0), rtol=0, atol=0)
    assert amax.grad is not None and amax.grad.shape == amax.shape  # LSQ (test_lsq.py)
    x.grad = None  # without amax the bound is the format maximum, 448
    torch.ops.mopt.fake_quant_fp(x, None, 4, 3).backward(g)
    torch.testing.assert_close(x.grad, _ref.ste_grad(g, x, 448.0), rtol=0, atol=0)
    x.grad = None
    torch.ops.mopt.fake_quant_fp(x, amax, 4, 3, True).backward(g)
    torch.testing.assert_close(x.grad, g, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_quantize_tensor_gradient_through_blocks_and_scale(device):
    x = _x((4, 10), device=device).requires_grad_()
    pqs = (torch.rand(10) + 0.5).to(device)
    cfg = _cfg(num_bits=4, block_sizes={-1: 4})
    amax = torch.full((4, 3, 1), 1.0, device=device)  # blocks of 4 over 10 (padded) columns
    g = _x((4, 10), device=device)
    torch.ops.mopt.quantize_tensor(x, amax, pqs, cfg).backward(g)
    expected = _ref.ste_grad(g, x * pqs, 1.0) * pqs
    torch.testing.assert_close(x.grad, expected)
    assert 0 < int((expected == 0).sum()) < expected.numel()


def test_ops_keep_gradient_off_for_amax_op():
    x = _x((4, 4)).requires_grad_()
    a = torch.ops.mopt.amax(x, [])
    assert not a.requires_grad


# ---------------------------------------------------------------------------------------------
# mtq.tensor_quant: the functional forms with the reference's signatures.


def test_fake_tensor_quant_signature_and_defaults():
    from mopt.quantization import tensor_quant

    x = _x((6, 9))
    amax = _ref.amax(x, [0])
    # narrow_range defaults to True here (and to False in the config)
    torch.testing.assert_close(tensor_quant.fake_tensor_quant(x, amax),
                               _ref.fake_quant_int(x, amax, 8, False, True), rtol=0, atol=0)
    # positional order: inputs, amax, bias, num_bits, unsigned, narrow_range
    torch.testing.assert_close(tensor_quant.fake_tensor_quant(x, amax, None, 4, False, False),
                               _ref.fake_quant_int(x, amax, 4, False, False), rtol=0, atol=0)
    xu = x.abs()
    torch.testing.assert_close(tensor_quant.fake_tensor_quant(xu, 2.0, None, 8, True),
                               _ref.fake_quant_int(xu, 2.0, 8, True, True), rtol=0, atol=0)
    bias = torch.randn(6, 1)
    torch.testing.assert_close(tensor_quant.fake_tensor_quant(x, 2.0, bias, 8),
                               _ref.fake_quant_int(x - bias, 2.0, 8, False, True) + bias,
                               rtol=0, atol=0)
    # block_size/axis describe an export layout only
    torch.testing.assert_close(tensor_quant.fake_tensor_quant(x, amax, None, 4, False, True,
                                                              None, False, 128, 0),
                               _ref.fake_quant_int(x, amax, 4, False, True), rtol=0, atol=0)
    xg = x.clone().requires_grad_()
    tensor_quant.fake_tensor_quant(xg, 1.0).sum().backward()
    torch.testing.assert_close(xg.grad, _ref.ste_grad(torch.ones_like(x), x, 1.0), rtol=0, atol=0)


def test_scaled_e4m3():
    from mopt.quantization import tensor_quant

    x = _x((5, 7))
    amax = torch.tensor(2.5)
    torch.testing.assert_close(tensor_quant.scaled_e4m3(x, amax), _ref.fake_quant_fp(x, amax),
                               rtol=torch.finfo(torch.float32).eps, atol=0)
    torch.testing.assert_close(tensor_quant.scaled_e4m3(x, None), _ref.fake_quant_fp(x, None),
                               rtol=0, atol=0)
    torch.testing.assert_close(tensor_quant.scaled_e4m3(x, amax, None, 5, 2),
                               _ref.fake_quant_fp(x, amax, 5, 2),
                               rtol=torch.finfo(torch.float32).eps, atol=0)
    xg = x.clone().requires_grad_()
    tensor_quant.scaled_e4m3(xg, amax, None, 4, 3, None, True).sum().backward()
    assert torch.equal(xg.grad, torch.ones_like(x))  # pass_through_bwd
    torch.testing.assert_close(tensor_quant.compute_amax(x, (1,)), _ref.amax(x, [1]),
                               rtol=0, atol=0)
