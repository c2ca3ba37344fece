"""Learned scales (algorithm ``lsq``, nvidia-modelopt's LSQConfig): the LSQ gradient to amax that
the C++ ops compute, against a float64 finite difference written here with plain torch on real
stories260K weights; the algorithm's options, errors and state; and a short QAT loop on the real
model in which learned scales lower the loss while every other algorithm keeps amax frozen."""

from __future__ import annotations

import copy

import mopt.opt as mto
import mopt.quantization as mtq
import pytest
import torch
from mopt.quantization.model_calib import calibration_steps
from mopt.quantization.nn import TensorQuantizer

from . import _sq_awq_common as common

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="no CUDA device"))]

# ---------------------------------------------------------------------------------------------
# The op-level gradient against float64 finite differences


def _real_weight(name: str = "model.layers.0.mlp.gate_proj") -> torch.Tensor:
    return common._float_model().get_submodule(name).weight.detach().clone()


# (attributes, view of the weight in which amax broadcasts, code range lo, hi, bound B)
FORMATS = {
    "int4-axis0-narrow": ({"num_bits": 4, "axis": 0, "narrow_range": True},
                          lambda w: w, -7.0, 7.0, 7.0),
    "int4-axis0": ({"num_bits": 4, "axis": 0}, lambda w: w, -8.0, 7.0, 7.0),
    "int4-full-range": ({"num_bits": 4, "axis": 0, "full_range": True},
                        lambda w: w, -8.0, 7.0, 7.5),
    "int8-per-tensor": ({"num_bits": 8}, lambda w: w, -128.0, 127.0, 127.0),
    "int4-blocks16": ({"num_bits": 4, "block_sizes": {-1: 16}},
                      lambda w: w.reshape(w.shape[0], -1, 16), -8.0, 7.0, 7.0),
    "fp8-per-tensor": ({"num_bits": (4, 3)}, lambda w: w, -448.0, 448.0, 448.0),
    "fp8-axis0": ({"num_bits": (4, 3), "axis": 0}, lambda w: w, -448.0, 448.0, 448.0),
}


def _calibrated(attrs: dict, w: torch.Tensor, shrink: float) -> TensorQuantizer:
    q = TensorQuantizer(attrs).to(w.device)
    q.enable_calib()
    q.disable_quant()
    q(w)
    q.load_calib_amax()
    q.disable_calib()
    q.enable_quant()
    # below the max: the clamp binds for some elements, and none sits on the clamp edge
    q.amax = q.amax * shrink
    return q


def _finite_difference(view, g, y0, a_pre, a_post, lo, hi, bound):
    """d sum(g * f) / d a_pre and / d a_post of the straight-through surrogate
    f = (a_post / B) * (clamp(w * B / a_pre, lo, hi) + r0), r0 the rounding residual of the op's
    output y0 held fixed; float64 central differences, summed to amax's shape."""
    w, g = view.double(), g.double()
    pre, post = a_pre.double(), a_post.double()
    r0 = y0.double() * bound / post - (w * bound / pre).clamp(lo, hi)

    def f(ap, aq):
        return g * (aq / bound) * ((w * bound / ap).clamp(lo, hi) + r0)

    h = 1e-7
    d_pre = (f(pre * (1 + h), post) - f(pre * (1 - h), post)) / (2 * h * pre)
    d_post = (f(pre, post * (1 + h)) - f(pre, post * (1 - h))) / (2 * h * post)
    return d_pre.sum_to_size(a_pre.shape), d_post.sum_to_size(a_post.shape)


def _assert_grad_close(got, want, view, g, amax):
    # fp32 terms of size |w| / amax + 1 each: a few ulps of their summed magnitude
    mass = (g.double().abs() * (view.double().abs() / amax.double() + 1)).sum_to_size(amax.shape)
    err = (got.double() - want).abs()
    assert bool((err <= 1e-5 * mass + 1e-6).all()), f"max error {err.max().item():.3g}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("learn", [["pre", "post"], ["post"], ["pre"]])
def test_lsq_gradient_matches_float64_finite_difference_on_real_weights(device, fmt, learn):
    attrs, view_of, lo, hi, bound = FORMATS[fmt]
    w = _real_weight().to(device)
    q = _calibrated(attrs, w, shrink=0.83)
    q.enable_lsq(learn)
    torch.manual_seed(0)
    g = torch.randn_like(w)
    y = q(w)
    (y * g).sum().backward()
    a_pre, a_post = q.amax_pre.detach(), q.amax_post.detach()
    want_pre, want_post = _finite_difference(view_of(w), view_of(g), view_of(y.detach()),
                                             a_pre, a_post, lo, hi, bound)
    for which, tensor, want in (("pre", q.amax_pre, want_pre), ("post", q.amax_post, want_post)):
        if which in learn:
            _assert_grad_close(tensor.grad, want, view_of(w), view_of(g), tensor)
        else:
            assert not tensor.requires_grad and tensor.grad is None


