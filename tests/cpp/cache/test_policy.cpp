// The cache policy: schedule and adaptive decisions, the Taylor forecast against exact
// polynomials, what a reuse returns, NaN features and the checks on configs and call order.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

#include "mopt/cache/policy.h"

namespace mopt::cache {
namespace {

// Runs `calls` calls of a block whose output is f(step); returns which calls recomputed.
template <typename F>
std::vector<bool> run(CachePolicy& p, int calls, F f,
                      const std::vector<at::Tensor>& probes = {}) {
  std::vector<bool> recomputed;
  for (int s = 0; s < calls; ++s) {
    c10::optional<at::Tensor> probe;
    if (!probes.empty()) probe = probes[s];
    const bool r = p.decide(probe);
    if (r) {
      p.store({f(s)});
    } else {
      p.reuse();
    }
    recomputed.push_back(r);
  }
  return recomputed;
}

at::Tensor constant(double v) { return torch::full({2, 3}, v); }

TEST(CachePolicy, IntervalScheduleRecomputesEveryKthCall) {
  PolicyConfig c;
  c.interval = 3;
  CachePolicy p(c);
  const auto r = run(p, 7, [](int s) { return constant(s); });
  EXPECT_EQ(r, (std::vector<bool>{true, false, false, true, false, false, true}));
  EXPECT_EQ(p.recomputes(), 3);
  EXPECT_EQ(p.reuses(), 4);
  EXPECT_EQ(p.step(), 7);
  p.reset();
  EXPECT_EQ(p.step(), 0);
  EXPECT_TRUE(p.decide());  // nothing cached after a reset
}

TEST(CachePolicy, ExplicitStepsWarmupCooldownAndMaxReuse) {
  PolicyConfig c = policy_config_from_json(
      R"({"recompute_steps": [0, 4], "warmup": 2, "num_steps": 10, "cooldown": 2,
          "max_reuse": 3})");
  CachePolicy p(c);
  const auto r = run(p, 10, [](int s) { return constant(s); });
  // 0, 1 warmup; 4 listed; 8, 9 cooldown
  EXPECT_EQ(r, (std::vector<bool>{true, true, false, false, true, false, false, false, true, true}));
  CachePolicy q(policy_config_from_json(R"({"interval": 100, "max_reuse": 2})"));
  EXPECT_EQ(run(q, 7, [](int s) { return constant(s); }),
            (std::vector<bool>{true, false, false, true, false, false, true}));
}

TEST(CachePolicy, FrontEndAnswersReplaceTheSchedule) {
  CachePolicy p;  // interval 2 by default
  std::vector<bool> r;
  for (int s = 0; s < 5; ++s) {
    const bool x = p.decide(c10::nullopt, /*reuse_requested=*/s % 2 == 0);
    x ? p.store({constant(s)}) : static_cast<void>(p.reuse());
    r.push_back(x);
  }
  // call 0 recomputes anyway (nothing cached); then the answers: odd calls recompute
  EXPECT_EQ(r, (std::vector<bool>{true, true, false, true, false}));
}

TEST(CachePolicy, ReuseReturnsCopiesOfTheLastFeatures) {
  CachePolicy p;
  ASSERT_TRUE(p.decide());
  const at::Tensor out = constant(1.5);
  p.store({out});
  ASSERT_FALSE(p.decide());
  const auto reused = p.reuse();
  ASSERT_EQ(reused.size(), 1u);
  EXPECT_TRUE(torch::equal(reused[0], out));
  reused[0].add_(1);  // the caller may modify what it gets
  ASSERT_TRUE(p.decide());
  p.store({constant(2)});
  EXPECT_TRUE(torch::equal(out, constant(1.5)));
}

TEST(CachePolicy, TaylorForecastIsExactOnPolynomialsOfItsOrder) {
  // f(s) = 1 + 2 s + 0.5 s^2 sampled at uneven calls 0, 3, 7: order 2 reproduces it anywhere
  auto f = [](double s) { return constant(1 + 2 * s + 0.5 * s * s); };
  const at::Tensor q = taylor_forecast({f(0), f(3), f(7)}, {0, 3, 7}, 11);
  EXPECT_TRUE(torch::allclose(q, f(11), 1e-5, 1e-5)) << q;
  // order 1 on a line
  auto g = [](double s) { return constant(4 - 0.25 * s); };
  EXPECT_TRUE(torch::allclose(taylor_forecast({g(2), g(5)}, {2, 5}, 9), g(9)));
  // a half-precision feature is extrapolated in float32 and returned in its own dtype
  const at::Tensor h = taylor_forecast({g(2).to(at::kHalf), g(5).to(at::kHalf)}, {2, 5}, 9);
  EXPECT_EQ(h.scalar_type(), at::kHalf);
  EXPECT_THROW(taylor_forecast({g(2), g(5)}, {5, 2}, 9), c10::ValueError);
  EXPECT_THROW(taylor_forecast({}, {}, 1), c10::ValueError);
}

TEST(CachePolicy, ForecastingPolicyExtrapolatesFromItsRecomputes) {
  PolicyConfig c;
  c.interval = 4;
  c.order = 2;
  CachePolicy p(c);
  auto f = [](int s) { return constant(0.1 * s * s - s + 3); };
  std::vector<at::Tensor> got;
  for (int s = 0; s < 13; ++s) {
    if (p.decide()) {
      p.store({f(s)});
      got.push_back(f(s));
    } else {
      got.push_back(p.reuse()[0]);
    }
  }
  // from call 9 on, three points (0, 4, 8) are known: the quadratic is exact
  for (int s = 9; s < 12; ++s) EXPECT_TRUE(torch::allclose(got[s], f(s), 1e-4, 1e-4)) << s;
  // call 1..3: one point, a plain copy; 5..7: two points, a line through them
  EXPECT_TRUE(torch::equal(got[2], f(0)));
  const at::Tensor line = f(4) + (f(4) - f(0)) / 4.0 * 2.0;
  EXPECT_TRUE(torch::allclose(got[6], line));
}

TEST(CachePolicy, AdaptiveRecomputesWhenTheProbeHasChangedEnough) {
  PolicyConfig c;
  c.decision = Decision::kAdaptive;
  c.threshold = 0.25;
  CachePolicy p(c);
  // the probe grows by 0.1 per call: relative changes 0.1, 0.091, 0.083 (recompute at 0.274),
  // then 0.077, 0.071, 0.067 (0.215: reuse), 0.0625 (recompute)
  std::vector<at::Tensor> probes;
  for (int s = 0; s < 8; ++s) probes.push_back(torch::full({4}, 1.0 + 0.1 * s));
  const auto r = run(p, 8, [](int s) { return constant(s); }, probes);
  EXPECT_EQ(r, (std::vector<bool>{true, false, false, true, false, false, false, true}));
  const auto& h = p.history();
  ASSERT_EQ(h.size(), 8u);
  EXPECT_DOUBLE_EQ(h[0].change, 0.0);
  EXPECT_NEAR(h[1].change, 0.1, 1e-6);  // float32 probes
  EXPECT_NEAR(h[2].accumulated, 0.1 + 0.1 / 1.1, 1e-6);
  EXPECT_DOUBLE_EQ(h[3].accumulated, 0.0);  // reset by the recompute
  // a probe that turns NaN forces a recompute
  p.reset();
  std::vector<at::Tensor> bad = {torch::ones({4}), torch::ones({4}), torch::full({4}, NAN)};
  EXPECT_EQ(run(p, 3, [](int s) { return constant(s); }, bad),
            (std::vector<bool>{true, false, true}));
}

TEST(CachePolicy, NonFiniteFeaturesAreNotReused) {
  CachePolicy p(policy_config_from_json(R"({"interval": 3})"));
  ASSERT_TRUE(p.decide());
  p.store({torch::full({2}, NAN)});
  EXPECT_TRUE(p.decide());  // interval 3 would reuse here: nothing usable is cached
  p.store({torch::ones({2})});
  EXPECT_FALSE(p.decide());
  EXPECT_TRUE(torch::equal(p.reuse()[0], torch::ones({2})));
}

TEST(CachePolicy, MoreCallsThanCalibratedRecomputeAndWarn) {
  PolicyConfig c;
  c.interval = 4;
  c.num_steps = 3;
  CachePolicy p(c);
  const auto r = run(p, 6, [](int s) { return constant(s); });
  EXPECT_EQ(r, (std::vector<bool>{true, false, false, true, true, true}));
}

TEST(CachePolicy, ConfigAndCallOrderErrors) {
  EXPECT_THROW(policy_config_from_json(R"({"intervall": 2})"), c10::ValueError);
  EXPECT_THROW(policy_config_from_json(R"({"interval": 0})"), c10::ValueError);
  EXPECT_THROW(policy_config_from_json(R"({"order": 3})"), c10::ValueError);
  EXPECT_THROW(policy_config_from_json(R"({"decision": "sometimes"})"), c10::ValueError);
  EXPECT_THROW(policy_config_from_json(R"({"recompute_steps": [3, 2]})"), c10::ValueError);
  EXPECT_THROW(policy_config_from_json(R"({"recompute_steps": [3], "num_steps": 3})"),
               c10::ValueError);
  EXPECT_THROW(policy_config_from_json(R"({"threshold": -1})"), c10::ValueError);
  EXPECT_THROW(policy_config_from_json("[1]"), c10::ValueError);
  const PolicyConfig c = policy_config_from_json(R"({"decision": "adaptive", "order": 1})");
  EXPECT_EQ(policy_config_from_json(c.to_json()).to_json(), c.to_json());
  CachePolicy p;
  EXPECT_THROW(p.store({constant(1)}), c10::Error);  // no decide() before
  ASSERT_TRUE(p.decide());
  EXPECT_THROW(p.decide(), c10::Error);  // twice
  EXPECT_THROW(p.reuse(), c10::Error);   // decide() chose to recompute
  EXPECT_THROW(relative_l1_change(torch::ones({2}), torch::ones({3})), c10::ValueError);
}

// x0 from eps and back: the DDPM forward process x = sqrt(ab) x0 + sqrt(1 - ab) eps inverted, in
// float64 against the formula, both directions, and half precision widened.
TEST(CacheSpaces, EpsilonAndSampleAreInverseReparameterizations) {
  const double ab = 0.37;
  const at::Tensor x0 = torch::randn({2, 1, 5, 5}, torch::kDouble);
  const at::Tensor eps = torch::randn({2, 1, 5, 5}, torch::kDouble);
  const at::Tensor x = x0 * std::sqrt(ab) + eps * std::sqrt(1.0 - ab);
  EXPECT_TRUE(torch::allclose(epsilon_to_sample(eps, x, ab), x0, 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(sample_to_epsilon(x0, x, ab), eps, 1e-12, 1e-12));
  const at::Tensor h = epsilon_to_sample(eps.to(at::kHalf), x.to(at::kHalf), ab);
  EXPECT_EQ(h.scalar_type(), at::kHalf);
  EXPECT_TRUE(torch::allclose(h.to(at::kDouble), x0, 2e-2, 2e-2));
}

TEST(CacheSpaces, BadNoiseLevelOrShapeIsAValueError) {
  const at::Tensor a = torch::ones({3});
  for (double ab : {0.0, 1.0, -0.5, std::nan("")}) {
    EXPECT_THROW(epsilon_to_sample(a, a, ab), c10::ValueError) << ab;
    EXPECT_THROW(sample_to_epsilon(a, a, ab), c10::ValueError) << ab;
  }
  EXPECT_THROW(epsilon_to_sample(a, torch::ones({4}), 0.5), c10::ValueError);
  EXPECT_THROW(sample_to_epsilon(torch::ones({3}, torch::kLong), a, 0.5), c10::ValueError);
}

TEST(CacheSchedule, ProfileMeasuresDifferencesOfTheFeatures) {
  ChangeProfile p;
  for (int s = 0; s < 6; ++s) p.add({torch::full({3}, 10.0 + 2.0 * s)});  // a line
  ASSERT_EQ(p.size(), 6);
  EXPECT_DOUBLE_EQ(p.differences(1)[0], 0.0);  // not defined at the first call
  EXPECT_NEAR(p.differences(1)[3], 2.0 / 16.0, 1e-12);
  for (int s = 2; s < 6; ++s) EXPECT_NEAR(p.differences(2)[s], 0.0, 1e-12);
  ChangeProfile q;
  for (int s = 0; s < 6; ++s) q.add({torch::full({3}, 1.0 * s * s + 1)});  // a parabola
  EXPECT_NEAR(q.differences(2)[4], 2.0 / 17.0, 1e-12);
  EXPECT_NEAR(q.differences(3)[5], 0.0, 1e-12);
  p.merge(q);
  EXPECT_NEAR(p.differences(2)[4], 2.0 / 17.0, 1e-12);
  ChangeProfile shorter;
  shorter.add({torch::ones({3})});
  EXPECT_THROW(p.merge(shorter), c10::ValueError);
  EXPECT_THROW(p.add({torch::ones({4})}), c10::ValueError);  // another shape
}

TEST(CacheSchedule, RecomputesFollowTheErrorDensity) {
  // second differences grow 100x over the second half of the run: an order-1 schedule puts
  // its recomputes there (density ~ sqrt of the second difference)
  ChangeProfile p;
  for (int s = 0; s < 100; ++s) {
    const double t = s;
    p.add({torch::full({2}, 1000.0 + (s < 50 ? 0.01 * t * t : 25.0 + t * t))});
  }
  const auto steps = schedule_from_profile(p, 10, /*order=*/1, /*warmup=*/2);
  ASSERT_EQ(steps.size(), 10u);
  EXPECT_EQ(steps[0], 0);
  EXPECT_EQ(steps[1], 1);
  for (size_t i = 1; i < steps.size(); ++i) EXPECT_GT(steps[i], steps[i - 1]);
  int late = 0;
  for (int64_t s : steps) late += s >= 50;
  EXPECT_GE(late, 6);
  // a constant relative change spreads the recomputes evenly; the count is exact, clamped to
  // the run
  ChangeProfile flat;
  for (int s = 0; s < 20; ++s) flat.add({torch::full({2}, std::exp(0.1 * s))});
  const auto even = schedule_from_profile(flat, 5, 0);
  EXPECT_EQ(even, (std::vector<int64_t>{0, 4, 8, 12, 16}));
  EXPECT_EQ(schedule_from_profile(flat, 50, 2).size(), 20u);
  EXPECT_EQ(schedule_from_profile(flat, 0, 2, 3), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_THROW(schedule_from_profile(ChangeProfile(), 3, 1), c10::ValueError);
  EXPECT_THROW(schedule_from_profile(flat, 3, 4), c10::ValueError);
}

}  // namespace
}  // namespace mopt::cache
