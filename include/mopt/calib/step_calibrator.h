// Per-step amax calibration for models a sampler calls once per step (diffusion denoisers):
// each call's amax is folded into the record of its step (call i is step i mod num_steps, so a
// forward loop of several sampling runs revisits every step), and the final amax is a
// percentile of the per-step amaxes. The activations of early, noisy steps are larger than the
// late ones; a max over all steps lets the outliers of a few steps set the scale of all (the
// recipe of ModelOpt's diffusers example: percentile 0 of the per-step mean, "min-mean").
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mopt/calib/calibrator.h"

namespace mopt {

/// How the calls of one step combine: the max or the mean of their amaxes.
enum class StepCollect { kMax, kMean };

/// "max" | "mean"; ValueError for any other name.
StepCollect parse_step_collect(const std::string& name);
std::string step_collect_name(StepCollect c);

class StepAmaxCalibrator : public Calibrator {
 public:
  /// num_steps >= 1: the model calls of one sampling run; percentile in [0, 100] over the steps
  /// (0: the smallest per-step amax, 100: the largest, i.e. max calibration for kMax).
  StepAmaxCalibrator(int64_t num_bits, std::optional<std::vector<int64_t>> axis,
                     bool is_unsigned, int64_t num_steps, double percentile,
                     StepCollect collect);

  /// Folds one call's batch into its step. RuntimeError("amax shape changed!") when its reduced
  /// shape differs from earlier calls.
  void collect(const at::Tensor& x) override;
  /// The `percentile` of the per-step amaxes (linear interpolation between steps; steps never
  /// reached are left out); nullopt before the first collect. NaN in any call shows here.
  c10::optional<at::Tensor> compute_amax(const AmaxRequest& request = {}) const override;
  void reset() override;
  bool has_data() const override { return calls_ > 0; }
  std::shared_ptr<Calibrator> clone() const override;
  std::string class_name() const override { return "StepAmaxCalibrator"; }

  int64_t num_bits() const { return num_bits_; }
  bool is_unsigned() const { return is_unsigned_; }
  int64_t num_steps() const { return num_steps_; }
  double percentile() const { return percentile_; }
  StepCollect collect_method() const { return collect_; }
  /// Calls collected so far.
  int64_t calls() const { return calls_; }
  /// Each step's combined amax (undefined for steps not reached yet).
  std::vector<at::Tensor> step_amaxes() const;

 private:
  int64_t num_bits_;
  bool is_unsigned_;
  int64_t num_steps_;
  double percentile_;
  StepCollect collect_;
  int64_t calls_ = 0;
  std::vector<at::Tensor> step_amax_;  // per step: max or sum of its calls' amaxes
  std::vector<int64_t> step_calls_;
};

}  // namespace mopt