@pytest.mark.parametrize("device", DEVICES)
def test_tied_amax_gets_the_sum_of_pre_and_post_gradients(device):
    attrs, view_of, lo, hi, bound = FORMATS["int4-axis0"]
    w = _real_weight("model.layers.1.self_attn.q_proj").to(device)
    q = _calibrated(attrs, w, shrink=0.9)
    q.enable_lsq(["pre", "post"], tied_amax=True)
    assert q.amax_pre is q.amax_post
    g = torch.randn_like(w)
    y = q(w)
    (y * g).sum().backward()
    pre, post = _finite_difference(w, g, y.detach(), q.amax.detach(), q.amax.detach(), lo, hi,
                                   bound)
    _assert_grad_close(q.amax.grad, pre + post, w, g, q.amax)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_with_a_learnable_amax(device):
    w = _real_weight().to(device)
    amax = (w.abs().amax(1, keepdim=True) * 0.9).requires_grad_()
    x = w.clone().requires_grad_()
    torch.library.opcheck(torch.ops.mopt.fake_quant_int, (x, amax, 4, False, False, False, False))
    torch.library.opcheck(torch.ops.mopt.fake_quant_fp, (x, amax, 4, 3, False))


def test_the_cuda_gradient_equals_the_cpu_gradient():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    w = _real_weight()
    grads = []
    for device in ("cpu", "cuda"):
        q = _calibrated({"num_bits": 4, "block_sizes": {-1: 16}}, w.to(device), shrink=0.85)
        q.enable_lsq(["pre", "post"])
        g = torch.linspace(-1, 1, w.numel()).reshape(w.shape).to(device)
        (q(w.to(device)) * g).sum().backward()
        grads.append((q.amax_pre.grad.cpu(), q.amax_post.grad.cpu()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The algorithm: options, eligibility, errors, state


def _mlp_weight_only(cfg_name: str = "INT8_WEIGHT_ONLY_CFG"):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    cfg = copy.deepcopy(getattr(mtq, cfg_name))
    mtq.quantize(model, cfg, lambda m: m(torch.randn(4, 16)))
    return model


def _weight_quantizers(model):
    return [m.weight_quantizer for m in model if isinstance(m, torch.nn.Linear)]


def test_options_are_parsed_in_cxx_with_modelopt_defaults():
    [(method, opts)] = calibration_steps("lsq")
    assert method == "lsq"
    assert opts["learnable_amax"] == ["post"] and opts["tied_amax"] is False
    assert opts["scale_algorithm"]["method"] == "mse"
    [(_, opts)] = calibration_steps({"method": "lsq", "learnable_amax": "pre",
                                         "scale_algorithm": {"method": "max"}})
    assert opts["learnable_amax"] == ["pre"] and opts["scale_algorithm"] == {
        "method": "max", "skip_forward_without_activation_calib": True}


@pytest.mark.parametrize("algorithm, error, match", [
    ({"method": "lsq", "learnable_amax": ["post", "scale"]}, ValueError, "'pre' or 'post'"),
    ({"method": "lsq", "learnable_amax": ["post"], "tied_amax": True}, ValueError, "tied_amax"),
    ({"method": "lsq", "learnable_amax": ["pre"], "tied_amax": True}, ValueError, "tied_amax"),
    ({"method": "lsq", "scale_algorithm": {"method": "local_hessian"}}, ValueError,
     "'max' or 'mse'"),
    ({"method": "lsq", "scale_algorithm": {"method": "mse", "num_step": 3}}, TypeError,
     "num_step"),
    ({"method": "lsq", "learnable_amax": 3}, TypeError, "learnable_amax"),
    ({"method": "lsq", "learn": ["post"]}, TypeError, "learn"),
])
def test_bad_options_raise_and_leave_the_model_unchanged(algorithm, error, match):
    model = _mlp_weight_only()
    before = common.state_snapshot(model)
    with pytest.raises(error, match=match):
        mtq.calibrate(model, algorithm)
    common.assert_state_unchanged(model, before)
    assert all(q.learnable_amax == [] for q in _weight_quantizers(model))


def test_no_eligible_quantizer_raises_and_leaves_the_model_unchanged():
    model = _mlp_weight_only()
    for q in _weight_quantizers(model):
        q.disable()
    before = common.state_snapshot(model)
    with pytest.raises(ValueError, match="no weight quantizer whose amax it can learn"):
        mtq.calibrate(model, {"method": "lsq", "scale_algorithm": {"method": "max"}})
    common.assert_state_unchanged(model, before)


def test_static_nvfp4_blocks_are_refused_by_name():
    cfg = copy.deepcopy(mtq.NVFP4_DEFAULT_CFG)
    cfg["quant_cfg"]["*weight_quantizer"]["block_sizes"]["type"] = "static"
    cfg["quant_cfg"]["*input_quantizer"] = {"enable": False}
    cfg["algorithm"] = "max"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 16))
    mtq.quantize(model, cfg)
    before = common.state_snapshot(model)
    with pytest.raises(NotImplementedError, match="nvfp4"):
        mtq.calibrate(model, {"method": "lsq", "scale_algorithm": {"method": "max"}})
    common.assert_state_unchanged(model, before)


