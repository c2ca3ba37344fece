// GPTQ (Frantar et al., 2023; SPEC §5) for linear layers: H = 2/n sum_t x_t x_t^T over the
// calibration tokens, dampened by percdamp * mean(diag H), the upper Cholesky factor U of H^-1;
// the columns are processed in blocks, each column quantized exactly as the layer's weight
// quantizer would quantize it, its error (w - q) / U_jj propagated to the rest of the block
// through row j of U, and the block's errors applied to the later columns in one GEMM.
//
// Weight formats (the column quantizer follows the weight quantizer config):
// * integer or minifloat, per tensor or per output channel (axis 0): one amax per tensor / row
//   from the original weight, as max calibration computes it;
// * integer or minifloat static blocks along the input axis ("groupsize"): a block's amax is
//   computed from the updated weights when the loop reaches its first column; with act_order the
//   columns of a block are visited out of order, so every block amax comes from the original
//   weight instead ("static groups");
// * NVFP4 (E2M1, E4M3 scale per 16 inputs, fp32 tensor scale) with dynamic block scales: block
//   scales as for integer blocks, the tensor scale from the calibrated tensor amax (or max |W|).
//   The quantizer recomputes dynamic block scales from the data, so a block's largest element at
//   the time its scale is set is pinned to the largest E2M1 code unless another element reaches
//   it first: re-quantizing the result then finds the same scales;
// * NVFP4 with static (calibrated) block amaxes: the tensor scale is the largest block amax, so
//   every block amax comes from the original weight and is returned for the quantizer to keep.
// The returned weight is a fixed point of the weight quantizer with the returned amax.
//
// Robustness: input channels that were zero for every token ("dead", diag H = 0) get H_jj = 1 and
// keep their weights. If the dampened H or its inverse is not positive definite, the dampening is
// raised tenfold (from at least 1e-4) up to percdamp = 1 and the value used is reported; a
// Hessian that fails even then, a non-finite Hessian or weight, or a layer that saw no token
// raises an error naming the layer.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <string>

#include "mopt/algorithms/layer_solver.h"
#include "mopt/core/distributed.h"
#include "mopt/quant/config.h"
#include "mopt/quant/quantizer_core.h"

namespace mopt::algorithms {

/// Options of the `gptq` algorithm.
struct GptqOptions {
  int64_t block_size = 128;  // columns per lazy-update block (rounded up to whole quant blocks)
  double percdamp = 0.01;    // dampening as a fraction of mean(diag H), in [0, 1]
  bool act_order = false;    // process columns by decreasing diag H (the result is unpermuted)
};

/// Streams the Hessian H = 2/n sum_t x_t x_t^T of one linear layer's inputs: one
/// in_features^2 fp64 matrix on the inputs' device, whatever the number of tokens (fp64, so the
/// result does not depend on how the tokens are split into batches or processes).
class GptqHessian {
 public:
  /// `name` (the layer's name) appears in every error message.
  explicit GptqHessian(int64_t in_features, std::string name = "");

  /// Adds the tokens of x [..., in_features] (any floating dtype; accumulated in fp32).
  void add_batch(const at::Tensor& x);
  /// H = 2/n X^T X as [in, in] fp32. RuntimeError naming the layer when no token arrived.
  at::Tensor hessian() const;
  /// Tokens seen so far.
  int64_t num_samples() const { return num_samples_; }
  int64_t in_features() const { return in_features_; }
  const std::string& name() const { return name_; }
  /// Forgets every token.
  void reset();
  /// Sums X^T X and the token counts over the ranks of `group` (every rank calls it).
  void all_reduce(const ProcessGroup& group);

