// The distillation losses through the dispatcher from C++: against a float64 loop over tokens
// written here (softmax by hand, no ATen softmax), every reduction, the teacher without gradient,
// the student gradient against a central finite difference, and the error messages.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "mopt/algorithms/distill.h"

namespace mopt {
namespace {

using distill::hidden_state_distillation_loss;
using distill::logits_distillation_loss;

// Per-token KL(softmax(t / T) || softmax(s / T)) * T^2 in float64, one row of [rows, vocab] at
// a time.
std::vector<double> reference_kl(const at::Tensor& s, const at::Tensor& t, double temperature) {
  const at::Tensor s2 = s.to(at::kDouble).reshape({-1, s.size(-1)}).contiguous();
  const at::Tensor t2 = t.to(at::kDouble).reshape({-1, t.size(-1)}).contiguous();
  const int64_t rows = s2.size(0), vocab = s2.size(1);
  const double* ps = s2.data_ptr<double>();
  const double* pt = t2.data_ptr<double>();
  std::vector<double> out(rows);
  for (int64_t r = 0; r < rows; ++r) {
    double ms = -INFINITY, mt = -INFINITY;
    for (int64_t v = 0; v < vocab; ++v) {
      ms = std::max(ms, ps[r * vocab + v] / temperature);
      mt = std::max(mt, pt[r * vocab + v] / temperature);
    }
    double zs = 0, zt = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      zs += std::exp(ps[r * vocab + v] / temperature - ms);
      zt += std::exp(pt[r * vocab + v] / temperature - mt);
    }
    double kl = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      const double log_qs = ps[r * vocab + v] / temperature - ms - std::log(zs);
      const double log_qt = pt[r * vocab + v] / temperature - mt - std::log(zt);
      kl += std::exp(log_qt) * (log_qt - log_qs);
    }
    out[r] = kl * temperature * temperature;
  }
  return out;
}

template <typename E, typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what_without_backtrace();
  }
  ADD_FAILURE() << "no exception of the expected type";
  return "";
}

TEST(DistillOps, LogitsLossMatchesFloat64Reference) {
  at::manual_seed(0);
  for (const double temperature : {1.0, 2.0, 0.5}) {
    SCOPED_TRACE(testing::Message() << "T=" << temperature);
    const at::Tensor s = at::randn({3, 5, 17}) * 3;
    const at::Tensor t = s + at::randn({3, 5, 17});
    const std::vector<double> ref = reference_kl(s, t, temperature);
    double sum = 0;
    for (double v : ref) sum += v;
    const at::Tensor none = logits_distillation_loss(s, t, temperature, "none");
    ASSERT_EQ(none.sizes(), (at::IntArrayRef{3, 5}));
    const at::Tensor flat = none.reshape({-1}).to(at::kDouble);
    for (int64_t i = 0; i < 15; ++i) {
      EXPECT_NEAR(flat[i].item<double>(), ref[i], 1e-5 * (1 + ref[i])) << i;
    }
    const double tol = 1e-5 * (1 + sum);
    EXPECT_NEAR(logits_distillation_loss(s, t, temperature, "sum").item<double>(), sum, tol);
    EXPECT_NEAR(logits_distillation_loss(s, t, temperature, "token_mean").item<double>(),
                sum / 15, tol);
    EXPECT_NEAR(logits_distillation_loss(s, t, temperature, "batchmean").item<double>(), sum / 3,
                tol);
    EXPECT_NEAR(logits_distillation_loss(s, t, temperature, "mean").item<double>(),
                sum / (15 * 17), tol);
    // float64 in, float64 out, to float64 rounding.
    const at::Tensor d = logits_distillation_loss(s.to(at::kDouble), t.to(at::kDouble),
                                                  temperature, "sum");
    EXPECT_EQ(d.scalar_type(), at::kDouble);
    EXPECT_NEAR(d.item<double>(), sum, 1e-10 * (1 + sum));
  }
}

