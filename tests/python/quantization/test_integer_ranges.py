"""Integer ranges and per-token activations beyond ModelOpt's defaults, against float64 oracles
written here (sharing no code with mopt): full-range symmetric integers (all 2^b codes, scale
amax / (2^(b-1) - 1/2)), INT8 activations quantized per token from each input (dynamic), and
SmoothQuant folded in front of them; on real stories260K weights and activations."""

from __future__ import annotations

import copy
import warnings

import mopt.quantization as mtq
import pytest
import torch
from mopt.quantization.config import QuantizerAttributeConfig

from .algorithms._sq_awq_common import (
    assert_state_unchanged,
    eval_perplexity,
    float_activations,
    fresh_model,
    linear_weights,
    oracle_smoothquant,
    quantize,
    state_snapshot,
)


def _round_half_even64(v: torch.Tensor) -> torch.Tensor:
    f = torch.floor(v)
    d = v - f
    up = (d > 0.5) | ((d == 0.5) & (torch.remainder(f, 2) == 1))
    return torch.where(up, f + 1, f)


def block_steps(w: torch.Tensor, block: int, bits: int) -> torch.Tensor:
    """Per element: max |w| of its block of `block` inputs (the last block zero padded) /
    (2^(b-1) - 1/2), float64."""
    w = w.double()
    rows, cols = w.shape
    padded = torch.nn.functional.pad(w, (0, -cols % block))
    amax = padded.reshape(rows, -1, block).abs().amax(-1, keepdim=True)
    step = (amax / (2 ** (bits - 1) - 0.5)).expand(-1, -1, block).reshape(rows, -1)
    return step[:, :cols]


