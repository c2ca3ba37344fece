// N:M weight sparsity (SPEC §2): the pattern, the weight layouts of the layers it applies to, and
// the three ways to choose a mask. Every method works on the weight as a [rows, cols] matrix whose
// columns are the layer's inputs: groups of M consecutive columns keep N weights.
// * magnitude: keep the N largest |w| of each group;
// * Wanda (Sun et al., 2023): keep the N largest |w_ij| * ||x_j||_2, the input norms streamed
//   over the calibration tokens;
// * SparseGPT (Frantar & Alistarh, 2023): the OBS column loop on H = 2/n X^T X (the Hessian
//   accumulation, dampening and Cholesky factors are GPTQ's, include/mopt/algorithms/gptq.h):
//   each group's mask keeps the N largest |w| / [U]_jj on the weights updated so far, and the
//   error of every pruned weight is compensated on the remaining columns. The updated weight is
//   returned (ModelOpt's `sparsegpt` computes it and keeps only the mask: update_weights=false).
// Convolutions group along input channels: a weight [out, in, k...] is the matrix
// [out, k... x in] (columns ordered kernel position first, channel last) and its inputs the
// matching unfolded patches, so a group is M consecutive channels at one kernel position.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <string>
#include <vector>

#include "mopt/algorithms/gptq.h"

namespace mopt::sparsity {

/// Keep n of every m consecutive weights along the input dimension.
struct NMPattern {
  int64_t n = 2;
  int64_t m = 4;
  /// "n:m sparsity".
  std::string str() const;
};

/// Parses ModelOpt's pattern strings "2:4 sparsity" and ours "N:M sparsity" (also "N:M").
/// ValueError naming the string for anything else or for N > M, N < 1, M > 32.
NMPattern parse_pattern(const std::string& pattern);

/// How a layer stores its weight.
enum class WeightLayout {
  kLinear,      // [out, in] (nn.Linear)
  kConv,        // [out, in / groups, k...] (nn.Conv1d / nn.Conv2d)
  kTransposed,  // [in, out] (transformers' GPT-2 Conv1D)
};

/// How a convolution turns its input into patches (ignored by other layouts).
struct ConvGeometry {
  std::vector<int64_t> kernel_size;  // one entry per spatial dim (1 or 2)
  std::vector<int64_t> stride;
  std::vector<int64_t> padding;
  std::vector<int64_t> dilation;
  int64_t groups = 1;
};

/// The weight as the [rows, cols] matrix the methods work on (a view or copy of `weight`).
at::Tensor weight_matrix(const at::Tensor& weight, WeightLayout layout);
/// Back from weight_matrix: a tensor shaped and laid out like `like`.
at::Tensor weight_from_matrix(const at::Tensor& matrix, const at::Tensor& like,
                              WeightLayout layout);

/// Checks, before anything changes, that `pattern` applies to a weight of this shape:
/// ValueError naming `name` when the input dimension (channels for convolutions) is not a
/// multiple of M; true when it applies.
void check_layer(const at::Tensor& weight, WeightLayout layout, NMPattern pattern,
                 const std::string& name);
/// True when check_layer would pass (for configs that skip such layers).
bool layer_supported(const at::Tensor& weight, WeightLayout layout, NMPattern pattern);

/// Magnitude mask: bool tensor shaped like `weight`, true where a weight is kept.
at::Tensor magnitude_mask(const at::Tensor& weight, WeightLayout layout, NMPattern pattern,
                          const std::string& name = "");

/// A layer's new mask and, for SparseGPT with update_weights, its new weight (same shape).
struct SparsityUpdate {
  at::Tensor mask;                   // bool, shaped like the weight
  c10::optional<at::Tensor> weight;  // the weight to store (pruned weights are zero)
  double loss = 0.0;                 // SparseGPT: sum of ((w - q) / U_jj)^2 / 2
  int64_t dead_columns = 0;          // inputs that were zero for every token
};

/// One layer's calibration-driven mask search: the driver feeds the layer's inputs (what its
/// forward receives) to collect(), ends the data with finish() and calls solve().
class SparsityLayer {
 public:
  /// weight: the layer's weight (read when solving); geometry: for kConv layers.
  SparsityLayer(at::Tensor weight, WeightLayout layout, ConvGeometry geometry, NMPattern pattern,
                std::string name);
  virtual ~SparsityLayer() = default;
  const std::string& name() const { return name_; }
  /// Folds one batch of inputs ([..., in] for linear layers, [N, C, spatial...] or unbatched
  /// [C, spatial...] for convolutions). RuntimeError naming the layer for NaN/Inf inputs.
  void collect(const at::Tensor& x);
  /// Ends the calibration data: inside a CalibrationGroupScope the ranks' statistics are summed.
  virtual void finish() = 0;
  /// Tokens (rows of the unfolded inputs) seen.
  virtual int64_t num_tokens() const = 0;
  /// The mask (and weight). RuntimeError naming the layer when no token arrived.
  virtual SparsityUpdate solve() = 0;

 protected:
  /// The inputs as the [tokens, cols] matrix matching weight_matrix's columns.
  virtual void add_columns(const at::Tensor& columns) = 0;
  at::Tensor weight_;
  WeightLayout layout_;
  ConvGeometry geometry_;
  NMPattern pattern_;
  std::string name_;
  int64_t cols_ = 0;
};

/// Wanda: streams sum_t x_tj^2 per column (fp64); the score is |w_ij| * ||x_j||_2.
class WandaLayer : public SparsityLayer {
 public:
  WandaLayer(at::Tensor weight, WeightLayout layout, ConvGeometry geometry, NMPattern pattern,
             std::string name = "");
  void finish() override;
  int64_t num_tokens() const override { return tokens_; }
  SparsityUpdate solve() override;
  /// ||x_j||_2 per column of weight_matrix (after finish()).
  at::Tensor column_norms() const;

 protected:
  void add_columns(const at::Tensor& columns) override;

 private:
  at::Tensor sum_sq_;  // [cols] fp64
  int64_t tokens_ = 0;
};

/// Options of SparseGPT (ModelOpt's search config keys).
struct SparseGptOptions {
  int64_t col_block_size = 128;  // columns per lazy-update block (rounded up to whole groups)
  double hessian_damp = 0.1;     // dampening as a fraction of mean(diag H)
  bool update_weights = true;    // keep the compensating update (false: the mask only)
};

/// SparseGPT on one weight matrix [rows, cols] with Hessian [cols, cols]: the column loop of
/// kernels/gptq (CPU or CUDA by the weight's device). Returns the mask and the pruned, updated
/// matrix (fp32 -> the weight's dtype). ValueError for bad shapes, RuntimeError naming `name` for
/// non-finite data or a Hessian that is not positive definite even with damp = 1.
SparsityUpdate sparsegpt_prune(const at::Tensor& matrix, const at::Tensor& hessian,
                               NMPattern pattern, const SparseGptOptions& options,
                               const std::string& name = "");

/// SparseGPT as a SparsityLayer: streams the Hessian of the unfolded inputs (GptqHessian).
class SparseGptLayer : public SparsityLayer {
 public:
  SparseGptLayer(at::Tensor weight, WeightLayout layout, ConvGeometry geometry, NMPattern pattern,
                 SparseGptOptions options, std::string name = "");
  void finish() override;
  int64_t num_tokens() const override { return hessian_.num_samples(); }
  SparsityUpdate solve() override;

 protected:
  void add_columns(const at::Tensor& columns) override;

 private:
  SparseGptOptions options_;
  algorithms::GptqHessian hessian_;
};

}  // namespace mopt::sparsity