def test_learned_scales_survive_save_and_restore(tmp_path):
    model = _mlp_weight_only("INT4_BLOCKWISE_WEIGHT_ONLY_CFG")
    mtq.calibrate(model, {"method": "lsq", "learnable_amax": ["pre", "post"],
                          "scale_algorithm": {"method": "max"}})
    x = torch.randn(8, 16)
    opt = torch.optim.SGD([p for n, p in model.named_parameters() if "_amax" in n], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    q = _weight_quantizers(model)[0]
    assert not torch.equal(q.amax_pre, q.amax_post)  # trained apart
    mto.save(model, tmp_path / "lsq.pth")
    fresh = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    mto.restore(fresh, tmp_path / "lsq.pth")
    for a, b in zip(_weight_quantizers(model), _weight_quantizers(fresh)):
        assert b.learnable_amax == ["pre", "post"]
        assert "lsq(pre=" in repr(b) and "learn=['pre', 'post']" in repr(b)
        assert isinstance(b.amax_pre, torch.nn.Parameter)
        assert torch.equal(a.amax_pre, b.amax_pre) and torch.equal(a.amax_post, b.amax_post)
    assert torch.equal(model(x), fresh(x))


# ---------------------------------------------------------------------------------------------
# QAT on the real stories260K model


def _qat(algorithm, train_amax: bool, steps: int = 12):
    """INT4 (blocks of 32) weight-only stories260K, trained on real TinyStories windows: the
    learned amaxes when `train_amax`, else the weights. Returns (model, losses before and after
    on the training windows, the weight amaxes before)."""
    model = common.fresh_model()
    cfg = copy.deepcopy(mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG)
    cfg["quant_cfg"]["*weight_quantizer"]["block_sizes"] = {-1: 32}
    cfg["algorithm"] = algorithm
    mtq.quantize(model, cfg, common.forward_loop())
    batch = common.calib_batches()[:4]
    amax_before = {n: q.amax.detach().clone() for n, q in model.named_modules()
                   if isinstance(q, TensorQuantizer) and q.amax is not None}
    if train_amax:
        params = [p for n, p in model.named_parameters() if n.endswith("_amax")]
        for p in model.parameters():
            p.requires_grad_(any(p is a for a in params))
        opt = torch.optim.Adam(params, lr=2e-3)
    else:
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def loss() -> torch.Tensor:
        return model(batch, labels=batch).loss

    model.train()
    with torch.no_grad():
        start = loss().item()
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        end = loss().item()
    return model, start, end, amax_before


def test_qat_with_learned_scales_lowers_the_loss_and_moves_amax():
    model, start, end, amax_before = _qat({"method": "lsq", "scale_algorithm": {"method": "max"}},
                                          train_amax=True)
    assert end < start, (start, end)
    learned = {n: q for n, q in model.named_modules()
               if isinstance(q, TensorQuantizer) and q.learnable_amax}
    assert learned and all(q.learnable_amax == ["post"] for q in learned.values())
    moved = [n for n, q in learned.items() if not torch.equal(q.amax, amax_before[n])]
    assert len(moved) == len(learned)
    # pre stays frozen at the calibrated amax
    assert all(torch.equal(q.amax_pre, amax_before[n]) for n, q in learned.items())


def test_without_lsq_amax_stays_frozen_during_training():
    model, start, end, amax_before = _qat("max", train_amax=False, steps=3)
    quantizers = {n: q for n, q in model.named_modules()
                  if isinstance(q, TensorQuantizer) and q.amax is not None}
    assert quantizers
    assert not any("_amax" in n for n, _ in model.named_parameters())
    for n, q in quantizers.items():
        assert not q.amax.requires_grad and q.amax.grad is None
        assert torch.equal(q.amax, amax_before[n])


def test_untied_learned_scales_quantize_alike_while_calibrating():
    # The calibrating forward runs through the quantizer core rather than the cached op config:
    # it must dequantize with the post amax too, or the output jumps when calibration is on.
    model = _mlp_weight_only("INT4_BLOCKWISE_WEIGHT_ONLY_CFG")
    mtq.calibrate(model, {"method": "lsq", "learnable_amax": ["pre", "post"],
                          "scale_algorithm": {"method": "max"}})
    q = _weight_quantizers(model)[0]
    with torch.no_grad():
        q.amax_post.mul_(1.25)  # post apart from pre, as training moves them
    w = model[0].weight.detach()
    out = q(w)
    q.enable_calib()
    try:
        calibrating = q(w)
    finally:
        q.disable_calib()
    assert torch.equal(calibrating, out)
