"""llama.cpp's GGUF block types as a mopt format: the ops (opcheck, CPU vs CUDA, gradient), the
fallbacks by row length, and the quantizer path, against the `gguf` package's own reference
quantizer and dequantizer (an implementation mopt shares no code with)."""

import numpy as np
import pytest
import torch
from torch.library import opcheck

import mopt  # noqa: F401  (registers torch.ops.mopt)
import mopt.quantization as mtq
from mopt import _C

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize, quantize  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                reason="no CUDA device"))]
GGML = {"q8_0": 8, "q4_0": 2, "q5_0": 6, "q4_k": 12}


def weight(rows=48, cols=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[0, :32] = 0.0  # an all-zero block
    w[1, :32] = w[1, :32].abs()  # a non-negative block (Q4_K's min is 0)
    return w


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("type_", ["q8_0", "q4_0", "q4_k"])
def test_opcheck(device, type_):
    x = weight().to(device)
    opcheck(torch.ops.mopt.fake_quant_gguf.default, (x, type_))
    opcheck(torch.ops.mopt.gguf_pack.default, (x.detach(), type_),
            test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("type_", ["q8_0", "q4_0", "q5_0", "q4_k"])
def test_pack_decodes_to_fake_quant_bit_for_bit(type_):
    w = weight()
    packed = torch.ops.mopt.gguf_pack(w, type_)
    got = dequantize(packed.numpy(), gguf.GGMLQuantizationType(GGML[type_]))
    if type_ != "q5_0":  # q5_0 is only a fallback: fake_quant_gguf never takes it directly
        fq = torch.ops.mopt.fake_quant_gguf(w, type_).numpy()
        assert np.array_equal(got.view(np.uint32), fq.view(np.uint32))
    assert np.abs(got - w.numpy()).max() < 0.05 * 8 / (7 if "q4" in type_ else 15)


@pytest.mark.parametrize("type_", ["q8_0", "q4_0", "q5_0"])
def test_bytes_equal_llama_cpp_reference_quantizer(type_):
    # mopt chooses the Q8_0 / Q4_0 / Q5_0 scales as llama.cpp's reference quantizer does, so the
    # bytes agree with the gguf package's port of it
    w = weight(seed=3)
    want = quantize(w.numpy(), gguf.GGMLQuantizationType(GGML[type_]))
    assert np.array_equal(torch.ops.mopt.gguf_pack(w, type_).numpy(), want)


def test_q4_k_error_below_q4_0():
    w = weight(seed=4)
    err = {t: (torch.ops.mopt.fake_quant_gguf(w, t) - w).pow(2).mean().item()
           for t in ("q4_0", "q4_k")}
    assert err["q4_k"] < err["q4_0"]


def test_row_fallbacks():
    assert _C.gguf_row_type("q4_k", 512) == "q4_k"
    assert _C.gguf_row_type("q4_k", 64) == "q5_0"
    assert _C.gguf_row_type("q4_0", 172) == "f32"
    w = weight(cols=64)  # Q4_K on rows of 64: llama.cpp stores Q5_0, so mopt quantizes to it
    q5 = dequantize(torch.ops.mopt.gguf_pack(w, "q5_0").numpy(), gguf.GGMLQuantizationType.Q5_0)
    assert torch.equal(torch.ops.mopt.fake_quant_gguf(w, "q4_k"), torch.from_numpy(q5))
    odd = weight(cols=172)
    assert torch.equal(torch.ops.mopt.fake_quant_gguf(odd, "q8_0"), odd)


def test_bad_input():
    with pytest.raises(ValueError, match="unknown GGUF type 'q3_k'"):
        torch.ops.mopt.fake_quant_gguf(weight(), "q3_k")
    with pytest.raises(ValueError, match="multiple of 256"):
        torch.ops.mopt.gguf_pack(weight(cols=64), "q4_k")
    with pytest.raises(ValueError, match="only llama.cpp's fallback"):
        torch.ops.mopt.fake_quant_gguf(weight(), "q5_0")


def test_gradient_passes_straight_through():
    w = weight().requires_grad_()
    g = torch.randn_like(w)
    torch.ops.mopt.fake_quant_gguf(w, "q4_0").backward(g)
    assert torch.equal(w.grad, g)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("type_", ["q8_0", "q4_0", "q5_0", "q4_k"])
def test_cuda_matches_cpu(type_):
    w = weight(rows=96, cols=768)
    assert torch.equal(torch.ops.mopt.gguf_pack(w.cuda(), type_).cpu(),
                       torch.ops.mopt.gguf_pack(w, type_))
    if type_ != "q5_0":
        assert torch.equal(torch.ops.mopt.fake_quant_gguf(w.cuda(), type_).cpu(),
                           torch.ops.mopt.fake_quant_gguf(w, type_))


def test_quantizer_uses_the_format():
    q = mtq.nn.TensorQuantizer({"num_bits": 4, "block_sizes": {-1: 256, "type": "dynamic",
                                                         "gguf": "q4_k"}})
    assert q.format["family"] == "gguf" and q.format["name"] == "gguf_q4_k"
    w = weight()
    assert torch.equal(q(w), torch.ops.mopt.fake_quant_gguf(w, "q4_k"))
    bits = _C.weight_storage_bits([_C.normalize_quantizer_config(
        '{"num_bits": 4, "block_sizes": {"-1": 256, "type": "dynamic", "gguf": "q4_k"}}')],
        [48, 512])
    assert sum(bits) == 48 * 512 // 256 * 144 * 8  # ggml's 144-byte blocks

    def priced(cols):
        return sum(_C.weight_storage_bits([_C.normalize_quantizer_config(
            '{"num_bits": 4, "block_sizes": {"-1": 256, "type": "dynamic", "gguf": "q4_k"}}')],
            [48, cols]))

    assert priced(64) == 48 * 64 // 32 * 22 * 8  # stored as Q5_0, as llama.cpp falls back
    assert priced(172) == 48 * 172 * 16  # left unquantized
