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

namespace mopt {

/// Streams calibration batches into per-candidate losses and picks the best amax multiplier.
class MseCalibrator {
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
  void collect(const at::Tensor& x);
  /// initial amax * best multiplier per channel (the first candidate wins ties); nullopt before
  /// the first collect.
  c10::optional<at::Tensor> compute_amax() const;
  /// Forgets the accumulated losses (the initial amax stays).
  void reset();

  const at::Tensor& initial_amax() const { return initial_amax_; }
  const std::optional<std::vector<int64_t>>& axis() const { return axis_; }
  int64_t num_steps() const { return num_steps_; }
  /// The candidate multipliers (fp32), undefined before the first collect.
  const at::Tensor& candidates() const { return candidates_; }
  /// Accumulated loss per candidate (fp64, kept-axes shape), empty before the first collect.
  const std::vector<at::Tensor>& losses() const { return losses_; }

 private:
  at::Tensor initial_amax_;
  std::optional<std::vector<int64_t>> axis_;
  int64_t num_steps_;
  double start_;
  double stop_;
  QuantFunc quant_func_;
  ErrorFunc error_func_;
  at::Tensor candidates_;
  std::vector<at::Tensor> losses_;
};

/// The quant_func of a TensorQuantizer configured by `cfg_json` (QuantizerAttributeConfig JSON),
/// applied to its calibration view: integer or minifloat fake quantization with the given amax.
/// NotImplementedError for block formats with quantized scales (NVFP4, MX, NF4).
MseCalibrator::QuantFunc quantizer_view_quant_func(const std::string& cfg_json);

}  // namespace mopt
