// GPTQ (Frantar et al., 2023; SPEC §5) for linear layers: H = 2/n sum_t x_t x_t^T over the
// calibration tokens, dampened by percdamp * mean(diag H), the upper Cholesky factor U of H^-1;
// the columns are processed in blocks, each column quantized exactly as the layer's weight
// quantizer would quantize it, its error (w - q) / U_jj propagated to the rest of the block
// through row j of U, and the earlier blocks' changes applied to a block in one GEMM when its
// turn comes (left-looking, from the Cholesky factor itself: see GptqHessianInverse).
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

/// Precision of the Cholesky factorization of the damped Hessian.
enum class HessianFactorPrecision {
  kAuto,     // fp32 when the condition bound is at most kHessianFp32MaxCondition, else fp64
  kFloat32,  // fp32 (the reference implementations' choice); still fp64 if fp32 fails
  kFloat64,  // fp64 always
};

/// The largest condition-number bound for which kAuto factors in fp32: the fp32 factor's error
/// relative to the exact one is at most about cond(H) * 2^-24 (first-order perturbation bound of
/// the Cholesky factor for a backward error of a few units of roundoff), so 1e-4 / 2^-24 = 1678
/// keeps it under 1e-4, about 1/80 of an int8 step and far below fp8 or int4 steps.
inline constexpr double kHessianFp32MaxCondition = 1678.0;

/// A rigorous upper bound on cond(H + damp I) for a symmetric positive semidefinite H:
/// lambda_min >= damp, lambda_max <= min(||H + damp I||_F, max row sum of |H + damp I|,
/// trace(H + damp I)). `damped` is H + damp I (any floating dtype); +inf when damp <= 0. The
/// same bound (one implementation) picks gptq_hessian_inverse's automatic precision.
double hessian_condition_bound(const at::Tensor& damped, double damp);

/// The damped Hessian's factors in the form the column loops use, for column blocks of
/// `block` columns (block b covers [b * block, min((b + 1) * block, in))).
///
/// With U the upper factor U^T U = (H_perm + damp I)^-1 and R = U^-1 (upper triangular,
/// R R^T = H_perm + damp I, the reversed Cholesky factor of the flipped H: no inverse of the
/// whole matrix is formed), `factor` holds per column block c:
/// * on the diagonal block, U_cc = R_cc^-1 (the rows of U the in-block updates need);
/// * above it, R[:c0, c] U_cc: the left-looking update of block c before its turn is
///   W[:, c] += D[:, :c0] R[:c0, c] U_cc with D = W_start - W_final of the earlier columns, the
///   same as the GPTQ lazy update -E[:, :c0] U[:c0, c] (E = D R) without forming U (an n^3
///   triangular inverse);
/// * zeros below.
struct GptqHessianInverse {
  at::Tensor factor;         // [in, in] fp32, as above
  int64_t block = 0;         // the column block size `factor` is laid out for
  at::Tensor perm;           // [in] int64: working column j is original column perm[j]
  double percdamp = 0.0;     // dampening used (above the requested one after retries)
  int64_t dead_columns = 0;  // channels with diag H == 0
  bool fp32_factorization = false;  // whether the Cholesky factorization ran in fp32
};

/// Prepares H for the column loop (dead channels, act_order permutation, dampening with retries,
/// Cholesky factorization, fp32 when a bound on the condition number allows it and fp64 else).
/// RuntimeError naming `algorithm` and the layer `name` when H is not finite or not positive
/// definite even with percdamp = 1. SparseGPT uses it too.
GptqHessianInverse gptq_hessian_inverse(
    const at::Tensor& hessian, double percdamp, bool act_order, int64_t block,
    const std::string& name = "", const std::string& algorithm = "GPTQ",
    HessianFactorPrecision precision = HessianFactorPrecision::kAuto);

/// The left-looking column loop shared by GPTQ and SparseGPT. For each block [c0, c0 + nc) in
/// order: begin_block(c0, nc) applies the earlier blocks' updates to w's block (w's later columns
/// stay untouched), the caller's kernel then finishes the block in place, and end_block(c0, nc)
/// records the block's change D for the later blocks.
class GptqBlockUpdate {
 public:
  /// `w`: the [rows, in] fp32 working weight (columns in processing order, values of the start)
  GptqBlockUpdate(at::Tensor w, const GptqHessianInverse& hinv);
  void begin_block(int64_t c0, int64_t nc);
  void end_block(int64_t c0, int64_t nc);
  /// The factor on w's device (the kernels read its diagonal blocks).
  const at::Tensor& factor() const { return factor_; }

 private:
  at::Tensor w_, factor_, delta_;
  int64_t cols_;
};

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
