// SmoothQuant (Xiao et al., 2023; SPEC §5): per-input-channel scales that move activation
// outliers of a linear layer into its weight before both are quantized to 8-bit integers. The
// scale is folded: the input quantizer multiplies by it (pre_quant_scale) and the weight columns
// are divided by it, so the float layer computes the same function. With {"alpha": "auto"} the
// exponent is searched per layer: the alpha whose smoothed layer, input and weight quantized with
// their own configs, has the least output error against the float layer on calibration tokens.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "mopt/algorithms/layer_solver.h"
#include "mopt/quant/config.h"
#include "mopt/quant/quantizer_core.h"

namespace mopt::algorithms {

/// s = clamp(weight_max^(1-alpha) / act_amax^alpha, 1e-4, 1e4) per input channel in fp32, with
/// s = 1 where act_amax <= 2^-31 (a channel that never fires). Both inputs are [in].
at::Tensor smoothquant_scale(const at::Tensor& act_amax, const at::Tensor& weight_max,
                             double alpha);

/// A linear layer with a per-input-channel pre_quant_scale p folded in: the input is multiplied
/// by p and the weight columns divided by it.
struct SmoothedLinear {
  at::Tensor pre_quant_scale;  // [in] fp32, the input quantizer's new pre_quant_scale
  at::Tensor weight;           // [out, in] W[:, j] / p_j in the weight's dtype
  at::Tensor input_amax;       // [] fp32, max_j act_amax_j * p_j: the per-tensor input amax
};

/// Folds `pre_quant_scale` (p > 0, [in]) into `weight` ([out, in]); act_amax [in] is the
/// per-channel max |x| of the inputs the layer saw. A `prior_pre_quant_scale` already applied to
/// those inputs (x holds x_raw * prior) is composed in: the returned scale is prior * p.
SmoothedLinear fold_pre_quant_scale(const at::Tensor& weight, const at::Tensor& pre_quant_scale,
                                    const at::Tensor& act_amax,
                                    const c10::optional<at::Tensor>& prior_pre_quant_scale = {});

/// Why SmoothQuant leaves the layer `name` alone (the warning to give), or nullopt when it can
/// smooth it: 8-bit integer input and weight quantizers, the input one static per tensor or
/// dynamic (per token: its scales follow the smoothed inputs). A null quantizer stands for a
/// multi-stage (Sequential) one.
std::optional<std::string> smoothquant_skip_reason(const std::string& name,
                                                   const QuantizerCore* input_quantizer,
                                                   const QuantizerCore* weight_quantizer);

/// Options of the per-layer alpha search ({"method": "smoothquant", "alpha": "auto"}).
struct SmoothQuantSearchOptions {
  double alpha_step = 0.1;            // alphas 0, step, 2 step, ..., 1 (awq_alpha_grid)
  int64_t max_tokens_per_batch = 64;  // tokens scored per batch: every max(1, T / this)-th one
};

/// SmoothQuant of one linear layer: streams its inputs (per-channel running max |x|, memory [in])
/// and computes the smoothing. `name` (the layer's name) appears in every error message.
///
/// Searching (the second constructor), a second pass scores every alpha of the grid on sampled
/// tokens x of each batch: the squared error, averaged over tokens and outputs, between
/// Q_in(x * s) Q_w(W / s)^T and x W^T, where Q_in is the input quantizer's config (static: the
/// per-tensor amax max_j act_amax_j * s_j the smoothing would set; dynamic: per call) and Q_w the
/// weight quantizer's config with the amax max calibration gives W / s. The first minimum of the
/// summed per-batch errors wins. Memory: the alphas' losses; nothing of a batch is kept.
class SmoothQuantLayer : public LayerSolver {
 public:
  /// weight: [out, in]; alpha in [0, 1] (1 moves all the difficulty to the weight).
  SmoothQuantLayer(at::Tensor weight, double alpha = 1.0, std::string name = "");
  /// With a per-layer alpha search; input_cfg / weight_cfg: the layer's quantizer configs.
  SmoothQuantLayer(at::Tensor weight, const QuantizerAttributeConfig& input_cfg,
                   const QuantizerAttributeConfig& weight_cfg, SmoothQuantSearchOptions options,
                   std::string name = "");

  /// Folds one batch of inputs [..., in] in (the input as the weight sees it).
  void collect(const at::Tensor& x);
  /// Search pass: adds every alpha's output error on this batch's sampled tokens. RuntimeError
  /// unless the layer searches and the first pass ended with data.
  void search(const at::Tensor& x);

  // LayerSolver: float inputs; pass 0 collects, pass 1 (searching only) scores the alphas. The
  // update folds the scale into the weight and the input quantizer (pre_quant_scale, per-tensor
  // amax) and recalibrates the weight.
  int num_passes() const override { return searches() ? 2 : 1; }
  SolverInput input_mode() const override { return SolverInput::kFloat; }
  void collect(int pass, const at::Tensor& x) override { pass == 0 ? collect(x) : search(x); }
  void finish_pass(int pass) override;
  int64_t num_batches(int pass) const override {
    return pass == 0 ? num_batches_ : num_search_steps_;
  }
  LayerUpdate solve(const LayerState& state) override;
  /// Number of non-empty batches collected.
  int64_t num_batches() const { return num_batches_; }
  /// Per-channel max |x| so far ([in] fp32); undefined before the first batch.
  const at::Tensor& act_amax() const { return act_amax_; }
  /// max over output rows of |W| per input channel ([in] fp32).
  at::Tensor weight_max() const;
  /// Per-channel scales s (smoothquant_scale).
  at::Tensor scale() const;
  /// The smoothing to apply: pre_quant_scale = prior * s, W[:, j] / s_j, input amax. RuntimeError
  /// naming the layer when no batch was collected or the statistics hold NaN/Inf.
  SmoothedLinear compute(const c10::optional<at::Tensor>& prior_pre_quant_scale = {}) const;

  /// The alpha the smoothing uses: the given one, or the searched one (RuntimeError naming the
  /// layer before the search pass saw data).
  double alpha() const;
  bool searches() const { return !alphas_.empty(); }
  /// Searching: the alphas tried and their summed losses ([n_alphas] fp64).
  const std::vector<double>& alphas() const { return alphas_; }
  const at::Tensor& losses() const { return losses_; }
  int64_t num_search_steps() const { return num_search_steps_; }
  int64_t num_search_tokens() const { return num_search_tokens_; }
  const std::string& name() const override { return name_; }

 private:
  void check_ready() const;

  at::Tensor weight_;
  double alpha_;
  std::string name_;
  at::Tensor act_amax_;
  int64_t num_batches_ = 0;
  // search
  std::vector<double> alphas_;
  std::string input_cfg_json_, weight_cfg_json_;
  bool input_static_ = true;
  int64_t max_tokens_per_batch_ = 64;
  at::Tensor losses_;
  int64_t num_search_steps_ = 0;
  int64_t num_search_tokens_ = 0;
};

}  // namespace mopt::algorithms
