"""Asymmetric integers (``"asymmetric": True``: min/max ranges with an integer zero point) against
float64 oracles written here, sharing no code with mopt: weights in blocks and per channel on real
stories260K weights, dynamic per-token activations and static min/max calibration on real
activations, AWQ and GPTQ end to end, save/restore, and the errors of bad input."""

from __future__ import annotations

import copy

import mopt.quantization as mtq
import pytest
import torch
from mopt.quantization.config import QuantizerAttributeConfig
from mopt.quantization.nn import TensorQuantizer

from .algorithms._sq_awq_common import (
    assert_state_unchanged,
    eval_perplexity,
    float_activations,
    fresh_model,
    linear_weights,
    quantize,
    state_snapshot,
)
from .test_integer_ranges import _round_half_even64


def oracle_asym(x: torch.Tensor, reduce_dims: tuple[int, ...], bits: int):
    """The float64 asymmetric rule over `reduce_dims` (keepdims): range [min(lo, 0), max(hi, 0)],
    step (hi - lo) / (2^b - 1), zero point round(qmin - lo / step) clamped to the codes, codes
    clamp(round(x / step) + zero point); returns (dequantized, step, zero point, codes)."""
    x = x.double()
    lo = x.amin(reduce_dims, keepdim=True).clamp(max=0)
    hi = x.amax(reduce_dims, keepdim=True).clamp(min=0)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    step = (hi - lo) / (qmax - qmin)
    safe = torch.where(step > 0, step, torch.ones_like(step))
    zp = _round_half_even64(qmin - lo / safe).clamp(qmin, qmax)
    codes = (_round_half_even64(x / safe) + zp).clamp(qmin, qmax)
    deq = torch.where(step > 0, (codes - zp) * step, torch.zeros_like(x))
    return deq, step, zp, codes


def _blocks(w: torch.Tensor, block: int) -> torch.Tensor:
    rows, cols = w.shape
    return torch.nn.functional.pad(w, (0, -cols % block)).reshape(rows, -1, block)


def _weight_cfg(**attrs) -> dict:
    cfg = copy.deepcopy(mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG)
    cfg["quant_cfg"]["*weight_quantizer"] = {"enable": True, **attrs}
    return cfg


def _assert_close_but_ties(ours, ref, scaled, step, name, max_off=0.01):
    """ours == ref within fp32 accuracy, except values on a rounding tie (x / step half way
    between codes) that fp32 may round to the other neighbour."""
    off = (ours - ref).abs() > 1e-4 * step
    frac = scaled.abs().remainder(1.0).expand_as(off)
    assert ((frac[off] - 0.5).abs() < 1e-3).all(), name
    assert ((ours - ref).abs()[off] <= step.expand_as(off)[off] * 1.0001).all(), name
    assert off.double().mean() < max_off, name


@pytest.mark.parametrize("bits,block", [(4, 32), (4, 64), (3, 16), (8, 128)])
def test_block_weights_match_float64_oracle(bits, block):
    weights = linear_weights(fresh_model())
    model = quantize(_weight_cfg(num_bits=bits, block_sizes={-1: block}, asymmetric=True))
    used = torch.zeros(2**bits, dtype=torch.bool)
    for name, w in weights.items():
        wq = model.get_submodule(name).weight_quantizer
        assert wq.asymmetric and wq.maxbound == 2 ** (bits - 1) - 0.5
        with torch.no_grad():
            ours = wq(model.get_submodule(name).weight).double()
        wb = _blocks(w, block)
        ref, step, zp, codes = oracle_asym(wb, (-1,), bits)
        cols = w.shape[1]
        ref = ref.reshape(w.shape[0], -1)[:, :cols]
        steps = step.expand_as(wb).reshape(w.shape[0], -1)[:, :cols]
        scaled = (wb / torch.where(step > 0, step, torch.ones_like(step))).reshape(
            w.shape[0], -1)[:, :cols]
        _assert_close_but_ties(ours, ref, scaled, steps, name)
        # the stored zero points are the oracle's codes (a zero point on a tie may differ by 1)
        stored = wq.zero_point.double().reshape(zp.shape)
        assert torch.equal(stored, stored.round()), name
        assert (stored - zp).abs().max() <= 1 and (stored != zp).double().mean() < 0.01, name
        torch.testing.assert_close(wq.amax.double().reshape(step.shape),
                                   step * (2**bits - 1) / 2, rtol=1e-6, atol=0)
        used[(codes.long() + 2 ** (bits - 1)).unique()] = True
    assert used.all(), "min/max ranges reach every code"


