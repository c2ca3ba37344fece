// StepAmaxCalibrator (per-step amax, a percentile over the steps) against values computed by
// hand, per tensor and per channel, and the `step_percentile` algorithm's option checks.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "mopt/algorithms/calibration.h"
#include "mopt/calib/step_calibrator.h"

namespace mopt {
namespace {

at::Tensor full(double v) { return torch::full({2, 3}, v); }

TEST(StepAmaxCalibrator, CallsFoldIntoTheirStepAndThePercentileRunsOverSteps) {
  // Two runs of 3 steps: step amaxes by max {4, 5, 2}; by mean {2.5, 3, 1.5}.
  const std::vector<double> run1 = {1, 5, 2}, run2 = {4, 1, 1};
  for (auto collect : {StepCollect::kMax, StepCollect::kMean}) {
    for (double p : {0.0, 50.0, 100.0, 25.0}) {
      StepAmaxCalibrator c(8, std::nullopt, false, 3, p, collect);
      for (double v : run1) c.collect(full(-v));  // |x|
      for (double v : run2) c.collect(full(v));
      std::vector<double> steps = collect == StepCollect::kMax ? std::vector<double>{4, 5, 2}
                                                               : std::vector<double>{2.5, 3, 1.5};
      std::sort(steps.begin(), steps.end());
      // linear interpolation between the sorted per-step values at rank p/100 * (n - 1)
      const double rank = p / 100.0 * 2.0;
      const auto lo = static_cast<size_t>(std::floor(rank));
      const double expected = steps[lo] + (rank - lo) * (steps[std::min<size_t>(lo + 1, 2)] -
                                                         steps[lo]);
      const auto amax = c.compute_amax();
      ASSERT_TRUE(amax.has_value());
      EXPECT_NEAR(amax->item<double>(), expected, 1e-6) << p;
      EXPECT_EQ(c.calls(), 6);
    }
  }
}

TEST(StepAmaxCalibrator, PerChannelStepsNotReachedAndReset) {
  StepAmaxCalibrator c(8, std::vector<int64_t>{0}, false, 4, 100.0, StepCollect::kMax);
  EXPECT_FALSE(c.compute_amax().has_value());
  c.collect(torch::tensor({{1.0, -2.0}, {3.0, 0.5}}));  // step 0: channels 2, 3
  c.collect(torch::tensor({{0.5, 0.5}, {-7.0, 1.0}}));  // step 1: channels 0.5, 7
  const auto amax = c.compute_amax();                   // steps 2, 3 never reached
  ASSERT_TRUE(amax.has_value());
  EXPECT_TRUE(torch::allclose(amax->flatten(), torch::tensor({2.0f, 7.0f})));
  EXPECT_FALSE(c.step_amaxes()[2].defined());
  EXPECT_THROW(c.collect(torch::ones({3, 2})), c10::Error);  // amax shape changed
  auto copy = c.clone();
  c.reset();
  EXPECT_FALSE(c.has_data());
  EXPECT_TRUE(copy->has_data());
  c.collect(torch::full({2, 2}, std::nan("")));
  EXPECT_TRUE(std::isnan(c.compute_amax()->flatten()[0].item<double>()));
}

TEST(StepAmaxCalibrator, BadOptionsAreValueErrors) {
  EXPECT_THROW(StepAmaxCalibrator(8, std::nullopt, false, 0, 50.0, StepCollect::kMax),
               c10::ValueError);
  EXPECT_THROW(StepAmaxCalibrator(8, std::nullopt, false, 5, 100.5, StepCollect::kMax),
               c10::ValueError);
  EXPECT_THROW(parse_step_collect("median"), c10::ValueError);
  using algorithms::parse_calibration_steps;
  EXPECT_THROW(parse_calibration_steps(R"({"method": "step_percentile"})"), c10::ValueError);
  EXPECT_THROW(parse_calibration_steps(R"({"method": "step_percentile", "num_steps": 0})"),
               c10::ValueError);
  EXPECT_THROW(parse_calibration_steps(
                   R"({"method": "step_percentile", "num_steps": 4, "percentile": -1})"),
               c10::ValueError);
  EXPECT_THROW(parse_calibration_steps(
                   R"({"method": "step_percentile", "num_steps": 4, "collect": 1})"),
               c10::TypeError);
  EXPECT_THROW(parse_calibration_steps(
                   R"({"method": "step_percentile", "num_steps": 4, "steps": 4})"),
               c10::TypeError);
  const auto steps = parse_calibration_steps(
      R"({"method": "step_percentile", "num_steps": 20, "collect": "mean", "percentile": 0})");
  ASSERT_EQ(steps.size(), 1u);
  const auto& o = std::get<algorithms::StepPercentileCalibration>(steps[0].options);
  EXPECT_EQ(o.num_steps, 20);
  EXPECT_EQ(o.collect, StepCollect::kMean);
  EXPECT_EQ(o.percentile, 0.0);
}

}  // namespace
}  // namespace mopt