 private:
  int64_t in_features_;
  std::string name_;
  at::Tensor sum_;  // X^T X, fp64
  int64_t num_samples_ = 0;
};

/// The damped inverse Hessian factor used by the column loop.
struct GptqHessianInverse {
  at::Tensor upper;          // [in, in] fp32 U with U^T U = (H_perm + damp I)^-1
  at::Tensor perm;           // [in] int64: working column j is original column perm[j]
  double percdamp = 0.0;     // dampening used (above the requested one after retries)
  int64_t dead_columns = 0;  // channels with diag H == 0
};

/// Prepares H for the column loop (dead channels, act_order permutation, dampening with retries,
/// Cholesky factorizations in fp64). RuntimeError naming `algorithm` and the layer `name` when H
/// is not finite or not positive definite even with percdamp = 1. SparseGPT uses it too.
GptqHessianInverse gptq_hessian_inverse(const at::Tensor& hessian, double percdamp, bool act_order,
                                        const std::string& name = "",
                                        const std::string& algorithm = "GPTQ");

/// Checks, before anything is changed, that GPTQ can follow the weight quantizer config for a
/// weight [out_features, in_features]; the errors of gptq_quantize_weight otherwise.
void gptq_check_weight_config(const QuantizerAttributeConfig& weight_cfg, int64_t out_features,
                              int64_t in_features, const std::string& name = "");

/// Checks that GPTQ can run on the layer `name`: NotImplementedError for a multi-stage weight
/// quantizer (`weight_quantizer` null: a SequentialQuantizer) or one with a pre_quant_scale.
void gptq_check_layer(const std::string& name, const QuantizerCore* weight_quantizer,
                      bool weight_has_pre_quant_scale);

/// Result of GPTQ on one weight.
struct GptqResult {
  at::Tensor weight;         // quantized values, shape/dtype/device of the input weight
  at::Tensor amax;           // amax for the weight quantizer, in the shape its calibration has
  at::Tensor zero_point;     // asymmetric weight quantizers: zero points in amax's shape
  double loss = 0.0;         // sum over rows and columns of ((w - q) / U_jj)^2 / 2
  double percdamp = 0.0;     // dampening used
  int64_t dead_columns = 0;  // input channels with diag H == 0
};

/// Runs GPTQ on weight [out, in] with Hessian [in, in] for the weight quantizer described by
/// weight_cfg. tensor_amax: the calibrated per-tensor amax of
/// NVFP4 with dynamic blocks (default: max |weight|); ignored by other formats. ValueError for bad
/// shapes or options, NotImplementedError for quantizer configs GPTQ cannot follow (MX, NF4,
/// unsigned, dynamic non-NVFP4, blocks along the output axis), RuntimeError naming `name` for
/// non-finite data or an unusable Hessian.
GptqResult gptq_quantize_weight(const at::Tensor& weight, const at::Tensor& hessian,
                                const QuantizerAttributeConfig& weight_cfg,
                                const GptqOptions& options = {},
                                const c10::optional<at::Tensor>& tensor_amax = c10::nullopt,
                                const std::string& name = "");

/// GPTQ of one linear layer as a LayerSolver: one pass streaming the Hessian of the input
/// quantizer's output (weight quantizer off), then the column loop with the weight quantizer's
/// config; the update is the quantized weight and its amax. A dampening raised above the
/// requested percdamp is reported with a warning naming the layer.
class GptqLayer : public LayerSolver {
 public:
  /// weight: [out, in] (read when solving); weight_cfg: the weight quantizer's config, checked
  /// here (NotImplementedError before any pass for a format GPTQ cannot follow).
  GptqLayer(at::Tensor weight, const QuantizerAttributeConfig& weight_cfg, GptqOptions options,
            std::string name = "");

  const std::string& name() const override { return hessian_.name(); }
  SolverInput input_mode() const override { return SolverInput::kQuantized; }
  void collect(int, const at::Tensor& x) override { hessian_.add_batch(x); }
  /// Sums the ranks' X^T X and token counts.
  void finish_pass(int pass) override;
  /// Tokens seen (over every rank after finish_pass).
  int64_t num_batches(int) const override { return hessian_.num_samples(); }
  /// state.weight_amax: NVFP4's calibrated tensor amax (other formats ignore it).
  LayerUpdate solve(const LayerState& state) override;

  const GptqHessian& hessian() const { return hessian_; }
  /// The last solve's result (diagnostics).
  const GptqResult& result() const { return result_; }

 private:
  at::Tensor weight_;
  QuantizerAttributeConfig cfg_;
  GptqOptions options_;
  GptqHessian hessian_;
  GptqResult result_;
};

}  // namespace mopt::algorithms