def test_zero_stays_exact_and_skewed_blocks_gain():
    # A block of non-negative values uses all 2^b codes over [0, max] (symmetric ranges waste
    # the negative half), and zeros dequantize to exactly 0.
    torch.manual_seed(0)
    w = torch.rand(16, 64) * 3.0
    w[:, ::7] = 0.0
    asym = TensorQuantizer({"num_bits": 4, "block_sizes": {-1: 32}, "asymmetric": True})
    full = TensorQuantizer({"num_bits": 4, "block_sizes": {-1: 32}, "full_range": True})
    for q in (asym, full):
        q.enable_calib()
        q.disable_quant()
        q(w)
        q.load_calib_amax()
        q.disable_calib()
        q.enable_quant()
    ya, yf = asym(w), full(w)
    assert torch.equal(ya[:, ::7], torch.zeros_like(ya[:, ::7]))
    assert torch.all(asym.zero_point == -8)  # non-negative blocks: 0 is the lowest code
    err_a, err_f = ((ya - w) ** 2).sum(), ((yf - w) ** 2).sum()
    assert err_a < 0.35 * err_f, (err_a, err_f)


def test_asymmetric_lowers_the_weight_error_of_real_int4_blocks():
    weights = linear_weights(fresh_model())
    full = quantize(_weight_cfg(num_bits=4, block_sizes={-1: 32}, full_range=True))
    asym = quantize(_weight_cfg(num_bits=4, block_sizes={-1: 32}, asymmetric=True))
    err_f = err_a = 0.0
    for name, w in weights.items():
        with torch.no_grad():
            m_f, m_a = full.get_submodule(name), asym.get_submodule(name)
            err_f += float(((m_f.weight_quantizer(m_f.weight) - w) ** 2).sum())
            err_a += float(((m_a.weight_quantizer(m_a.weight) - w) ** 2).sum())
    assert err_a < 0.95 * err_f, (err_a, err_f)


def test_per_token_dynamic_activations_match_oracle():
    acts = float_activations()
    q = TensorQuantizer({"num_bits": 8, "type": "dynamic", "block_sizes": {-1: None},
                         "asymmetric": True})
    n = 0
    for name, batches in list(acts.items())[:12]:
        x = batches[0].float()
        with torch.no_grad():
            ours = q(x).double()
        ref, step, _, _ = oracle_asym(x, (-1,), 8)
        scaled = x.double() / torch.where(step > 0, step, torch.ones_like(step))
        _assert_close_but_ties(ours, ref, scaled, step, name, max_off=1e-3)
        n += 1
    assert q.amax is None and q.zero_point is None  # dynamic: nothing stored
    assert n == 12


def test_static_activation_calibration_tracks_min_and_max_over_batches():
    acts = float_activations()
    name = "model.layers.2.mlp.down_proj"
    batches = [b.float() for b in acts[name]]
    q = TensorQuantizer({"num_bits": 8, "asymmetric": True})
    q.enable_calib()
    q.disable_quant()
    for b in batches:
        q(b)
    q.load_calib_amax()
    q.disable_calib()
    q.enable_quant()
    allx = torch.cat(batches).double()
    lo, hi = float(allx.min().clamp(max=0)), float(allx.max().clamp(min=0))
    assert float(q.amax) == pytest.approx((hi - lo) / 2, rel=1e-6)
    zp = round(-128 - lo / ((hi - lo) / 255))
    assert float(q.zero_point) == max(-128, min(127, zp))
    with torch.no_grad():
        ours = q(batches[0]).double()
    step = (hi - lo) / 255
    assert (ours - batches[0].double()).abs().max() <= 0.5 * step * 1.001


