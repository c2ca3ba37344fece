// MSE calibration (SPEC §5 `mse`): starting from an initial amax (max calibration), try the
// multipliers linspace(start, stop, num_steps) of it and keep, per channel, the one whose
// quantized output has the least squared error accumulated over the calibration batches.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "mopt/calib/calibrator.h"
#include "mopt/quant/config.h"

namespace mopt {

/// Streams calibration batches into per-candidate losses and picks the best amax multiplier.
class MseCalibrator : public Calibrator {
 public:
  /// quant_func(x, amax) -> fake-quantized x, with amax in the shape of the initial amax.
  using QuantFunc = std::function<at::Tensor(const at::Tensor&, const at::Tensor&)>;
  /// error_func(x, xq) -> elementwise error (default (x - xq)^2), summed over the reduced axes.
  using ErrorFunc = std::function<at::Tensor(const at::Tensor&, const at::Tensor&)>;

  /// amax: the initial amax (keepdims over the collected batches); axis: the kept axes (nullopt =
  /// per tensor). ValueError for num_steps < 1, non-positive or unordered multipliers, or an
  /// amax that is not finite and non-negative.
  MseCalibrator(at::Tensor amax, std::optional<std::vector<int64_t>> axis = {},
                int64_t num_steps = 10, double start_multiplier = 0.25,
                double stop_multiplier = 4.0, QuantFunc quant_func = nullptr,
                ErrorFunc error_func = nullptr);

  /// Adds the loss of every candidate on one batch. RuntimeError without a quant_func, ValueError
  /// when the batch's kept axes do not match the initial amax.
  void collect(const at::Tensor& x) override;
  /// initial amax * best multiplier per channel (the first candidate wins ties); nullopt before
  /// the first collect.
  c10::optional<at::Tensor> compute_amax(const AmaxRequest& request = {}) const override;
  /// Forgets the accumulated losses (the initial amax stays).
  void reset() override;
  bool has_data() const override { return !losses_.empty() && losses_[0].defined(); }
  std::shared_ptr<Calibrator> clone() const override;
  std::string class_name() const override { return "MseCalibrator"; }
  /// Sums the ranks' losses (every rank starts from the same initial amax).
  void all_reduce(const ProcessGroup& group) override;

  const at::Tensor& initial_amax() const { return initial_amax_; }
  int64_t num_steps() const { return num_steps_; }
  /// The candidate multipliers (fp32), undefined before the first collect.
  const at::Tensor& candidates() const { return candidates_; }
  /// Accumulated loss per candidate (fp64, kept-axes shape), empty before the first collect.
  const std::vector<at::Tensor>& losses() const { return losses_; }

 private:
  at::Tensor initial_amax_;
  int64_t num_steps_;
  double start_;
  double stop_;
  QuantFunc quant_func_;
  ErrorFunc error_func_;
  at::Tensor candidates_;
  std::vector<at::Tensor> losses_;
};

/// The quant_func of a TensorQuantizer configured by `cfg`, applied to its calibration view:
/// integer or minifloat fake quantization with the given amax. NotImplementedError for formats
/// the format table marks as not searchable (quantized block scales: NVFP4, MX, NF4).
MseCalibrator::QuantFunc quantizer_view_quant_func(const QuantizerAttributeConfig& cfg);

}  // namespace mopt