def oracle_full_range_blocks(w: torch.Tensor, block: int, bits: int) -> tuple[torch.Tensor,
                                                                            torch.Tensor]:
    """Codes in [-2^(b-1), 2^(b-1)-1] and the dequantized weight, per block of `block` inputs,
    step = max |w| of the block / (2^(b-1) - 1/2), in float64."""
    step = block_steps(w, block, bits)
    codes = _round_half_even64(w.double() / step).clamp(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return codes, codes * step


def _weight_cfg(**attrs) -> dict:
    cfg = copy.deepcopy(mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG)
    cfg["quant_cfg"]["*weight_quantizer"] = {"enable": True, **attrs}
    return cfg


@pytest.mark.parametrize("bits,block", [(4, 32), (4, 64), (3, 16), (8, 64)])
def test_full_range_weights_match_float64_oracle(bits, block):
    weights = linear_weights(fresh_model())
    model = quantize(_weight_cfg(num_bits=bits, block_sizes={-1: block}, full_range=True))
    n = 0
    used = torch.zeros(2**bits, dtype=torch.bool)
    for name, w in weights.items():
        wq = model.get_submodule(name).weight_quantizer
        assert wq.full_range
        with torch.no_grad():
            ours = wq(model.get_submodule(name).weight).double()
        codes, ref = oracle_full_range_blocks(w, block, bits)
        step = block_steps(w, block, bits)
        # fp32 scale vs float64 step: only a value on a tie (half way between two codes; every
        # block's -amax is one, at -(2^(b-1) - 1/2) steps) may round to the other neighbour
        off = (ours - ref).abs() > 1e-4 * step  # fp32 products: ~1e-5 steps at 8 bits
        frac = (w.double() / step).abs().remainder(1.0)
        assert ((frac[off] - 0.5).abs() < 1e-4).all(), name
        assert ((ours - ref).abs()[off] <= step[off] * 1.0001).all(), name
        assert off.double().mean() < 0.01, name
        used[(codes.long() + 2 ** (bits - 1)).unique()] = True
        n += 1
    assert n == 35
    assert used.all(), "full range must reach every code, the most negative one included"


def test_full_range_lowers_the_weight_error_of_int4_blocks():
    # 16 levels instead of 15 over the same amax: finer steps on real weights.
    weights = linear_weights(fresh_model())
    narrow = quantize(_weight_cfg(num_bits=4, block_sizes={-1: 32}))
    full = quantize(_weight_cfg(num_bits=4, block_sizes={-1: 32}, full_range=True))
    err_n = err_f = 0.0
    for name, w in weights.items():
        with torch.no_grad():
            m_n, m_f = narrow.get_submodule(name), full.get_submodule(name)
            err_n += float(((m_n.weight_quantizer(m_n.weight) - w) ** 2).sum())
            err_f += float(((m_f.weight_quantizer(m_f.weight) - w) ** 2).sum())
    assert err_f < 0.98 * err_n, (err_f, err_n)
    assert full.get_submodule("model.layers.0.mlp.up_proj").weight_quantizer.maxbound == 7.5


@pytest.mark.parametrize("attrs,match", [
    ({"num_bits": 4, "full_range": True, "narrow_range": True}, "contradict"),
    ({"num_bits": 4, "full_range": True, "unsigned": True}, "signed"),
    ({"num_bits": (4, 3), "full_range": True}, "integer formats only"),
    ({"num_bits": 4, "full_range": 1}, "full_range"),
])
def test_full_range_rejects_contradictions(attrs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        QuantizerAttributeConfig(**attrs)
    model = fresh_model()
    before = state_snapshot(model)
    with pytest.raises((ValueError, TypeError), match=match):
        mtq.quantize(model, _weight_cfg(**attrs), None)
    assert_state_unchanged(model, before)


def oracle_per_token_int8(x: torch.Tensor) -> torch.Tensor:
    """INT8 per token (over the last dim), step = max |x| of the token / 127, float64."""
    x = x.double()
    step = x.abs().amax(-1, keepdim=True) / 127
    q = _round_half_even64(x / step).clamp(-128, 127) * step
    return torch.where(step > 0, q, torch.zeros_like(q))


def test_int8_dynamic_per_token_matches_oracle_on_real_activations():
    acts = float_activations()
    model = quantize(mtq.INT8_DYNAMIC_CFG)
    n = 0
    for name, batches in acts.items():
        iq = model.get_submodule(name).input_quantizer
        assert iq.amax is None, "dynamic activations keep no calibrated amax"
        x = batches[0].float()
        with torch.no_grad():
            ours = iq(x).double()
        ref = oracle_per_token_int8(x)
        step = x.double().abs().amax(-1, keepdim=True) / 127
        off = (ours - ref).abs() > 1e-4 * step  # fp32 products: ~1e-5 steps at 8 bits
        frac = (x.double() / step).abs().remainder(1.0).expand_as(off)
        assert ((frac[off] - 0.5).abs() < 1e-4).all(), name  # only ties may round the other way
        assert off.double().mean() < 1e-3, name
        n += 1
    assert n == 35


def test_smoothquant_folds_in_front_of_per_token_activations():
    acts = float_activations()
    weights = linear_weights(fresh_model())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no layer may be skipped
        model = quantize(mtq.INT8_SMOOTHQUANT_DYNAMIC_CFG)
    assert mtq.INT8_SMOOTHQUANT_DYNAMIC_CFG["algorithm"]["alpha"] == 0.5
    for name in acts:
        s, w_smooth, _ = oracle_smoothquant(acts[name], weights[name], 0.5)
        module = model.get_submodule(name)
        torch.testing.assert_close(module.input_quantizer.pre_quant_scale.double(), s, rtol=2e-6,
                                   atol=0)
        torch.testing.assert_close(module.weight.double(), w_smooth, rtol=2e-6, atol=1e-9)
        assert module.input_quantizer.amax is None  # still dynamic


def test_per_token_w8a8_stays_close_to_float():
    # Per-token scales follow each token's range: W8A8 costs little perplexity, less than the
    # per-tensor static recipe on the same model.
    p_float = eval_perplexity(fresh_model())
    p_static = eval_perplexity(quantize(mtq.INT8_DEFAULT_CFG))
    p_dyn = eval_perplexity(quantize(mtq.INT8_DYNAMIC_CFG))
    p_sq_dyn = eval_perplexity(quantize(mtq.INT8_SMOOTHQUANT_DYNAMIC_CFG))
    assert p_dyn < p_static
    assert p_dyn < 1.01 * p_float, (p_dyn, p_float)
    assert p_sq_dyn < 1.01 * p_float, (p_sq_dyn, p_float)


def test_full_range_survives_save_and_restore(tmp_path):
    import mopt.opt as mto

    model = quantize(mtq.INT4_B32_FULL_RANGE_CFG)
    path = tmp_path / "state.pt"
    mto.save(model, path)
    state = mto.modelopt_state(model)
    text = str(state)
    assert "'_full_range': True" in text  # mopt's key, written because it is set
    restored = mto.restore(fresh_model(), path)
    ids = torch.arange(0, 64).reshape(1, 64) % 512
    with torch.no_grad():
        torch.testing.assert_close(restored(ids).logits, model(ids).logits, rtol=0, atol=0)
    wq = restored.get_submodule("model.layers.1.self_attn.k_proj").weight_quantizer
    assert wq.full_range and wq.maxbound == 7.5
    # a quantizer at ModelOpt's default range writes no such key (files nvidia-modelopt reads)
    assert "_full_range" not in str(mto.modelopt_state(quantize(mtq.INT4_B32_WEIGHT_ONLY_CFG)))
