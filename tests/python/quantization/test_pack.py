"""Packed weights (mopt.quantization.pack_weight): the dequantized packed weight equals the
fake-quantized weight bit for bit, on real stories260K weights quantized by mopt ptq configs and
on random weights of every format and layout; the documented layout of codes, data and scales;
clear errors for what has nothing to pack."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

import mopt.quantization as mtq
from mopt.models.llama2c import load_llama2c
from mopt.ptq.configs import resolve_configs
from mopt.quantization.config import QuantizerAttributeConfig
from mopt.quantization.nn import SequentialQuantizer, TensorQuantizer

from ._stories import calib_batches

# Formats and layouts the packed storage covers (name -> quantizer attributes).
FORMATS = {
    "int8_tensor": dict(num_bits=8),
    "int8_channel": dict(num_bits=8, axis=0),
    "int8_channel_narrow": dict(num_bits=8, axis=0, narrow_range=True),
    "int8_channel_asym": dict(num_bits=8, axis=0, asymmetric=True),
    "int4_channel": dict(num_bits=4, axis=0),
    "int4_b32": dict(num_bits=4, block_sizes={-1: 32}),
    "int4_b128": dict(num_bits=4, block_sizes={-1: 128}),
    "int4_b32_full": dict(num_bits=4, block_sizes={-1: 32}, full_range=True),
    "int4_b32_asym": dict(num_bits=4, block_sizes={-1: 32}, asymmetric=True),
    "int4_b128_asym": dict(num_bits=4, block_sizes={-1: 128}, asymmetric=True),
    "int4_b32_dynamic": dict(num_bits=4, block_sizes={-1: 32, "type": "dynamic"}),
    "uint4_channel": dict(num_bits=4, axis=0, unsigned=True),
    "int2_b16": dict(num_bits=2, block_sizes={-1: 16}),
    "fp8_tensor": dict(num_bits=(4, 3)),
    "fp8_channel": dict(num_bits=(4, 3), axis=0),
    "fp8_e5m2": dict(num_bits=(5, 2)),
    "fp8_b32": dict(num_bits=(4, 3), block_sizes={-1: 32}),
    "fp4_channel": dict(num_bits=(2, 1), axis=0),
    "fp6_e3m2": dict(num_bits=(3, 2), axis=0),
    "nvfp4": dict(num_bits=(2, 1), block_sizes={-1: 16, "type": "dynamic", "scale_bits": (4, 3)}),
    "nvfp4_static": dict(num_bits=(2, 1), block_sizes={-1: 16, "scale_bits": (4, 3)}),
    "mxfp4": dict(num_bits=(2, 1), block_sizes={-1: 32, "type": "dynamic", "scale_bits": (8, 0)}),
    "mxfp6": dict(num_bits=(3, 2), block_sizes={-1: 32, "type": "dynamic", "scale_bits": (8, 0)}),
    "mxfp8": dict(num_bits=(4, 3), block_sizes={-1: 32, "type": "dynamic", "scale_bits": (8, 0)}),
    "mxint8": dict(num_bits=8, block_sizes={-1: 32, "type": "dynamic", "scale_bits": (8, 0)}),
    "nf4": dict(num_bits=4, block_sizes={-1: 64, "scale_bits": 8, "scale_block_sizes": {-1: 256}}),
    "nf4_one_group": dict(num_bits=4, block_sizes={-1: 64, "scale_bits": 8}),
}


def calibrated(attrs: dict, w: torch.Tensor, name: str = "layer.weight_quantizer",
               pre_quant_scale: torch.Tensor | None = None) -> TensorQuantizer:
    q = TensorQuantizer(QuantizerAttributeConfig(**attrs))
    q.name = name
    if pre_quant_scale is not None:
        q.pre_quant_scale = pre_quant_scale
    if q.is_static:
        q.enable_calib()
        q.disable_quant()
        q(w)
        q.load_calib_amax()
        q.disable_calib()
        q.enable_quant()
    return q


def check_exact(w: torch.Tensor, q: TensorQuantizer) -> mtq.PackedWeight:
    ref = q(w)
    packed = mtq.pack_weight(w, q)
    out = packed.dequantize()
    assert out.dtype == ref.dtype and out.shape == ref.shape
    # bit for bit: same bits, not only equal values (-0.0 and NaN payloads included)
    assert torch.equal(out.view(torch.int16 if out.element_size() == 2 else torch.int32),
                       ref.view(torch.int16 if ref.element_size() == 2 else torch.int32)), (
        f"{packed.format}: max diff {(out.float() - ref.float()).abs().max().item()}")
    return packed


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_random_weights_every_format_bit_exact(fmt, dtype):
    for shape in ((48, 256), (24, 100)):  # 100: partial blocks and an odd number of nibbles/row
        w = (torch.randn(shape) * torch.rand(shape[0], 1) * 0.2).to(dtype)
        w[0, :5] = 0.0  # exact zeros and a zero block edge
        w[1, 1] = -0.0
        if FORMATS[fmt].get("unsigned"):
            w = w.abs()
        check_exact(w, calibrated(FORMATS[fmt], w))


@pytest.mark.parametrize("fmt", ["int8_channel", "int4_b32_asym", "fp8_tensor", "nvfp4", "nf4",
                                 "mxfp4"])
def test_pre_quant_scale_is_packed_in(fmt):
    w = torch.randn(32, 128) * 0.1
    pqs = torch.rand(128) + 0.5
    check_exact(w, calibrated(FORMATS[fmt], w * pqs, pre_quant_scale=pqs))


def test_static_amax_differing_from_weight():
    # a calibrated amax below the weight's own range clips: the codes saturate exactly as q(w)
    w = torch.randn(16, 64)
    for fmt in ("int8_channel", "int4_b32", "fp8_channel", "int4_b32_asym"):
        q = calibrated(FORMATS[fmt], w * 0.5)
        check_exact(w, q)


def test_conv_weight_per_channel():
    w = torch.randn(8, 3, 3, 3)
    check_exact(w, calibrated(dict(num_bits=8, axis=0), w))
    check_exact(w, calibrated(dict(num_bits=(4, 3), axis=0), w))


# -- the documented layout ----------------------------------------------------------------------

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
NF4 = torch.tensor([-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0, 0.0796,
                    0.1609, 0.2461, 0.3379, 0.4407, 0.5626, 0.7230, 1.0])


def e2m1(codes: torch.Tensor) -> torch.Tensor:
    c = codes.long()
    v = E2M1[c & 7]
    return torch.where((c & 8) != 0, -v, v)


def test_layout_int4_block_asym():
    w = torch.randn(16, 96)
    p = check_exact(w, calibrated(FORMATS["int4_b32_asym"], w))
    assert p.format == "int4_asym" and p.block_size == 32 and p.signed is False
    assert p.shape == (16, 96)
    assert p.codes.dtype == torch.uint8 and p.codes.shape == (16, 96)
    assert int(p.codes.max()) <= 15
    assert p.data.dtype == torch.uint8 and p.data.shape == (16, 48)
    codes = p.codes.to(torch.int32)
    assert torch.equal(p.data.to(torch.int32), codes[:, 0::2] | (codes[:, 1::2] << 4))
    assert p.scale.dtype == torch.float32 and p.scale.shape == (16, 3)
    assert p.zero_point.shape == (16, 3) and p.scale_2 is None
    value = (codes.float() - p.zero_point.float().repeat_interleave(32, 1)) * \
        p.scale.repeat_interleave(32, 1)
    torch.testing.assert_close(value, p.dequantize(), rtol=1e-6, atol=0)


def test_layout_int8_channel_and_fp8():
    w = torch.randn(16, 64)
    p = check_exact(w, calibrated(FORMATS["int8_channel"], w))
    assert p.codes.dtype == torch.int8 and p.scale.shape == (16, 1) and p.zero_point is None
    assert torch.equal(p.data, p.codes.view(torch.uint8))
    torch.testing.assert_close(p.codes.float() * p.scale, p.dequantize(), rtol=1e-6, atol=0)
    p = check_exact(w, calibrated(FORMATS["fp8_tensor"], w))
    assert p.codes.dtype == torch.float8_e4m3fn and p.scale.shape == ()
    torch.testing.assert_close(p.codes.float() * p.scale, p.dequantize(), rtol=1e-6, atol=0)
    p = check_exact(w, calibrated(FORMATS["int4_channel"], w))
    assert p.codes.dtype == torch.int8 and int(p.codes.min()) >= -8 and p.data.shape == (16, 32)


def test_layout_nvfp4():
    w = torch.randn(8, 64)
    p = check_exact(w, calibrated(FORMATS["nvfp4"], w))
    assert p.format == "nvfp4" and p.block_size == 16 and p.codes.dtype == torch.uint8
    assert p.scale.dtype == torch.float8_e4m3fn and p.scale.shape == (8, 4)
    assert p.scale_2.dtype == torch.float32 and p.scale_2.shape == ()
    block = (p.scale.float() * p.scale_2).repeat_interleave(16, 1)
    assert torch.equal(e2m1(p.codes) * block, p.dequantize())


def test_layout_mx_and_nf4():
    w = torch.randn(8, 128)
    p = check_exact(w, calibrated(FORMATS["mxfp4"], w))
    assert p.scale.dtype == torch.uint8 and p.scale.shape == (8, 4) and p.data.shape == (8, 64)
    pow2 = torch.exp2(p.scale.float() - 127).repeat_interleave(32, 1)
    assert torch.equal(e2m1(p.codes) * pow2, p.dequantize())
    p = check_exact(w, calibrated(FORMATS["mxfp8"], w))
    assert p.codes.dtype == torch.float8_e4m3fn
    pow2 = torch.exp2(p.scale.float() - 127).repeat_interleave(32, 1)
    assert torch.equal(p.codes.float() * pow2, p.dequantize())
    p = check_exact(w, calibrated(FORMATS["nf4"], w))
    assert p.format == "nf4" and p.block_size == 64 and p.scale.dtype == torch.int8
    assert p.scale.shape == (8, 2) and p.scale_2.shape == (1,) and p.scale_offset.shape == ()
    scales = (p.scale.float() * p.scale_2 + p.scale_offset).clamp_min(0)
    torch.testing.assert_close(NF4[p.codes.long()] * scales.repeat_interleave(64, 1),
                               p.dequantize(), rtol=1e-5, atol=1e-7)


def test_nbytes_and_parts_round_trip():
    w = torch.randn(64, 256, dtype=torch.bfloat16)
    for fmt in ("int4_b128", "nvfp4", "nf4", "int8_channel_asym", "mxfp4"):
        p = check_exact(w, calibrated(FORMATS[fmt], w))
        assert p.nbytes == sum(t.numel() * t.element_size() for t in p.tensors().values())
        assert p.nbytes < 0.32 * w.numel() * 2 or fmt == "int8_channel_asym"
        back = mtq.PackedWeight.from_parts(p.metadata_json(), p.tensors())
        assert torch.equal(back.dequantize(), p.dequantize()) and back.format == p.format
    parts = p.tensors()
    parts["block_scale"] = parts["block_scale"][:1]
    with pytest.raises(ValueError, match="block_scale"):
        mtq.PackedWeight.from_parts(p.metadata_json(), parts)
    with pytest.raises(ValueError, match="'data'"):
        mtq.PackedWeight.from_parts(p.metadata_json(), {})


# -- real weights: stories260K quantized by mopt ptq configs ------------------------------------

STORIES_CONFIGS = ["int8", "int8_sq", "int8_wo", "int4_awq", "int4_b32", "int4_b32_asym",
                   "int4_b64_asym", "int4_asym", "int4_full", "int4_gptq", "fp8", "fp8_pcpt",
                   "nvfp4", "nvfp4_awq", "mxfp4", "mxfp6", "mxfp8", "mxint8", "nf4"]


@functools.lru_cache(maxsize=1)
def _stories():
    return load_llama2c().eval()


def quantized_stories(config: str):
    model = copy.deepcopy(_stories())
    batches = calib_batches(4, 64)

    def loop(m):
        for b in batches.split(2):
            m(b)

    with torch.no_grad():
        mtq.quantize(model, resolve_configs(config)[0].build(), loop)
    return model


def weight_quantized_modules(model):
    for name, m in model.named_modules():
        q = getattr(m, "weight_quantizer", None)
        if isinstance(q, (TensorQuantizer, SequentialQuantizer)) and q.is_enabled:
            yield name, m


@pytest.mark.parametrize("config", STORIES_CONFIGS)
def test_stories260k_weights_bit_exact(config):
    model = quantized_stories(config)
    mods = list(weight_quantized_modules(model))
    assert mods, f"{config} quantized no weight"
    with torch.no_grad():
        for name, m in mods:
            check_exact(m.weight, m.weight_quantizer)


# -- errors --------------------------------------------------------------------------------------


def test_errors_name_the_problem():
    w = torch.randn(16, 64)
    q = TensorQuantizer(QuantizerAttributeConfig(num_bits=8, axis=0))
    q.name = "model.layers.0.q_proj.weight_quantizer"
    with pytest.raises(ValueError, match=r"q_proj.weight_quantizer' is static .* no amax"):
        mtq.pack_weight(w, q)
    q = calibrated(FORMATS["int8_channel"], w)
    q.disable()
    with pytest.raises(ValueError, match="disabled"):
        mtq.pack_weight(w, q)
    q.enable()
    q.disable_quant()
    with pytest.raises(ValueError, match="does not quantize"):
        mtq.pack_weight(w, q)
    q.enable_quant()
    bad = w.clone()
    bad[3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        mtq.pack_weight(bad, q)
    with pytest.raises(TypeError, match="torch.int32|Int"):
        mtq.pack_weight(w.to(torch.int32), q)
    with pytest.raises(NotImplementedError, match="wider than 8 bits"):
        mtq.pack_weight(w, calibrated(dict(num_bits=16, axis=0), w))
    with pytest.raises(NotImplementedError, match="2-D blocks"):
        mtq.pack_weight(w, calibrated(dict(num_bits=(4, 3), block_sizes={-1: 16, -2: 16}), w))
    with pytest.raises(NotImplementedError, match="blocks along axis 0"):
        mtq.pack_weight(w, calibrated(dict(num_bits=4, block_sizes={0: 8}), w))
    seq = SequentialQuantizer(calibrated(FORMATS["int4_b32"], w),
                              calibrated(FORMATS["fp8_tensor"], w))
    with pytest.raises(NotImplementedError, match="SequentialQuantizer"):
        mtq.pack_weight(w, seq)
    with pytest.raises(TypeError, match="TensorQuantizer"):
        mtq.pack_weight(w, torch.nn.Identity())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_cuda_packs_and_dequantizes_as_cpu(fmt):
    w = torch.randn(48, 200) * 0.1
    if FORMATS[fmt].get("unsigned"):
        w = w.abs()
    q = calibrated(FORMATS[fmt], w)
    cpu = mtq.pack_weight(w, q)
    q_cuda = copy.deepcopy(q).cuda()
    gpu = check_exact(w.cuda(), q_cuda)
    for name, t in cpu.tensors().items():
        assert torch.equal(gpu.tensors()[name].cpu(), t), name
    assert torch.equal(gpu.dequantize().cpu(), cpu.dequantize())
