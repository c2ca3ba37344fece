#include "mopt/algorithms/gptq.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/eye.h>
#include <ATen/ops/flip.h>
#include <ATen/ops/linalg_solve_triangular.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/linalg_cholesky_ex.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "algorithms/gptq_cuda.h"
#include "block_quant/block_quant_math.h"
#include "core/tensor_utils.h"
#include "gptq/gptq.h"
#include "mopt/core/error.h"
#include "mopt/quant/config.h"
#include "mopt/quant/formats.h"
#include "mopt/quant/fake_quant.h"
#include "mopt/quant/quantize_tensor.h"
#include "quant/kernel_format.h"

namespace mopt::algorithms {

namespace {

namespace kg = kernels::gptq;

std::string layer_label(const std::string& name) {
  return name.empty() ? std::string("GPTQ") : "GPTQ of layer '" + name + "'";
}

// The 2-norm of the values in their own dtype (one pass, no temporary) is finite when they all
// are; when it is not (a NaN or Inf, or an overflow of huge finite values), the exact check.
bool all_finite(const at::Tensor& t) {
  if (t.numel() == 0) return true;
  if (std::isfinite(at::linalg_vector_norm(t, 2).item<double>())) return true;
  return t.isfinite().all().item<bool>();
}

// How the weight quantizer groups a [rows, cols] weight: one amax per tensor, per row, or per
// block of `group_size` consecutive inputs of a row.
enum class Granularity { kPerTensor, kPerRow, kBlocks };

struct ColumnQuantizer {
  kg::QuantSpec spec;
  Granularity granularity = Granularity::kPerTensor;
  int64_t group_size = 0;
  bool static_nvfp4 = false;  // NVFP4 with calibrated block amaxes (block_sizes type "static")
};

ColumnQuantizer column_quantizer(const QuantizerAttributeConfig& cfg, int64_t cols,
                                 const std::string& label) {
  MOPT_CHECK_VALUE(cfg.enable, label, ": the weight quantizer is disabled");
  MOPT_CHECK_IMPLEMENTED(!cfg.is_unsigned, label,
                         ": unsigned weight quantizers are not supported by GPTQ");
  const ResolvedFormat format = resolve_format(cfg);
  MOPT_CHECK_IMPLEMENTED(
      format.info->gptq, label, ": GPTQ's column quantizer follows ",
      format_families_where([](const FormatFamilyInfo& r) { return r.gptq; }), " weights; ",
      format_families_where([](const FormatFamilyInfo& r) { return r.gptq; }, true),
      " block formats (here ", format.name, ") are not supported");
  const bool nvfp4 = format.family() == FormatFamily::kNVFP4;
  ColumnQuantizer c;
  c.spec.format = kernel_format(format.family());
  c.spec.num_bits = format.element_bits;
  c.spec.narrow_range = cfg.narrow_range;
  c.spec.full_range = cfg.uses_full_range();
  c.spec.asymmetric = cfg.asymmetric;
  c.spec.exponent_bits = format.exponent_bits;
  c.spec.mantissa_bits = format.mantissa_bits;
  const bool dynamic = format.dynamic;
  MOPT_CHECK_IMPLEMENTED(!dynamic || nvfp4, label,
                         ": dynamic weight quantizers are only supported by GPTQ for NVFP4 "
                         "(the result must be a fixed point of the quantizer)");
  c.static_nvfp4 = nvfp4 && !dynamic;
  if (cfg.block_sizes) {
    std::vector<std::pair<int64_t, int64_t>> blocked;
    bool whole_rows = false;
    for (const auto& [axis, size] : cfg.block_sizes->axes) {
      const int64_t a = core::normalize_axes({axis}, 2, "block_sizes axis")[0];
      MOPT_CHECK_IMPLEMENTED(a == 1, label,
                             ": GPTQ supports blocks along the input axis (-1) "
                             "only, got a block along axis ",
                             axis);
      if (size)
        blocked.emplace_back(a, *size);
      else
        whole_rows = true;
    }
    if (blocked.empty()) {
      c.granularity = Granularity::kPerRow;  // {-1: None}: one amax per output row
      c.group_size = cols;
    } else {
      c.granularity = Granularity::kBlocks;
      // a block longer than the row is one block per row (no padding to the block size)
      c.group_size = std::min(blocked.front().second, cols);
    }
    MOPT_CHECK_IMPLEMENTED(!(whole_rows && !blocked.empty()), label,
                           ": conflicting block_sizes entries for the input axis");
  } else {
    MOPT_CHECK_IMPLEMENTED(!nvfp4, label, ": NVFP4 without block_sizes");
    if (cfg.axis && !cfg.axis->empty()) {
      const auto axes = core::normalize_axes(*cfg.axis, 2, "axis");
      MOPT_CHECK_IMPLEMENTED(axes.size() == 1 && axes[0] == 0, label,
                             ": GPTQ supports per-tensor or per-output-channel (axis=0) weight "
                             "scales, got axis ",
                             c10::IntArrayRef(*cfg.axis));
      c.granularity = Granularity::kPerRow;
    } else {
      c.granularity = Granularity::kPerTensor;
    }
    c.group_size = cols;
  }
  return c;
}

// Runs a kernel of the column loop on the device holding the weight.
void run_group_params(const kg::GroupParamsArgs& a, const c10::Device& device) {
  if (device.is_cpu()) {
    core::call_kernel([&] { kg::gptq_group_params_cpu(a); });
    return;
  }
#ifdef MOPT_WITH_CUDA_OPS
  if (device.is_cuda()) {
    core::call_kernel([&] { detail::gptq_group_params_cuda(a, device); });
    return;
  }
#endif
  MOPT_CHECK_IMPLEMENTED(false, "GPTQ has no kernel for weights on ", device,
                         " in this build of mopt");
}

void run_block(const kg::BlockArgs& a, const c10::Device& device) {
  if (device.is_cpu()) {
    core::call_kernel([&] { kg::gptq_block_cpu(a); });
    return;
  }
#ifdef MOPT_WITH_CUDA_OPS
  if (device.is_cuda()) {
    core::call_kernel([&] { detail::gptq_block_cuda(a, device); });
    return;
  }
#endif
  MOPT_CHECK_IMPLEMENTED(false, "GPTQ has no kernel for weights on ", device,
                         " in this build of mopt");
}

// Shape of the amax a calibration of this quantizer gives for `weight` (keepdims over the
// calibration view), so the result can be stored in the quantizer's amax buffer.
std::vector<int64_t> quantizer_amax_shape(const at::Tensor& weight,
                                          const QuantizerAttributeConfig& cfg) {
  const at::Tensor meta = at::empty(weight.sizes(), weight.options().device(at::kMeta));
  const at::Tensor view = quantizer_calib_view(meta, c10::nullopt, cfg.to_json());
  const auto keep = quantizer_amax_axes(cfg, weight.dim());
  std::vector<int64_t> shape(view.dim(), 1);
  for (int64_t d : keep) shape[d] = view.size(d);
  return shape;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Hessian

GptqHessian::GptqHessian(int64_t in_features, std::string name)
    : in_features_(in_features), name_(std::move(name)) {
  MOPT_CHECK_VALUE(in_features > 0, "GptqHessian: in_features must be positive, got ", in_features);
}

void GptqHessian::add_batch(const at::Tensor& x) {
  MOPT_CHECK_TYPE(at::isFloatingType(x.scalar_type()), layer_label(name_),
                  ": inputs must be floating point, got ", x.scalar_type());
  MOPT_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == in_features_, layer_label(name_),
                   ": inputs must end in ", in_features_, " features, got shape ",
                   core::shape_str(x.sizes()));
  const at::Tensor flat = x.detach().reshape({-1, in_features_}).to(at::kFloat);
  if (flat.size(0) == 0) return;  // e.g. an MoE expert that got no token in this batch
  if (!sum_.defined()) {
    sum_ = at::zeros({in_features_, in_features_}, flat.options().dtype(at::kDouble));
  } else {
    MOPT_CHECK_VALUE(sum_.device() == flat.device(), layer_label(name_), ": inputs moved from ",
                     sum_.device(), " to ", flat.device());
  }
  // fp64 products and sums: the Hessian then does not depend on how the tokens were split into
  // batches or across processes (to fp32 precision), so calibration over several ranks equals
  // one process on the union
  const at::Tensor flat64 = flat.to(at::kDouble);
  sum_.addmm_(flat64.t(), flat64);
  num_samples_ += flat.size(0);
}

at::Tensor GptqHessian::hessian() const {
  MOPT_CHECK_STATE(num_samples_ > 0, layer_label(name_),
                   ": no calibration token reached this layer, so it has no Hessian");
  return sum_.mul(2.0 / static_cast<double>(num_samples_)).to(at::kFloat);
}

void GptqHessian::reset() {
  sum_ = at::Tensor();
  num_samples_ = 0;
}

void GptqHessian::all_reduce(const ProcessGroup& group) {
  if (group.size <= 1) return;
  const at::Tensor mine =
      sum_.defined() ? sum_ : at::zeros({in_features_, in_features_}, at::kDouble);
  num_samples_ = group.all_reduce(at::scalar_tensor(num_samples_, at::kLong), ReduceOp::kSum)
                     .item<int64_t>();
  at::Tensor total = group.all_reduce(mine, ReduceOp::kSum);
  sum_ = num_samples_ > 0 ? total : at::Tensor();
}

void gptq_check_layer(const std::string& name, const QuantizerCore* weight_quantizer,
                      bool weight_has_pre_quant_scale) {
  MOPT_CHECK_IMPLEMENTED(weight_quantizer != nullptr, "gptq: layer '", name, "' has a multi-stage "
                         "weight quantizer (SequentialQuantizer, e.g. W4A8); GPTQ supports a "
                         "single integer, minifloat or NVFP4 weight quantizer");
  MOPT_CHECK_IMPLEMENTED(!weight_has_pre_quant_scale, "gptq: layer '", name, "' has a "
                         "pre_quant_scale on its weight quantizer, which GPTQ does not support");
}

GptqLayer::GptqLayer(at::Tensor weight, const QuantizerAttributeConfig& weight_cfg,
                     GptqOptions options, std::string name)
    : weight_(std::move(weight)), cfg_(weight_cfg), options_(options),
      hessian_(weight_.dim() == 2 ? weight_.size(1) : 0, std::move(name)) {
  MOPT_CHECK_VALUE(options_.block_size > 0, "gptq block_size must be a positive int, got ",
                   options_.block_size);
  MOPT_CHECK_VALUE(options_.percdamp >= 0.0 && options_.percdamp <= 1.0,
                   "gptq percdamp must be a number in [0, 1], got ", options_.percdamp);
  gptq_check_weight_config(cfg_, weight_.size(0), weight_.size(1), hessian_.name());
}

void GptqLayer::finish_pass(int) {
  const auto& group = calibration_group();
  if (group && group->size > 1) hessian_.all_reduce(*group);
}

LayerUpdate GptqLayer::solve(const LayerState& state) {
  const bool nvfp4 = resolve_format(cfg_).family() == FormatFamily::kNVFP4;
  {
    at::NoGradGuard no_grad;
    result_ = gptq_quantize_weight(weight_.detach(), hessian_.hessian(), cfg_, options_,
                                   nvfp4 ? state.weight_amax : c10::nullopt, hessian_.name());
  }
  if (result_.percdamp > options_.percdamp) {
    MOPT_WARN("gptq: the Hessian of layer '", hessian_.name(), "' was not positive definite "
               "with percdamp=", options_.percdamp, "; it was dampened with percdamp=",
               result_.percdamp);
  }
  LayerUpdate u;
  u.weight = result_.weight;
  u.weight_amax = result_.amax;
  if (result_.zero_point.defined()) u.weight_zero_point = result_.zero_point;
  return u;
}

// ---------------------------------------------------------------------------------------------
// Inverse Hessian

// LAPACK's Cholesky factorization as linked into libtorch (the routines ATen's own
// linalg_cholesky calls; MKL in the official CPU builds). Weak: where libtorch brings no LAPACK
// they are null and at::linalg_cholesky_ex serves.
#if defined(__GNUC__) || defined(__clang__)
#define MOPT_HAVE_WEAK_LAPACK 1
extern "C" {
void spotrf_(char* uplo, int* n, float* a, int* lda, int* info) __attribute__((weak));
void dpotrf_(char* uplo, int* n, double* a, int* lda, int* info) __attribute__((weak));
}
#else
#define MOPT_HAVE_WEAK_LAPACK 0
#endif

namespace {

// Lower Cholesky factor L (L L^T = t) of the symmetric t (fp32 or fp64); false when t is not
// positive definite. CPU: in place in t's lower triangle (row-major t, so LAPACK's column-major
// upper factor), t's strict upper triangle left as it was; at::linalg_cholesky_ex writes a new
// tensor (on the GPU, or without LAPACK) and spends as long again on a copy and tril. `t` is
// replaced by the tensor that holds L.
bool cholesky_lower(at::Tensor& t) {
  const int64_t n = t.size(0);
#if MOPT_HAVE_WEAK_LAPACK
  if (t.device().is_cpu() && t.is_contiguous() && n <= std::numeric_limits<int>::max()) {
    char uplo = 'U';
    int dim = static_cast<int>(n), lda = static_cast<int>(n), info = -1;
    if (t.scalar_type() == at::kFloat && spotrf_ != nullptr) {
      spotrf_(&uplo, &dim, t.mutable_data_ptr<float>(), &lda, &info);
      return info == 0;
    }
    if (t.scalar_type() == at::kDouble && dpotrf_ != nullptr) {
      dpotrf_(&uplo, &dim, t.mutable_data_ptr<double>(), &lda, &info);
      return info == 0;
    }
  }
#endif
  auto [l, info] = at::linalg_cholesky_ex(t, /*upper=*/false, /*check_errors=*/false);
  t = l;
  return info.item<int64_t>() == 0;
}

// The blocked factor of GptqHessianInverse from L = chol(P H P) (P the reversal), any dtype:
// R = P L P, U_cc = R_cc^-1 on the diagonal blocks (triangular solves of block size, in L's
// dtype), R[:c0, c] U_cc above them (fp32 GEMMs), all in one [n, n] fp32 tensor. Only L's lower
// triangle is read.
at::Tensor blocked_factor(const at::Tensor& lower, int64_t block) {
  const int64_t n = lower.size(0);
  // R, row-major whatever L's layout (at::linalg_cholesky_ex returns it column-major): the
  // kernels index it. Its strict lower triangle (L's strict upper one) is cleared.
  at::Tensor factor = at::empty({n, n}, lower.options().dtype(at::kFloat));
  at::flip_out(factor, lower.to(at::kFloat), {0, 1});
  factor.triu_();
  for (int64_t c0 = 0; c0 < n; c0 += block) {
    const int64_t nc = std::min(block, n - c0);
    // R_cc = P L_bb P with L_bb the matching diagonal block of L.
    const at::Tensor r_cc =
        lower.narrow(0, n - c0 - nc, nc).narrow(1, n - c0 - nc, nc).flip({0, 1});
    const at::Tensor u_cc = at::linalg_solve_triangular(r_cc, at::eye(nc, r_cc.options()),
                                                        /*upper=*/true)
                                .to(at::kFloat);
    if (c0 > 0) {
      at::Tensor above = factor.narrow(0, 0, c0).narrow(1, c0, nc);
      above.copy_(at::mm(above, u_cc));
    }
    factor.narrow(0, c0, nc).narrow(1, c0, nc).copy_(u_cc);
  }
  return factor;
}

// The smallest of the rigorous bounds on cond(A + damp I) of hessian_condition_bound, from the
// undamped A (nonnegative diagonal) and its diagonal (fp64): the Frobenius norm and the trace
// first, the row sums of |A| only when those do not reach `limit`. In A's dtype (one pass, no
// temporary); an overflow there gives +inf (no bound).
double damped_condition_bound(const at::Tensor& a, const at::Tensor& diag, double damp,
                              double limit) {
  if (!(damp > 0.0)) return std::numeric_limits<double>::infinity();
  const double n = static_cast<double>(diag.numel());
  const double trace = diag.sum().item<double>();
  const double frobenius = at::linalg_vector_norm(a, 2).item<double>();
  // ||A + damp I||_F^2 = ||A||_F^2 + sum((a_ii + damp)^2 - a_ii^2)
  const double fro_sq = frobenius * frobenius + (2.0 * damp * trace + n * damp * damp);
  double bound = std::min(std::sqrt(fro_sq), trace + n * damp) / damp;
  if (bound > limit) {
    const double row_sum = at::linalg_vector_norm(a, 1, {1}).max().item<double>();
    bound = std::min(bound, (row_sum + damp) / damp);
  }
  return std::isnan(bound) ? std::numeric_limits<double>::infinity() : bound;
}

}  // namespace

double hessian_condition_bound(const at::Tensor& damped, double damp) {
  if (!(damp > 0.0)) return std::numeric_limits<double>::infinity();
  // The solver's own bound (damped_condition_bound) on the undamped matrix, every bound taken.
  at::Tensor a = damped.to(at::kDouble, /*non_blocking=*/false, /*copy=*/true);
  const at::Tensor diag = a.diagonal().sub(damp);
  a.diagonal().copy_(diag);
  return damped_condition_bound(a, diag, damp, /*limit=*/0.0);
}

GptqHessianInverse gptq_hessian_inverse(const at::Tensor& hessian, double percdamp, bool act_order,
                                        int64_t block, const std::string& name,
                                        const std::string& algorithm,
                                        HessianFactorPrecision precision) {
  const std::string label =
      name.empty() ? algorithm : algorithm + " of layer '" + name + "'";
  MOPT_CHECK_VALUE(hessian.dim() == 2 && hessian.size(0) == hessian.size(1) && hessian.size(0) > 0,
                   label, ": the Hessian must be a non-empty square matrix, got shape ",
                   core::shape_str(hessian.sizes()));
  MOPT_CHECK_TYPE(at::isFloatingType(hessian.scalar_type()), label,
                  ": the Hessian must be floating point, got ", hessian.scalar_type());
  MOPT_CHECK_VALUE(std::isfinite(percdamp) && percdamp >= 0.0 && percdamp <= 1.0, label,
                   ": percdamp must be in [0, 1], got ", percdamp);
  MOPT_CHECK_VALUE(block > 0, label, ": the column block size must be positive, got ", block);
  MOPT_CHECK_STATE(all_finite(hessian), label,
                   ": the Hessian holds NaN or Inf; the calibration activations reaching this "
                   "layer are not finite (or overflow fp32)");
  const int64_t n = hessian.size(0);
  at::Tensor diag = hessian.diagonal().to(at::kDouble, /*non_blocking=*/false, /*copy=*/true);
  MOPT_CHECK_STATE(!diag.lt(0).any().item<bool>(), label,
                   ": the Hessian has a negative diagonal entry, so it is not X^T X of any input");
  const at::Tensor dead = diag.eq(0);
  GptqHessianInverse out;
  out.block = block;
  out.dead_columns = dead.sum().item<int64_t>();
  diag.masked_fill_(dead, 1.0);
  if (act_order) {
    // Stable, so ties (dead channels) keep their order.
    out.perm = std::get<1>(diag.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  } else {
    out.perm = at::arange(n, diag.options().dtype(at::kLong));
  }
  // A = P H_perm P with P the reversal, in H's dtype, its diagonal `a_diag` (dead channels at
  // 1) restored before and dampened in place for each factorization attempt.
  const at::Tensor order = out.perm.flip({0}).to(hessian.device());
  const auto build_a = [&] {
    return act_order ? hessian.index_select(0, order).index_select(1, order)
                     : hessian.flip({0, 1});
  };
  at::Tensor a = build_a();
  bool a_intact = true;  // false once a factorization overwrote it in place
  const at::Tensor a_diag = diag.index_select(0, out.perm.flip({0})).to(hessian.device());
  const double mean_diag = diag.mean().item<double>();
  double rel = percdamp;
  while (true) {
    // R with R R^T = H + damp I from one factorization: P (H + damp I) P = L L^T gives
    // H + damp I = (P L P)(P L P)^T, and P L P is upper triangular, so it is R and U = R^-1.
    const double damp = rel * mean_diag;
    if (!a_intact) a = build_a();
    a_intact = true;
    a.diagonal().copy_(a_diag);
    // fp32 factorization (about half of fp64's time) when a rigorous bound on the condition
    // number keeps its error small (kHessianFp32MaxCondition); fp64 otherwise, or when fp32
    // fails (its rounding can break positive definiteness before fp64's does).
    bool fp32 = precision == HessianFactorPrecision::kFloat32 ||
                (precision == HessianFactorPrecision::kAuto &&
                 damped_condition_bound(a, a_diag, damp, kHessianFp32MaxCondition) <=
                     kHessianFp32MaxCondition);
    a.diagonal().copy_(a_diag.add(damp));
    at::Tensor lower;
    for (const bool single : {true, false}) {
      if (single && !fp32) continue;
      if (!a_intact) {  // a failed fp32 attempt overwrote it
        a = build_a();
        a.diagonal().copy_(a_diag.add(damp));
        a_intact = true;
      }
      at::Tensor work = a.to(single ? at::kFloat : at::kDouble);
      if (work.is_same(a)) a_intact = false;
      if (cholesky_lower(work)) {
        lower = work;
        fp32 = single;
        break;
      }
    }
    if (lower.defined()) {
      at::Tensor factor = blocked_factor(lower, block);
      if (all_finite(factor)) {
        out.factor = std::move(factor);
        out.percdamp = rel;
        out.fp32_factorization = fp32;
        return out;
      }
    }
    MOPT_CHECK_STATE(rel < 1.0, label,
                     ": the Hessian is not positive definite even with "
                     "percdamp = 1 (requested ",
                     percdamp, "); its inputs may be degenerate");
    rel = std::min(1.0, std::max(rel * 10.0, 1e-4));
  }
}

GptqBlockUpdate::GptqBlockUpdate(at::Tensor w, const GptqHessianInverse& hinv)
    : w_(std::move(w)), factor_(hinv.factor.to(w_.device())), cols_(w_.size(1)) {
  MOPT_CHECK(w_.dim() == 2 && w_.size(1) == factor_.size(0) && w_.scalar_type() == at::kFloat,
             "GptqBlockUpdate: a [rows, ", factor_.size(0), "] fp32 weight is needed");
  // D of the finished columns; a block's columns are filled when it starts (with its start
  // values) and finished when it ends. The last block's D is never needed.
  const int64_t last_block = (cols_ - 1) / hinv.block * hinv.block;
  if (last_block > 0) delta_ = at::empty({w_.size(0), last_block}, w_.options());
}

void GptqBlockUpdate::begin_block(int64_t c0, int64_t nc) {
  if (c0 + nc < cols_) delta_.narrow(1, c0, nc).copy_(w_.narrow(1, c0, nc));
  if (c0 > 0) {
    w_.narrow(1, c0, nc).addmm_(delta_.narrow(1, 0, c0),
                                factor_.narrow(0, 0, c0).narrow(1, c0, nc));
  }
}

void GptqBlockUpdate::end_block(int64_t c0, int64_t nc) {
  if (c0 + nc < cols_) delta_.narrow(1, c0, nc).sub_(w_.narrow(1, c0, nc));
}

// ---------------------------------------------------------------------------------------------
// Column loop

void gptq_check_weight_config(const QuantizerAttributeConfig& cfg, int64_t out_features,
                              int64_t in_features, const std::string& name) {
  const std::string label = layer_label(name);
  MOPT_CHECK_VALUE(out_features > 0 && in_features > 0, label, ": empty weight [", out_features,
                   ", ", in_features, "]");
  column_quantizer(cfg, in_features, label);
  quantizer_amax_shape(
      at::empty({out_features, in_features}, at::TensorOptions().device(at::kMeta)), cfg);
}

GptqResult gptq_quantize_weight(const at::Tensor& weight, const at::Tensor& hessian,
                                const QuantizerAttributeConfig& cfg, const GptqOptions& options,
                                const c10::optional<at::Tensor>& tensor_amax,
                                const std::string& name) {
  const std::string label = layer_label(name);
  MOPT_CHECK_VALUE(weight.dim() == 2, label, ": the weight must be 2-D [out, in], got shape ",
                   core::shape_str(weight.sizes()));
  MOPT_CHECK_TYPE(at::isFloatingType(weight.scalar_type()), label,
                  ": the weight must be floating point, got ", weight.scalar_type());
  const int64_t rows = weight.size(0), cols = weight.size(1);
  MOPT_CHECK_VALUE(rows > 0 && cols > 0, label, ": empty weight of shape ",
                   core::shape_str(weight.sizes()));
  MOPT_CHECK_VALUE(hessian.dim() == 2 && hessian.size(0) == cols && hessian.size(1) == cols, label,
                   ": the Hessian must be [", cols, ", ", cols, "] for a weight with ", cols,
                   " inputs, got shape ", core::shape_str(hessian.sizes()));
  MOPT_CHECK_VALUE(hessian.device() == weight.device(), label, ": the Hessian is on ",
                   hessian.device(), " but the weight is on ", weight.device());
  MOPT_CHECK_VALUE(options.block_size > 0, label, ": block_size must be positive, got ",
                   options.block_size);
  MOPT_CHECK_STATE(all_finite(weight), label, ": the weight holds NaN or Inf");
  const ColumnQuantizer cq = column_quantizer(cfg, cols, label);
  const std::vector<int64_t> amax_shape = quantizer_amax_shape(weight, cfg);

  // Working copy: fp32, columns in processing order.
  const at::Tensor original = weight.detach().to(at::kFloat).contiguous();
  kg::QuantSpec spec = cq.spec;
  at::Tensor nvfp4_amax;
  if (cq.static_nvfp4) {
    // Static NVFP4 derives its tensor scale from the largest calibrated block amax, so every
    // block amax must be known before the first column: they come from the original weight.
    nvfp4_amax = original.abs().max();
    spec.nvfp4_tensor_scale = kernels::block_quant::nvfp4_tensor_scale(nvfp4_amax.item<float>());
  } else if (spec.format == kernels::Format::kNVFP4) {
    if (tensor_amax.has_value() && tensor_amax->defined()) {
      MOPT_CHECK_VALUE(tensor_amax->numel() == 1, label,
                       ": the NVFP4 tensor amax must hold one value, got shape ",
                       core::shape_str(tensor_amax->sizes()));
      nvfp4_amax = tensor_amax->detach().to(at::kFloat).reshape({});
    } else {
      nvfp4_amax = weight.detach().abs().max().to(at::kFloat);
    }
    const float g = nvfp4_amax.item<float>();
    MOPT_CHECK_STATE(std::isfinite(g) && g >= 0.0f, label, ": the NVFP4 tensor amax is ", g);
    spec.nvfp4_tensor_scale = kernels::block_quant::nvfp4_tensor_scale(g);
  }

  const int64_t group_size = cq.group_size;
  const int64_t n_groups = kernels::ceil_div(cols, group_size);
  at::Tensor group_param = at::empty({rows, n_groups}, original.options());
  at::Tensor group_pin;
  kg::Groups groups;
  groups.group_size = group_size;
  groups.count = n_groups;
  groups.param = group_param.mutable_data_ptr<float>();
  at::Tensor group_zero;
  if (spec.asymmetric) {
    group_zero = at::zeros({rows, n_groups}, original.options());
    groups.zero = group_zero.mutable_data_ptr<float>();
  }
  if (spec.format == kernels::Format::kNVFP4 && !cq.static_nvfp4) {
    group_pin = at::empty({rows, n_groups}, original.options().dtype(at::kInt));
    groups.pin = group_pin.mutable_data_ptr<int32_t>();
  }
  const bool permuted = options.act_order;
  // Blocks get their amax from the updated weights when the loop reaches them, unless act_order
  // visits their columns out of order (or static NVFP4 needs them all first); whole rows and
  // tensors use the original weight.
  const bool groups_at_start =
      cq.granularity == Granularity::kBlocks && !permuted && !cq.static_nvfp4;
  if (cq.granularity == Granularity::kPerTensor && spec.asymmetric) {
    const auto [lo, hi] = compute_min_max(original);
    const auto [a, z] = int_asym_range(lo.reshape({}), hi.reshape({}), spec.num_bits);
    group_param.fill_(a);
    group_zero.fill_(z);
  } else if (cq.granularity == Granularity::kPerTensor) {
    group_param.fill_(original.abs().max());
  } else if (!groups_at_start) {
    kg::GroupParamsArgs ga;
    ga.w = original.const_data_ptr<float>();
    ga.rows = rows;
    ga.cols = cols;
    ga.ld = cols;
    ga.spec = spec;
    ga.groups = groups;
    run_group_params(ga, weight.device());
  }
  int64_t block = options.block_size;
  if (groups_at_start) block = (block + group_size - 1) / group_size * group_size;

  const GptqHessianInverse hinv =
      gptq_hessian_inverse(hessian, options.percdamp, options.act_order, block, name);
  at::Tensor w = permuted ? original.index_select(1, hinv.perm.to(weight.device())).contiguous()
                          : original.clone();
  GptqBlockUpdate update(w, hinv);
  const at::Tensor col_index = hinv.perm.to(at::kInt).to(weight.device()).contiguous();

  at::Tensor row_loss = at::zeros({rows}, original.options());
  at::Tensor err = at::empty({rows, std::min(block, cols)}, original.options());
  for (int64_t c0 = 0; c0 < cols; c0 += block) {
    const int64_t nc = std::min(block, cols - c0);
    update.begin_block(c0, nc);
    kg::BlockArgs a;
    a.w = w.mutable_data_ptr<float>();
    a.rows = rows;
    a.ldw = cols;
    a.col0 = c0;
    a.ncols = nc;
    a.hinv = update.factor().const_data_ptr<float>();
    a.ldh = cols;
    a.err = err.mutable_data_ptr<float>();
    a.col_index = col_index.const_data_ptr<int32_t>();
    a.groups = groups;
    a.groups_at_start = groups_at_start;
    a.spec = spec;
    a.row_loss = row_loss.mutable_data_ptr<float>();
    run_block(a, weight.device());
    update.end_block(c0, nc);
  }
  if (permuted) {
    const at::Tensor inv_perm = std::get<1>(hinv.perm.sort()).to(weight.device());
    w = w.index_select(1, inv_perm);
  }

  GptqResult out;
  out.weight = w.to(weight.scalar_type()).reshape(weight.sizes());
  at::Tensor amax;
  if (cq.static_nvfp4) {
    // The block amaxes the scales came from, as static calibration stores them.
    const int64_t padded = n_groups * group_size;
    amax = at::constant_pad_nd(original.abs(), {0, padded - cols}, 0.0)
               .reshape({rows, n_groups, group_size})
               .amax({2});
  } else if (spec.format == kernels::Format::kNVFP4) {
    amax = nvfp4_amax.reshape({1});
  } else if (cq.granularity == Granularity::kPerTensor) {
    amax = group_param.select(1, 0).narrow(0, 0, 1).clone();
  } else {
    amax = group_param;
  }
  int64_t amax_numel = 1;
  for (int64_t s : amax_shape) amax_numel *= s;
  MOPT_CHECK_STATE(amax.numel() == amax_numel, label, ": internal error, GPTQ computed ",
                   amax.numel(), " amax values but the quantizer holds ", amax_numel);
  out.amax = amax.reshape(amax_shape).contiguous();
  if (spec.asymmetric) {
    const at::Tensor zero = cq.granularity == Granularity::kPerTensor
                                ? group_zero.select(1, 0).narrow(0, 0, 1).clone()
                                : group_zero;
    out.zero_point = zero.reshape(amax_shape).contiguous();
  }
  out.loss = row_loss.sum().item<double>();
  out.percdamp = hinv.percdamp;
  out.dead_columns = hinv.dead_columns;
  return out;
}

}  // namespace mopt::algorithms
