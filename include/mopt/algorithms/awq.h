// AWQ (Lin et al., 2024; SPEC §5) for linear layers, for any weight format the quantizer config
// describes (INT4 blocks, NVFP4, the first stage of W4A8, ...): every quantization goes through
// mopt::quantize_tensor with the weight quantizer's own config.
//
// AWQ lite searches one exponent alpha per layer: with act = mean |x| and w = mean over rows of
// |W| / (max |W| of its block), s = clamp(act^a / w^(1-a), 1e-4, 1e4) / sqrt(max s * min s);
// the loss of an alpha is the MSE between the layer output with W * s quantized and inputs x / s,
// and the unquantized output. AWQ clip searches, per (output channel, input block), the fraction
// of the block's amax that minimizes the error of that block's partial dot products (or one
// fraction of the per-tensor amax for formats without calibrated block amaxes, such as NVFP4).
// Both stream their statistics, so memory does not grow with the calibration set.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <string>
#include <vector>

#include "mopt/algorithms/layer_solver.h"
#include "mopt/algorithms/smoothquant.h"
#include "mopt/quant/config.h"
#include "mopt/quant/quantizer_core.h"

namespace mopt::algorithms {

/// The alphas AWQ lite tries: 0, step, 2 step, ... up to 1 (ValueError unless 0 < step <= 1).
std::vector<double> awq_alpha_grid(double alpha_step);

/// The clip ratios AWQ clip tries: min, min + step, ... below 1, then 1.0 (ValueError unless
/// 0 < min_clip_ratio <= 1 and step > 0).
std::vector<double> awq_clip_ratios(double min_clip_ratio, double shrink_step);

/// Block length along the input axis that a weight config quantizes with: the size given for
/// axis -1 (or 1), or the whole row (in_features) without blocks. ValueError for blocks that do
/// not run along the input axis.
int64_t awq_block_size(const QuantizerAttributeConfig& weight_cfg, int64_t in_features);

/// Why AWQ lite does not search the layer `name` (the warning to give), or nullopt: a static
/// input quantizer with a per-channel amax cannot take a folded scale.
std::optional<std::string> awq_lite_skip_reason(const std::string& name,
                                                const QuantizerCore& input_quantizer);
/// Why AWQ clip does not clip the layer `name` (the warning to give), or nullopt: a weight
/// format that computes every scale from the weight leaves no amax to clip.
std::optional<std::string> awq_clip_skip_reason(const std::string& name,
                                                const QuantizerCore& weight_quantizer);

/// Per-input-channel weight salience: mean over output rows of |W| / (max |W| of its block + tiny)
/// with the input axis zero-padded to whole blocks; [in] fp32.
at::Tensor awq_weight_scale(const at::Tensor& weight, int64_t block_size);

/// AWQ scales for one alpha: clamp(act^alpha / (w^(1-alpha) + tiny), 1e-4, 1e4), divided by
/// sqrt(max * min) so they centre on 1; [in] fp32.
at::Tensor awq_scale(const at::Tensor& act_scale, const at::Tensor& weight_scale, double alpha);

/// Debug view and outcome of an AWQ lite search.
struct AwqLiteResult {
  double alpha = 0.0;     // the best alpha
  at::Tensor scale;       // [in] fp32: s for the best alpha (the weight is multiplied by it)
  SmoothedLinear folded;  // pre_quant_scale = prior / s, weight W * s, per-tensor input amax
};

/// AWQ lite for one linear layer. Pass 1 (`collect`) accumulates mean |x| and max |x| per input
/// channel; `finish_collect` fixes the activation scale; pass 2 (`search`) adds, for every alpha,
/// the MSE of that batch's quantized output; `compute` picks the best alpha and folds it. A batch
/// with more tokens than the layer has inputs is scored through its x^T x (same sums, fewer
/// flops); nothing of a batch is kept after the call.
class AwqLiteLayer : public LayerSolver {
 public:
  /// weight: [out, in]; weight_cfg: the weight quantizer's config (any format);
  /// `name` (the layer's name) appears in every error message.
  AwqLiteLayer(at::Tensor weight, const QuantizerAttributeConfig& weight_cfg,
               double alpha_step = 0.1, std::string name = "");

  // LayerSolver: pass 0 collects (then finish_collect), pass 1 searches; the update folds the
  // best scale (weight, pre_quant_scale, per-tensor input amax) and recalibrates the weight.
  int num_passes() const override { return 2; }
  SolverInput input_mode() const override { return SolverInput::kFloat; }
  void collect(int pass, const at::Tensor& x) override { pass == 0 ? collect(x) : search(x); }
  void finish_pass(int pass) override;
  int64_t num_batches(int pass) const override {
    return pass == 0 ? num_collect_steps_ : num_search_steps_;
  }
  LayerUpdate solve(const LayerState& state) override;

  /// Pass 1: folds one batch of inputs [..., in] into the activation statistics. Like the
  /// reference, act_scale is the mean over batches of each batch's token mean.
  void collect(const at::Tensor& x);
  /// Ends pass 1: RuntimeError naming the layer when no batch arrived or the statistics
  /// (activations or weight) hold NaN/Inf.
  void finish_collect();
  /// Pass 2: adds every alpha's output MSE on this batch (sum over batches of per-batch means).
  void search(const at::Tensor& x);
  /// Best alpha (first minimum) and its folding; RuntimeError when `search` never ran.
  AwqLiteResult compute(const c10::optional<at::Tensor>& prior_pre_quant_scale = {}) const;