TEST(DistillOps, EqualLogitsGiveZeroAndHalfIsWidened) {
  at::manual_seed(1);
  const at::Tensor s = at::randn({4, 33}) * 5;
  EXPECT_NEAR(logits_distillation_loss(s, s.clone(), 1.0, "sum").item<double>(), 0.0, 1e-6);
  const at::Tensor h = s.to(at::kHalf), th = (s + at::randn({4, 33})).to(at::kHalf);
  const at::Tensor out = logits_distillation_loss(h, th, 1.0, "sum");
  EXPECT_EQ(out.scalar_type(), at::kFloat);
  double ref = 0;
  for (double v : reference_kl(h, th, 1.0)) ref += v;
  EXPECT_NEAR(out.item<double>(), ref, 1e-5 * (1 + ref));
}

TEST(DistillOps, StudentGradientMatchesFiniteDifferenceTeacherGetsNone) {
  at::manual_seed(2);
  const at::Tensor s = (at::randn({2, 3, 7}, at::kDouble) * 2).requires_grad_(true);
  const at::Tensor t = (s.detach() + at::randn({2, 3, 7}, at::kDouble)).requires_grad_(true);
  const double temperature = 1.5;
  logits_distillation_loss(s, t, temperature, "token_mean").backward();
  EXPECT_FALSE(t.grad().defined());
  const double eps = 1e-6;
  const at::Tensor flat_s = s.detach().reshape({-1});
  for (int64_t i = 0; i < flat_s.numel(); ++i) {
    at::Tensor up = flat_s.clone(), down = flat_s.clone();
    up[i] += eps;
    down[i] -= eps;
    const double fd =
        (logits_distillation_loss(up.view_as(s), t.detach(), temperature, "token_mean")
             .item<double>() -
         logits_distillation_loss(down.view_as(s), t.detach(), temperature, "token_mean")
             .item<double>()) /
        (2 * eps);
    EXPECT_NEAR(s.grad().reshape({-1})[i].item<double>(), fd, 1e-7) << i;
  }
}

TEST(DistillOps, HiddenStateLossIsMeanSquaredError) {
  at::manual_seed(3);
  const at::Tensor s = at::randn({2, 4, 8}, at::kDouble).requires_grad_(true);
  const at::Tensor t = at::randn({2, 4, 8}, at::kDouble).requires_grad_(true);
  const at::Tensor sd = s.detach().contiguous(), td = t.detach().contiguous();
  double ref = 0;
  for (int64_t i = 0; i < 64; ++i) {
    const double diff = sd.data_ptr<double>()[i] - td.data_ptr<double>()[i];
    ref += diff * diff / 64;
  }
  const at::Tensor loss = hidden_state_distillation_loss(s, t);
  EXPECT_NEAR(loss.item<double>(), ref, 1e-12);
  loss.backward();
  EXPECT_FALSE(t.grad().defined());
  EXPECT_TRUE(at::allclose(s.grad(), (sd - td) * (2.0 / 64)));
}

TEST(DistillOps, BadInputsNameTheProblem) {
  const at::Tensor s = at::randn({2, 5});
  EXPECT_NE(error_of<c10::ValueError>([&] { logits_distillation_loss(s, at::randn({2, 6})); })
                .find("same shape"),
            std::string::npos);
  EXPECT_NE(error_of<c10::ValueError>([&] { logits_distillation_loss(s, s, 0.0); })
                .find("temperature must be finite and > 0, got 0"),
            std::string::npos);
  EXPECT_NE(error_of<c10::ValueError>([&] { logits_distillation_loss(s, s, 1.0, "avg"); })
                .find("got 'avg'"),
            std::string::npos);
  EXPECT_NE(error_of<c10::TypeError>([&] {
              logits_distillation_loss(at::ones({2, 5}, at::kLong), s);
            }).find("student needs floating values"),
            std::string::npos);
  EXPECT_NE(error_of<c10::ValueError>([&] {
              hidden_state_distillation_loss(s, at::randn({5, 2}));
            }).find("hidden_state_distillation_loss: student and teacher need the same shape"),
            std::string::npos);
}

}  // namespace
}  // namespace mopt
