"""mtq.compress: a quantized stories260K whose weights are held packed gives the fake-quantized
model's logits bit for bit (weight-only and W8A8, every packed format), frees the float weights,
keeps them frozen, and refuses what it cannot pack with the model untouched."""

from __future__ import annotations

import copy
import functools
import io

import pytest
import torch

import mopt.opt as mto
import mopt.quantization as mtq
from mopt.models.llama2c import load_llama2c
from mopt.ptq.configs import resolve_configs

from ._stories import calib_batches


@functools.lru_cache(maxsize=1)
def _stories():
    return load_llama2c().eval()


def quantized(config: str | dict):
    model = copy.deepcopy(_stories())
    cfg = resolve_configs(config)[0].build() if isinstance(config, str) else config
    batches = calib_batches(4, 64)

    def loop(m):
        for b in batches.split(2):
            m(b)

    with torch.no_grad():
        mtq.quantize(model, cfg, loop)
    return model


def eval_batch() -> torch.Tensor:
    return calib_batches(8, 64)[4:]


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(eval_batch()).logits


def float_weight_bytes(model) -> int:
    return sum(m.weight.numel() * m.weight.element_size() for _, m in model.named_modules()
               if getattr(m, "weight_quantizer", None) is not None
               and m.weight_quantizer.is_enabled)


def packed_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for n, t in model.named_buffers()
               if n.rpartition(".")[2].startswith("packed_"))


# int4_awq / int4_asym: blocks of 128; int4_b32(_asym): blocks of 32; int8: W8A8 (input quantizers)
CONFIGS = ["int8", "int8_sq", "fp8", "int4_awq", "int4_b32", "int4_b32_asym", "int4_asym",
           "nvfp4", "mxfp4", "mxfp8", "nf4"]


@pytest.mark.parametrize("config", CONFIGS)
def test_compressed_stories260k_logits_bit_exact(config):
    model = quantized(config)
    want = logits(model)
    qmods = {n: m.weight_quantizer(m.weight).detach() for n, m in model.named_modules()
             if getattr(m, "weight_quantizer", None) is not None and m.weight_quantizer.is_enabled}
    float_bytes = float_weight_bytes(model)
    out = mtq.compress(model)
    assert out is model and mtq.is_compressed(model)
    got = logits(model)
    assert torch.equal(got, want), (got - want).abs().max()
    for n, w in qmods.items():
        m = model.get_submodule(n)
        assert type(m).__name__.startswith("Compressed")
        assert "weight" not in dict(m.named_parameters(recurse=False))
        assert torch.equal(m.weight, w)
    # against the same weights in bf16 (these are fp32): 4-bit codes are 0.25x, plus scales,
    # which stories260K's short rows (64 and 172) make relatively large: fp32 int scales every
    # 32 or 128 (a 64-wide row holds one partial 128-block) cost up to 1 bit per weight
    ratio = packed_bytes(model) / (float_bytes / 2)
    limit = {"nvfp4": 0.3, "mxfp4": 0.3, "nf4": 0.3}.get(
        config, 0.55 if config in ("int8", "int8_sq", "fp8", "mxfp8") else 0.34)
    assert ratio <= limit, ratio


def test_compressed_weights_are_frozen_and_inputs_still_get_gradients():
    model = quantized("int4_b32")
    lin = model.get_submodule("model.layers.0.self_attn.q_proj")
    mtq.compress(model)
    assert not lin.weight.requires_grad
    assert all("q_proj.weight" not in n for n, _ in model.named_parameters())
    with pytest.raises(RuntimeError, match="compressed .* frozen"):
        lin.weight = torch.nn.Parameter(torch.zeros(lin.out_features, lin.in_features))
    # QLoRA's setting: the packed base stays fixed while gradients flow to what feeds it
    x = torch.randn(2, lin.in_features, requires_grad=True)
    lin(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_compressed_state_dict_and_dtype_moves():
    model = quantized("nvfp4")
    mtq.compress(model)
    sd = model.state_dict()
    keys = [k for k in sd if ".packed_" in k]
    assert any(k.endswith("q_proj.packed_data") for k in keys)
    assert all(not sd[k].is_floating_point() for k in keys)  # casts leave packed storage alone
    want = logits(model)
    # load_state_dict writes into the packed buffers in place: same outputs after a round trip
    model.load_state_dict(copy.deepcopy(sd))
    assert torch.equal(logits(model), want)
    lin = model.get_submodule("model.layers.0.mlp.down_proj")
    before = lin.weight
    model.to(torch.bfloat16)
    assert lin.weight.dtype == torch.bfloat16
    assert torch.equal(lin.weight, before.to(torch.bfloat16))
    assert lin.packed_weight.format == "nvfp4"


def test_save_of_compressed_model_is_refused():
    model = quantized("int8_wo")
    mtq.compress(model)
    buf = io.BytesIO()
    with pytest.raises(NotImplementedError, match="compressed model"):
        mto.save(model, buf)
    assert buf.getvalue() == b""


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, \
        [type(m) for m in model.modules()]


def _assert_untouched(model, snap):
    sd, types = snap
    assert [type(m) for m in model.modules()] == types
    now = model.state_dict()
    assert list(now) == list(sd) and all(torch.equal(now[k], sd[k]) for k in sd)


def test_errors_leave_the_model_untouched():
    model = copy.deepcopy(_stories())
    snap = _snapshot(model)
    with pytest.raises(ValueError, match="no quantized weight"):
        mtq.compress(model)
    _assert_untouched(model, snap)

    model = quantized("int8_wo")
    model.get_submodule("model.layers.0.self_attn.q_proj").weight_quantizer.reset_amax()
    snap = _snapshot(model)
    with pytest.raises(ValueError, match=r"cannot compress 'model.layers.0.self_attn.q_proj'.*"
                                         r"static .* no amax"):
        mtq.compress(model)
    _assert_untouched(model, snap)

    model = quantized("w4a8_awq")  # int4 then fp8 weight stages: no single packed format
    snap = _snapshot(model)
    with pytest.raises(NotImplementedError, match="SequentialQuantizer"):
        mtq.compress(model)
    _assert_untouched(model, snap)

    model = quantized("fp8_2d")  # 2-D weight blocks
    snap = _snapshot(model)
    with pytest.raises(NotImplementedError, match="2-D blocks"):
        mtq.compress(model)
    _assert_untouched(model, snap)

    model = quantized("int8_wo")
    with pytest.raises(ValueError, match="selects none"):
        mtq.compress(model, {"*nothing*": True})
    with pytest.raises(ValueError, match="True/False"):
        mtq.compress(model, {"*": "yes"})
    mtq.compress(model)
    with pytest.raises(ValueError, match="already compressed"):
        mtq.compress(model)


def test_compress_config_patterns():
    model = quantized("int8_wo")
    mtq.compress(model, {"compress": {"*": True, "*mlp*": False}, "quant_gemm": False})
    assert type(model.get_submodule("model.layers.0.self_attn.q_proj")).__name__.startswith(
        "Compressed")
    assert not type(model.get_submodule("model.layers.0.mlp.up_proj")).__name__.startswith(
        "Compressed")