  const std::vector<double>& alphas() const { return alphas_; }
  /// Accumulated loss per alpha ([n_alphas] fp64).
  at::Tensor losses() const { return losses_; }
  /// mean |x| per channel ([in] fp32; after finish_collect).
  const at::Tensor& act_scale() const { return act_scale_; }
  /// max |x| per channel ([in] fp32).
  const at::Tensor& act_amax() const { return act_amax_; }
  const at::Tensor& weight_scale() const { return weight_scale_; }
  int64_t block_size() const { return block_size_; }
  int64_t num_collect_steps() const { return num_collect_steps_; }
  int64_t num_search_steps() const { return num_search_steps_; }
  int64_t num_tokens() const { return num_tokens_; }
  const std::string& name() const override { return name_; }

 private:
  at::Tensor tokens(const at::Tensor& x, const char* pass) const;

  at::Tensor weight_;
  std::string cfg_json_;  // the weight config as the quantize_tensor operator takes it
  std::string name_;
  std::vector<double> alphas_;
  int64_t block_size_;
  at::Tensor weight_scale_;
  at::Tensor act_sum_;    // sum over batches of each batch's mean |x|
  at::Tensor act_scale_;  // act_sum_ / num_collect_steps_
  at::Tensor act_amax_;
  std::vector<at::Tensor> scales_;      // s per alpha (fixed once pass 1 ends)
  std::vector<at::Tensor> inv_scales_;  // [1, in] 1 / s per alpha
  at::Tensor losses_;
  int64_t num_collect_steps_ = 0;
  int64_t num_search_steps_ = 0;
  int64_t num_tokens_ = 0;
  bool collect_finished_ = false;
};

/// Options of AWQ clip (SPEC §1 defaults).
struct AwqClipOptions {
  int64_t max_co_batch_size = 1024;   // output channels evaluated at once (bounds memory)
  int64_t max_tokens_per_batch = 64;  // tokens sampled per batch for the block-wise search
  double min_clip_ratio = 0.5;
  double shrink_step = 0.05;
};

/// Options of AWQ lite.
struct AwqLiteOptions {
  double alpha_step = 0.1;
};

/// Outcome of an AWQ clip search.
struct AwqClipResult {
  at::Tensor amax;    // the clipped amax, shaped like the weight amax
  at::Tensor zero_point;  // asymmetric weights: the clipped range's zero points, else undefined
  at::Tensor ratio;   // chosen ratio, shaped like the weight amax (fp32)
  at::Tensor losses;  // [n_ratios, *amax shape] fp32 accumulated losses
};

/// AWQ clip for one linear layer. Block-wise (one amax per output channel and input block): for
/// each batch, tokens x[::max(1, T / max_tokens)] are sampled and the per-block second moments
/// sum_t x_b x_b^T / T_sampled accumulated (memory [n_blocks, block, block]); the loss of a ratio
/// for (row c, block b) is d^T G_b d with d the quantization error of that row's block, which
/// equals the reference's mean squared error of the block's partial outputs. Per-tensor amax
/// (NVFP4's tensor scale, per-tensor formats): the output MSE over all tokens, per batch, scored
/// like AWQ lite's search.
class AwqClipLayer : public LayerSolver {
 public:
  /// weight [out, in]; weight_amax: the weight quantizer's max-calibrated amax (its amax shape:
  /// one value, or one per output channel and input block); weight_cfg: its config.
  AwqClipLayer(at::Tensor weight, at::Tensor weight_amax, const QuantizerAttributeConfig& weight_cfg,
               AwqClipOptions options = {}, std::string name = "");

  // LayerSolver: one pass of inputs quantized with the running input amax; the update is the
  // weight quantizer's clipped amax.
  SolverInput input_mode() const override { return SolverInput::kRunningAmax; }
  void collect(int, const at::Tensor& x) override { collect(x); }
  void finish_pass(int pass) override;
  int64_t num_batches(int) const override { return num_batches_; }
  LayerUpdate solve(const LayerState& state) override;

  /// Folds one batch of inputs [..., in] (as the weight sees them: after the input quantizer).
  void collect(const at::Tensor& x);
  /// Best ratio per amax element (first minimum); RuntimeError naming the layer when no batch
  /// arrived or the statistics hold NaN/Inf.
  AwqClipResult compute() const;

  const std::vector<double>& ratios() const { return ratios_; }
  bool per_tensor() const { return per_tensor_; }
  int64_t block_size() const { return block_size_; }
  int64_t num_batches() const { return num_batches_; }
  int64_t num_tokens() const { return num_tokens_; }
  const std::string& name() const override { return name_; }

 private:
  at::Tensor weight_;
  at::Tensor weight_amax_;
  std::string cfg_json_;  // the weight config as the quantize_tensor operator takes it
  // asymmetric weights: each amax entry's signed range [lo, hi]; a ratio r clips it to
  // [-r * max(|lo|, |hi|), r * max(|lo|, |hi|)] (AutoAWQ's clip of zero-point weights)
  bool asymmetric_ = false;
  int num_bits_ = 8;
  at::Tensor weight_lo_, weight_hi_;
  /// The (amax, zero point) the quantizer takes for clip ratios `ratio` (scalar or amax-shaped);
  /// symmetric: weight_amax * ratio and an undefined zero point.
  std::pair<at::Tensor, at::Tensor> clipped(const at::Tensor& ratio) const;
  AwqClipOptions options_;
  std::string name_;
  std::vector<double> ratios_;
  bool per_tensor_ = false;
  int64_t block_size_ = 0;
  int64_t num_blocks_ = 0;
  at::Tensor gram_;    // block-wise: [n_blocks, block, block] fp32
  at::Tensor losses_;  // per-tensor: [n_ratios] fp64
  int64_t num_batches_ = 0;
  int64_t num_tokens_ = 0;
};

}  // namespace mopt::algorithms
