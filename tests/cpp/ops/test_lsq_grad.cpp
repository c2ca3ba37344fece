// The LSQ gradient to amax of the fake-quant ops (learned step size, Esser et al. 2020) against a
// float64 central finite difference of the straight-through surrogate
//   f(a_pre, a_post) = (a_post / B) * (clamp(x * B / a_pre, lo, hi) + r0),
// where r0 = Q(v0) - clamp(v0, lo, hi) is the rounding residual at the evaluated amax, held fixed
// (the straight-through estimator's view of rounding). The residual comes from the op's forward,
// which the other tests check against plain references; everything else here is double math.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/variable.h>

#include <string>

#include "mopt/quant/block_quant.h"
#include "mopt/quant/fake_quant.h"
#include "mopt/quant/quantize_tensor.h"

namespace mopt {
namespace {

struct Codes {
  double lo, hi, bound;  // code range and the code amax maps to
};

// dL/d(a_pre) and dL/d(a_post) of L = sum(g * f), by central differences in float64, summed to
// amax's shape (amax broadcasts against x). y0 is the op's output at (a_pre, a_post).
std::pair<at::Tensor, at::Tensor> finite_difference(const at::Tensor& x, const at::Tensor& g,
                                                    const at::Tensor& y0, const at::Tensor& a_pre,
                                                    const at::Tensor& a_post, Codes c) {
  const at::Tensor xd = x.to(at::kDouble), gd = g.to(at::kDouble);
  const at::Tensor pre = a_pre.to(at::kDouble), post = a_post.to(at::kDouble);
  const at::Tensor v0 = xd * c.bound / pre;
  const at::Tensor r0 = y0.to(at::kDouble) * c.bound / post - v0.clamp(c.lo, c.hi);
  auto loss = [&](const at::Tensor& ap, const at::Tensor& aq) {
    return gd * (aq / c.bound) * ((xd * c.bound / ap).clamp(c.lo, c.hi) + r0);
  };
  const double h = 1e-7;
  const at::Tensor d_pre = (loss(pre * (1 + h), post) - loss(pre * (1 - h), post)) / (2 * h * pre);
  const at::Tensor d_post =
      (loss(pre, post * (1 + h)) - loss(pre, post * (1 - h))) / (2 * h * post);
  return {at::sum_to(d_pre, a_pre.sizes()), at::sum_to(d_post, a_post.sizes())};
}

// |got - want| within what fp32 arithmetic on each term allows: a few ulps of every summed
// |g * term| (the terms are O(|x| / amax + 1) each) plus the finite difference's own error.
void expect_close(const at::Tensor& got, const at::Tensor& want, const at::Tensor& scale) {
  ASSERT_TRUE(got.defined());
  const at::Tensor err = (got.to(at::kDouble) - want).abs();
  const at::Tensor tol = scale * 1e-5 + 1e-6;
  EXPECT_TRUE(at::all(err <= tol).item<bool>())
      << "max error " << err.max().item<double>() << "\ngot  " << got << "\nwant " << want;
}

at::Tensor mass(const at::Tensor& x, const at::Tensor& g, const at::Tensor& amax) {
  return at::sum_to((g.to(at::kDouble) * (x.to(at::kDouble).abs() / amax.to(at::kDouble) + 1))
                        .abs(),
                    amax.sizes());
}

std::vector<at::Device> devices() {
  std::vector<at::Device> d{at::kCPU};
  if (at::hasCUDA()) d.emplace_back(at::kCUDA);
  return d;
}

// amax a little below the channel's max, so that the clamp binds for some elements and no
// element sits on the clamp edge (where the surrogate has a kink).
at::Tensor learnable_amax(const at::Tensor& x, std::vector<int64_t> reduce) {
  return (x.abs().amax(reduce, true) * 0.83).detach().requires_grad_(true);
}

TEST(LsqGradient, IntegerFormatsMatchFiniteDifference) {
  struct Case {
    int bits;
    bool is_unsigned, narrow, full;
  };
  for (const at::Device dev : devices()) {
    for (const Case k : {Case{8, false, false, false}, Case{4, false, true, false},
                         Case{4, false, false, true}, Case{3, true, false, false}}) {
      at::manual_seed(11 + k.bits);
      at::Tensor x = at::randn({12, 40}, at::TensorOptions().device(dev)) * 0.7;
      if (k.is_unsigned) x = x.abs();
      const at::Tensor g = at::randn_like(x);
      for (const auto& reduce : {std::vector<int64_t>{1}, std::vector<int64_t>{0, 1}}) {
        at::Tensor amax = learnable_amax(x, reduce);
        const at::Tensor y =
            fake_quant_int(x, amax, k.bits, k.is_unsigned, k.narrow, false, k.full);
        (y * g).sum().backward();
        const double maxb = (1 << (k.bits - 1 + (k.is_unsigned ? 1 : 0))) - 1;
        const Codes c{k.is_unsigned ? 0.0 : (k.narrow ? -maxb : -maxb - 1), maxb,
                      maxb + (k.full ? 0.5 : 0.0)};
        const auto [want_pre, want_post] = finite_difference(x, g, y.detach(), amax.detach(),
                                                             amax.detach(), c);
        // one amax as both: the sum of the pre and post derivatives
        expect_close(amax.grad(), want_pre + want_post, mass(x, g, amax));
      }
    }
  }
}

TEST(LsqGradient, Fp8E4m3MatchesFiniteDifference) {
  for (const at::Device dev : devices()) {
    at::manual_seed(5);
    const at::Tensor x = at::randn({16, 24}, at::TensorOptions().device(dev));
    const at::Tensor g = at::randn_like(x);
    for (const auto& reduce : {std::vector<int64_t>{1}, std::vector<int64_t>{0, 1}}) {
      at::Tensor amax = learnable_amax(x, reduce);
      const at::Tensor y = fake_quant_fp(x, amax, 4, 3);
      (y * g).sum().backward();
      const auto [pre, post] = finite_difference(x, g, y.detach(), amax.detach(), amax.detach(),
                                                 Codes{-448.0, 448.0, 448.0});
      expect_close(amax.grad(), pre + post, mass(x, g, amax));
    }
  }
}

TEST(LsqGradient, SeparatePreAndPostAmaxThroughQuantizerForward) {
  // Static int4 blocks of 8 along the last axis (40 -> 5 blocks): amax [12, 5, 1] on the view.
  const std::string cfg = R"({"num_bits": 4, "block_sizes": {"-1": 8}})";
  for (const at::Device dev : devices()) {
    at::manual_seed(9);
    const at::Tensor x = at::randn({12, 40}, at::TensorOptions().device(dev)).requires_grad_(true);
    const at::Tensor g = at::randn_like(x);
    const at::Tensor view = x.detach().reshape({12, 5, 8});
    at::Tensor pre = learnable_amax(view, {2});
    at::Tensor post = (pre.detach() * 1.1).requires_grad_(true);
    const at::Tensor y = quantize_tensor(x, pre, c10::nullopt, cfg, c10::nullopt, post);
    (y * g).sum().backward();
    const auto [want_pre, want_post] =
        finite_difference(view, g.reshape({12, 5, 8}), y.detach().reshape({12, 5, 8}),
                          pre.detach(), post.detach(), Codes{-8.0, 7.0, 7.0});
    expect_close(pre.grad(), want_pre, mass(view, g.reshape({12, 5, 8}), pre));
    expect_close(post.grad(), want_post, mass(view, g.reshape({12, 5, 8}), post));
    // the gradient to x is the clipped straight-through estimator scaled by post / pre
    const at::Tensor inside = view.abs() <= pre.detach();
    const at::Tensor want_x = at::where(inside, g.reshape({12, 5, 8}) * (post / pre).detach(),
                                        at::zeros_like(view));
    ASSERT_TRUE(x.grad().defined());
    EXPECT_TRUE(at::allclose(x.grad(), want_x.reshape({12, 40})));
  }
}

TEST(LsqGradient, FrozenAmaxGetsNoGradientAndSameOutput) {
  at::manual_seed(4);
  const at::Tensor x = at::randn({8, 16}).requires_grad_(true);
  const at::Tensor amax = x.detach().abs().amax({1}, true);
  const at::Tensor learn = amax.clone().requires_grad_(true);
  const at::Tensor y_frozen = fake_quant_int(x, amax, 8);
  const at::Tensor y_learn = fake_quant_int(x, learn, 8);
  EXPECT_TRUE(at::equal(y_frozen, y_learn));
  y_frozen.sum().backward();
  EXPECT_FALSE(amax.grad().defined());
}

TEST(LsqGradient, PostAmaxNeedsAStaticSymmetricFormat) {
  const at::Tensor x = at::randn({4, 32});
  const at::Tensor a = at::ones({});
  EXPECT_THROW(quantize_tensor(x, a, c10::nullopt,
                               R"({"num_bits": [2, 1], "block_sizes": {"-1": 16, "type": )"
                               R"("dynamic", "scale_bits": [4, 3]}})",
                               c10::nullopt, a),
               c10::NotImplementedError);
  EXPECT_THROW(quantize_tensor(x, at::ones({4, 1}), c10::nullopt, R"({"num_bits": 8, "axis": 0})",
                               c10::nullopt, at::ones({4, 2})),
               c10::ValueError);
}

TEST(LsqGradient, BlockFormatsRefuseAnAmaxThatRequiresGrad) {
  at::manual_seed(6);
  const at::Tensor x = at::randn({4, 32});
  const at::Tensor block = x.abs().reshape({4, 2, 16}).amax({2}).requires_grad_(true);
  EXPECT_THROW(fake_quant_nvfp4(x, at::full({}, 3.0).requires_grad_(true)),
               c10::NotImplementedError);
  EXPECT_THROW(fake_quant_nvfp4(x, at::full({}, 3.0), 16, block), c10::NotImplementedError);
  EXPECT_THROW(fake_quant_mx(x, 2, 1, 16, block), c10::NotImplementedError);
  EXPECT_THROW(fake_quant_nf4(x, 16, 0, block), c10::NotImplementedError);
  // without gradients (inference, or a frozen copy) the same amax quantizes as before
  const at::Tensor frozen = fake_quant_nvfp4(x, at::full({}, 3.0), 16, block.detach());
  at::NoGradGuard no_grad;
  EXPECT_TRUE(at::equal(fake_quant_nvfp4(x, at::full({}, 3.0), 16, block), frozen));
}

}  // namespace
}  // namespace mopt