def test_int4_recipes_order_on_stories260k():
    # Zero points beat symmetric ranges at the same layout; AWQ and GPTQ improve on them.
    p_full = eval_perplexity(quantize(mtq.INT4_B32_FULL_RANGE_CFG))
    p_asym = eval_perplexity(quantize(mtq.INT4_B32_ASYM_CFG))
    awq = copy.deepcopy(mtq.INT4_B32_ASYM_CFG)
    awq["algorithm"] = {"method": "awq_full", "alpha_step": 0.1}
    p_awq = eval_perplexity(quantize(awq))
    gptq = copy.deepcopy(mtq.INT4_B32_ASYM_CFG)
    gptq["algorithm"] = {"method": "gptq", "block_size": 128, "percdamp": 0.01}
    model = quantize(gptq)
    p_gptq = eval_perplexity(model)
    assert p_asym < p_full, (p_asym, p_full)
    assert p_awq < p_asym, (p_awq, p_asym)
    assert p_gptq < p_asym, (p_gptq, p_asym)
    # the GPTQ weights are what the quantizer (with the stored zero points) gives back
    for name, m in model.named_modules():
        wq = getattr(m, "weight_quantizer", None)
        if isinstance(m, torch.nn.Linear) and wq is not None and wq.is_enabled:
            assert wq.zero_point is not None, name
            with torch.no_grad():
                assert torch.equal(wq(m.weight), m.weight), name


def test_awq_clip_clips_the_range_symmetrically_then_refits_it():
    # AutoAWQ's clip for zero-point weights: clamp w to +-ratio * max|w|, then min/max again.
    model = quantize(mtq.INT4_B32_ASYM_CFG)
    cfg = copy.deepcopy(mtq.INT4_B32_ASYM_CFG)
    cfg["algorithm"] = {"method": "awq_clip"}
    clipped = quantize(cfg)
    name = "model.layers.0.mlp.up_proj"
    w = linear_weights(fresh_model())[name]
    wq0 = model.get_submodule(name).weight_quantizer
    wq1 = clipped.get_submodule(name).weight_quantizer
    assert torch.all(wq1.amax <= wq0.amax * (1 + 1e-6))
    assert (wq1.amax < wq0.amax * 0.999).any(), "some block must be clipped"
    wb = _blocks(w, 32)
    absmax = wb.abs().amax(-1, keepdim=True)
    # each clipped block's range is the min/max of the block clamped at +-ratio * max|w|
    half = wq1.amax.double().reshape(absmax.shape)
    zstored = wq1.zero_point.double().reshape(half.shape)
    matched = torch.zeros_like(half, dtype=torch.bool)
    for ratio in torch.arange(0.5, 1.0001, 0.05, dtype=torch.float64):
        _, step, zp, _ = oracle_asym(torch.minimum(torch.maximum(wb, -ratio * absmax),
                                                   ratio * absmax), (-1,), 4)
        hit = (step * 15 / 2 - half).abs() <= 1e-5 * half
        assert ((zstored[hit] - zp[hit]).abs() <= 1).all()
        matched |= hit
    assert matched.all(), "every block's range is one of the clip candidates"
    assert torch.equal(wq1.zero_point, wq1.zero_point.round())


def test_save_and_restore_keeps_zero_points(tmp_path):
    import mopt.opt as mto

    model = quantize(mtq.INT4_B32_ASYM_CFG)
    path = tmp_path / "state.pt"
    mto.save(model, path)
    assert "'_asymmetric': True" in str(mto.modelopt_state(model))
    assert "_asymmetric" not in str(mto.modelopt_state(quantize(mtq.INT4_B32_FULL_RANGE_CFG)))
    restored = mto.restore(fresh_model(), path)
    ids = torch.arange(0, 64).reshape(1, 64) % 512
    with torch.no_grad():
        torch.testing.assert_close(restored(ids).logits, model(ids).logits, rtol=0, atol=0)
    a = model.get_submodule("model.layers.1.self_attn.k_proj").weight_quantizer
    b = restored.get_submodule("model.layers.1.self_attn.k_proj").weight_quantizer
    assert b.asymmetric and torch.equal(a.zero_point, b.zero_point)


@pytest.mark.parametrize("attrs,exc,match", [
    ({"num_bits": 4, "asymmetric": True, "unsigned": True}, ValueError, "unsigned"),
    ({"num_bits": 4, "asymmetric": True, "narrow_range": True}, ValueError, "narrow_range"),
    ({"num_bits": (4, 3), "asymmetric": True}, ValueError, "integer formats only"),
    ({"num_bits": 8, "asymmetric": True, "calibrator": "histogram"}, NotImplementedError,
     "max"),
    ({"num_bits": 4, "asymmetric": True,
      "block_sizes": {-1: 64, "scale_bits": 8, "scale_block_sizes": {-1: 256}}},
     NotImplementedError, "nf4"),
])
def test_bad_asymmetric_configs_raise_and_leave_the_model(attrs, exc, match):
    model = fresh_model()
    before = state_snapshot(model)
    with pytest.raises(exc, match=match):
        QuantizerAttributeConfig(**attrs) if exc is ValueError else None
        mtq.quantize(model, _weight_cfg(**attrs), None)
    assert_state_unchanged(model, before)


def test_zero_points_outside_the_codes_are_refused():
    q = TensorQuantizer({"num_bits": 4, "axis": 0, "asymmetric": True})
    q.amax = torch.ones(3, 1)
    with pytest.raises(ValueError, match=r"codes of the 4-bit format, in \[-8, 7\]"):
        q.zero_point = torch.tensor([[0.0], [8.0], [1.0]])
    with pytest.raises(ValueError, match="integer codes"):
        q.zero_point = torch.tensor([[0.0], [0.5], [1.0]])
    with pytest.raises(ValueError, match="shape"):
        q.zero_point = torch.zeros(2, 1)
    assert q.zero_point is None
    q.zero_point = torch.tensor([[0.0], [-8.0], [7.0]])
    # a checkpoint with a bad zero point changes nothing
    state = {"_amax": torch.ones(3, 1), "_zero_point": torch.tensor([[0.0], [-9.0], [7.0]])}
    with pytest.raises(ValueError, match="codes"):
        q.load_state_dict(state)
    assert torch.equal(q.zero_point, torch.tensor([[0.0], [-8.0], [7.0]]))
    sym = TensorQuantizer({"num_bits": 4, "axis": 0})
    with pytest.raises(ValueError, match="symmetric"):
        sym.zero_point = torch.zeros(3, 1)
    # an amax without its zero point is not quantized silently as symmetric
    lone = TensorQuantizer({"num_bits": 4, "axis": 0, "asymmetric": True})
    lone.amax = torch.ones(3, 1)
    with pytest.raises(ValueError, match="zero_point"):
        lone(torch.randn(3, 8))


@pytest.mark.parametrize("algorithm", ["mse", "entropy", "percentile"])
def test_searched_calibration_of_asymmetric_quantizers_is_refused(algorithm):
    # MSE searches weights and activations; the histogram methods search activations (weights
    # keep their max calibration): asymmetric inputs then.
    model = fresh_model()
    before = state_snapshot(model)
    if algorithm == "mse":
        cfg = copy.deepcopy(mtq.INT4_B32_ASYM_CFG)
    else:
        cfg = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
        cfg["quant_cfg"]["*input_quantizer"] = {"num_bits": 8, "asymmetric": True}
    cfg["algorithm"] = algorithm
    with pytest.raises(NotImplementedError, match="asymmetric"):
        quantize(cfg, model)
    assert_state_unchanged(model, before)
