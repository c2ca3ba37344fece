#include "mopt/sparsity/solvers.h"

#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/im2col.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros.h>

#include <cctype>
#include <cmath>
#include <utility>

#include "algorithms/gptq_cuda.h"
#include "core/tensor_utils.h"
#include "gptq/gptq.h"
#include "mopt/core/distributed.h"
#include "mopt/core/error.h"
#include "mopt/sparsity/nm.h"
#include "sparsity/sparsity_math.h"

namespace mopt::sparsity {

namespace {

namespace kg = kernels::gptq;

std::string label(const std::string& algorithm, const std::string& name) {
  return name.empty() ? algorithm : algorithm + ": layer '" + name + "'";
}

// The 2-norm of the values in their own dtype (one pass, no temporary) is finite when they all
// are; when it is not (a NaN or Inf, or an overflow of huge finite values), the exact check.
bool all_finite(const at::Tensor& t) {
  if (t.numel() == 0) return true;
  if (std::isfinite(at::linalg_vector_norm(t, 2).item<double>())) return true;
  return t.isfinite().all().item<bool>();
}

// Reads the decimal number at s[pos...]; -1 when there is none (or it overflows).
int64_t read_number(const std::string& s, size_t& pos) {
  const size_t start = pos;
  int64_t v = 0;
  while (pos < s.size() && std::isdigit(static_cast<unsigned char>(s[pos]))) {
    if (v > 1000000) return -1;
    v = v * 10 + (s[pos] - '0');
    ++pos;
  }
  return pos == start ? -1 : v;
}

// The input dimension N:M groups run along: in_features, or input channels per group.
int64_t input_dim(const at::Tensor& weight, WeightLayout layout) {
  switch (layout) {
    case WeightLayout::kLinear:
      return weight.size(1);
    case WeightLayout::kTransposed:
      return weight.size(0);
    case WeightLayout::kConv:
    default:
      return weight.size(1);
  }
}

void check_shape(const at::Tensor& weight, WeightLayout layout, const std::string& name) {
  MOPT_CHECK_VALUE(weight.defined(), label("sparsity", name), ": the layer has no weight");
  MOPT_CHECK_TYPE(at::isFloatingType(weight.scalar_type()), label("sparsity", name),
                  ": expected a floating-point weight, got ", weight.scalar_type());
  if (layout == WeightLayout::kConv) {
    MOPT_CHECK_VALUE(weight.dim() == 3 || weight.dim() == 4, label("sparsity", name),
                     ": expected a Conv1d/Conv2d weight [out, in, k...], got ",
                     core::shape_str(weight.sizes()));
  } else {
    MOPT_CHECK_VALUE(weight.dim() == 2, label("sparsity", name),
                     ": expected a 2-D weight, got ", core::shape_str(weight.sizes()));
  }
}

void run_prune_block(const kg::PruneBlockArgs& a, const c10::Device& device) {
  if (device.is_cpu()) {
    core::call_kernel([&] { kg::sparsegpt_block_cpu(a); });
    return;
  }
#ifdef MOPT_WITH_CUDA_OPS
  if (device.is_cuda()) {
    core::call_kernel([&] { algorithms::detail::sparsegpt_block_cuda(a, device); });
    return;
  }
#endif
  MOPT_CHECK_IMPLEMENTED(false, "SparseGPT has no kernel for weights on ", device,
                         " in this build of mopt");
}

}  // namespace

std::string NMPattern::str() const {
  return std::to_string(n) + ":" + std::to_string(m) + " sparsity";
}

NMPattern parse_pattern(const std::string& pattern) {
  size_t pos = 0;
  while (pos < pattern.size() && pattern[pos] == ' ') ++pos;
  NMPattern p;
  p.n = read_number(pattern, pos);
  bool ok = p.n >= 0 && pos < pattern.size() && pattern[pos] == ':';
  if (ok) {
    ++pos;
    p.m = read_number(pattern, pos);
    ok = p.m >= 0;
  }
  if (ok) {
    std::string rest = pattern.substr(pos);
    while (!rest.empty() && rest.back() == ' ') rest.pop_back();
    ok = rest.empty() || rest == " sparsity";
  }
  MOPT_CHECK_VALUE(ok, "unknown sparsity pattern '", pattern,
                   "': expected 'N:M sparsity' (keep N of every M weights along the input "
                   "dimension), e.g. '2:4 sparsity'");
  MOPT_CHECK_VALUE(p.n >= 1 && p.m >= 1 && p.n <= p.m && p.m <= kernels::sparsity::kMaxGroup,
                   "sparsity pattern '", pattern, "': N:M needs 1 <= N <= M <= ",
                   kernels::sparsity::kMaxGroup);
  return p;
}

at::Tensor weight_matrix(const at::Tensor& weight, WeightLayout layout) {
  // any dtype: masks go through the same layouts as weights
  MOPT_CHECK_VALUE(weight.defined() && (layout == WeightLayout::kConv
                                            ? weight.dim() == 3 || weight.dim() == 4
                                            : weight.dim() == 2),
                   "sparsity: a weight of shape ",
                   weight.defined() ? core::shape_str(weight.sizes()) : std::string("none"),
                   " does not fit its layer's layout");
  switch (layout) {
    case WeightLayout::kLinear:
      return weight;
    case WeightLayout::kTransposed:
      return weight.t();
    case WeightLayout::kConv:
    default:
      // [out, in, k...] -> [out, k..., in] -> [out, k... x in]
      return weight.dim() == 3 ? weight.permute({0, 2, 1}).reshape({weight.size(0), -1})
                               : weight.permute({0, 2, 3, 1}).reshape({weight.size(0), -1});
  }
}

at::Tensor weight_from_matrix(const at::Tensor& matrix, const at::Tensor& like,
                              WeightLayout layout) {
  switch (layout) {
    case WeightLayout::kLinear:
      return matrix.reshape(like.sizes()).contiguous();
    case WeightLayout::kTransposed:
      return matrix.t().contiguous();
    case WeightLayout::kConv:
    default:
      if (like.dim() == 3) {
        return matrix.reshape({like.size(0), like.size(2), like.size(1)})
            .permute({0, 2, 1})
            .contiguous();
      }
      return matrix.reshape({like.size(0), like.size(2), like.size(3), like.size(1)})
          .permute({0, 3, 1, 2})
          .contiguous();
  }
}

bool layer_supported(const at::Tensor& weight, WeightLayout layout, NMPattern pattern) {
  return input_dim(weight, layout) % pattern.m == 0;
}

void check_layer(const at::Tensor& weight, WeightLayout layout, NMPattern pattern,
                 const std::string& name) {
  check_shape(weight, layout, name);
  const int64_t in = input_dim(weight, layout);
  MOPT_CHECK_VALUE(in % pattern.m == 0, label("sparsity", name), ": ", pattern.str(),
                   " needs the input dimension to be a multiple of ", pattern.m, ", but the ",
                   layout == WeightLayout::kConv ? "layer has " : "weight ",
                   core::shape_str(weight.sizes()), " has ", in,
                   layout == WeightLayout::kConv ? " input channels" : " inputs",
                   " (leave the layer dense with a None rule for it)");
}

at::Tensor magnitude_mask(const at::Tensor& weight, WeightLayout layout, NMPattern pattern,
                          const std::string& name) {
  check_layer(weight, layout, pattern, name);
  const at::Tensor m = weight_matrix(weight.detach(), layout).contiguous();
  return weight_from_matrix(nm_mask(m, c10::nullopt, pattern.n, pattern.m, name), weight, layout);
}

// ---------------------------------------------------------------------------------------------
// SparsityLayer

SparsityLayer::SparsityLayer(at::Tensor weight, WeightLayout layout, ConvGeometry geometry,
                             NMPattern pattern, std::string name)
    : weight_(std::move(weight)), layout_(layout), geometry_(std::move(geometry)),
      pattern_(pattern), name_(std::move(name)) {
  check_layer(weight_, layout_, pattern_, name_);
  // weight_matrix's column count, without materializing a convolution's permuted copy
  cols_ = layout_ == WeightLayout::kTransposed ? weight_.size(0)
                                               : weight_.numel() / weight_.size(0);
  if (layout_ == WeightLayout::kConv) {
    const size_t dims = static_cast<size_t>(weight_.dim() - 2);
    const auto& g = geometry_;
    MOPT_CHECK_VALUE(g.kernel_size.size() == dims && g.stride.size() == dims &&
                         g.padding.size() == dims && g.dilation.size() == dims,
                     label("sparsity", name_), ": the convolution geometry needs ", dims,
                     " entries per field");
    MOPT_CHECK_IMPLEMENTED(g.groups == 1, label("sparsity", name_),
                           ": grouped convolutions (groups=", g.groups,
                           ") are supported by magnitude sparsity only");
  }
}

void SparsityLayer::collect(const at::Tensor& x) {
  MOPT_CHECK_TYPE(at::isFloatingType(x.scalar_type()), label("sparsity", name_),
                  ": expected floating-point inputs, got ", x.scalar_type());
  at::Tensor cols;
  if (layout_ == WeightLayout::kConv) {
    const int64_t dims = weight_.dim() - 2;
    const int64_t channels = weight_.size(1);
    MOPT_CHECK_VALUE((x.dim() == dims + 1 || x.dim() == dims + 2) &&
                         x.size(x.dim() - dims - 1) == channels,
                     label("sparsity", name_), ": expected inputs [batch, ", channels,
                     ", spatial...] with ", dims, " spatial dims, got ",
                     core::shape_str(x.sizes()));
    at::Tensor in = x.detach();
    if (in.dim() == dims + 1) in = in.unsqueeze(0);
    const auto& g = geometry_;
    std::vector<int64_t> k = g.kernel_size, s = g.stride, p = g.padding, d = g.dilation;
    if (dims == 1) {  // a Conv1d is a Conv2d over [1, L]
      in = in.unsqueeze(2);
      k.insert(k.begin(), 1);
      s.insert(s.begin(), 1);
      p.insert(p.begin(), 0);
      d.insert(d.begin(), 1);
    }
    const int64_t kernel = k[0] * k[1];
    // [N, C * K, L] (channel slowest) -> [N * L, K * C] (channel fastest), weight_matrix's order
    at::Tensor patches = at::im2col(in, k, d, p, s);
    const int64_t n = patches.size(0), l = patches.size(2);
    cols = patches.reshape({n, channels, kernel, l}).permute({0, 3, 2, 1}).reshape({n * l, -1});
  } else {
    MOPT_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == cols_, label("sparsity", name_),
                     ": expected inputs [..., ", cols_, "], got ", core::shape_str(x.sizes()));
    cols = x.detach().reshape({-1, cols_});
  }
  if (cols.size(0) == 0) return;
  MOPT_CHECK_STATE(all_finite(cols), label("sparsity", name_),
                   ": the calibration activations reaching this layer hold NaN or Inf");
  add_columns(cols);
}

// ---------------------------------------------------------------------------------------------
// Wanda

WandaLayer::WandaLayer(at::Tensor weight, WeightLayout layout, ConvGeometry geometry,
                       NMPattern pattern, std::string name)
    : SparsityLayer(std::move(weight), layout, std::move(geometry), pattern, std::move(name)) {}

void WandaLayer::add_columns(const at::Tensor& columns) {
  const at::Tensor c = columns.to(at::kDouble);
  const at::Tensor s = c.mul(c).sum(0);
  if (!sum_sq_.defined()) {
    sum_sq_ = s;
  } else {
    MOPT_CHECK_VALUE(sum_sq_.device() == s.device(), label("wanda", name_), ": inputs moved from ",
                     sum_sq_.device(), " to ", s.device());
    sum_sq_.add_(s);
  }
  tokens_ += columns.size(0);
}

void WandaLayer::finish() {
  const auto& group = calibration_group();
  if (!group || group->size <= 1) return;
  const at::Tensor mine = sum_sq_.defined() ? sum_sq_ : at::zeros({cols_}, at::kDouble);
  tokens_ = group->all_reduce(at::scalar_tensor(tokens_, at::kLong), ReduceOp::kSum)
                .item<int64_t>();
  at::Tensor total = group->all_reduce(mine, ReduceOp::kSum);
  sum_sq_ = tokens_ > 0 ? total : at::Tensor();
}

at::Tensor WandaLayer::column_norms() const {
  MOPT_CHECK_STATE(tokens_ > 0, label("wanda", name_),
                   ": no calibration token reached this layer, so its input norms are unknown");
  return sum_sq_.sqrt().to(at::kFloat);
}

SparsityUpdate WandaLayer::solve() {
  at::NoGradGuard no_grad;
  const at::Tensor norms = column_norms();
  const at::Tensor m = weight_matrix(weight_.detach(), layout_).contiguous();
  SparsityUpdate u;
  u.mask = weight_from_matrix(
      nm_mask(m, norms.to(m.device()), pattern_.n, pattern_.m, name_), weight_, layout_);
  u.dead_columns = norms.eq(0).sum().item<int64_t>();
  return u;
}

// ---------------------------------------------------------------------------------------------
// SparseGPT

SparsityUpdate sparsegpt_prune(const at::Tensor& matrix, const at::Tensor& hessian,
                               NMPattern pattern, const SparseGptOptions& options,
                               const std::string& name) {
  const std::string lbl = label("sparsegpt", name);
  MOPT_CHECK_VALUE(matrix.dim() == 2 && matrix.size(0) > 0 && matrix.size(1) > 0, lbl,
                   ": the weight must be a non-empty [rows, cols] matrix, got shape ",
                   core::shape_str(matrix.sizes()));
  MOPT_CHECK_TYPE(at::isFloatingType(matrix.scalar_type()), lbl,
                  ": the weight must be floating point, got ", matrix.scalar_type());
  const int64_t rows = matrix.size(0), cols = matrix.size(1);
  MOPT_CHECK_VALUE(cols % pattern.m == 0, lbl, ": ", pattern.str(), " needs the ", cols,
                   " input columns to be a multiple of ", pattern.m);
  MOPT_CHECK_VALUE(hessian.dim() == 2 && hessian.size(0) == cols && hessian.size(1) == cols, lbl,
                   ": the Hessian must be [", cols, ", ", cols, "], got shape ",
                   core::shape_str(hessian.sizes()));
  MOPT_CHECK_VALUE(options.col_block_size > 0, lbl, ": col_block_size must be positive, got ",
                   options.col_block_size);
  MOPT_CHECK_VALUE(std::isfinite(options.hessian_damp) && options.hessian_damp >= 0.0 &&
                       options.hessian_damp <= 1.0,
                   lbl, ": hessian_damp must be in [0, 1], got ", options.hessian_damp);
  MOPT_CHECK_STATE(all_finite(matrix), lbl, ": the weight holds NaN or Inf");
  const c10::Device device = matrix.device();
  const int64_t block = (options.col_block_size + pattern.m - 1) / pattern.m * pattern.m;
  const algorithms::GptqHessianInverse hinv = algorithms::gptq_hessian_inverse(
      hessian.to(device), options.hessian_damp, /*act_order=*/false, block, name, "SparseGPT");

  const at::Tensor original = matrix.detach().to(at::kFloat).contiguous();
  at::Tensor w = original.clone();  // the column loop overwrites it
  algorithms::GptqBlockUpdate update(w, hinv);
  at::Tensor mask = at::zeros({rows, cols}, original.options().dtype(at::kByte));
  at::Tensor err = at::empty({rows, std::min(block, cols)}, original.options());
  at::Tensor row_loss = at::zeros({rows}, original.options());
  for (int64_t c0 = 0; c0 < cols; c0 += block) {
    const int64_t nc = std::min(block, cols - c0);
    update.begin_block(c0, nc);
    kg::PruneBlockArgs a;
    a.w = w.mutable_data_ptr<float>();
    a.rows = rows;
    a.ldw = cols;
    a.col0 = c0;
    a.ncols = nc;
    a.hinv = update.factor().const_data_ptr<float>();
    a.ldh = cols;
    a.err = err.mutable_data_ptr<float>();
    a.mask = mask.mutable_data_ptr<uint8_t>();
    a.n = static_cast<int>(pattern.n);
    a.m = static_cast<int>(pattern.m);
    a.row_loss = row_loss.mutable_data_ptr<float>();
    run_prune_block(a, device);
    update.end_block(c0, nc);
  }
  SparsityUpdate out;
  out.mask = mask.to(at::kBool);
  out.loss = row_loss.sum().item<double>();
  // Every pruned weight's error is in the loss, so a finite loss means finite updates.
  MOPT_CHECK_STATE(std::isfinite(out.loss), lbl,
                   ": the weight update is not finite; raise hessian_damp");
  const at::Tensor result = options.update_weights ? w : original.mul(out.mask);
  out.weight = result.to(matrix.scalar_type());
  out.dead_columns = hinv.dead_columns;
  return out;
}

SparseGptLayer::SparseGptLayer(at::Tensor weight, WeightLayout layout, ConvGeometry geometry,
                               NMPattern pattern, SparseGptOptions options, std::string name)
    : SparsityLayer(std::move(weight), layout, std::move(geometry), pattern, name),
      options_(options), hessian_(cols_, std::move(name)) {
  MOPT_CHECK_VALUE(options_.col_block_size > 0, "sparsegpt col_block_size must be positive, got ",
                   options_.col_block_size);
  MOPT_CHECK_VALUE(std::isfinite(options_.hessian_damp) && options_.hessian_damp >= 0.0 &&
                       options_.hessian_damp <= 1.0,
                   "sparsegpt hessian_damp must be in [0, 1], got ", options_.hessian_damp);
}

void SparseGptLayer::add_columns(const at::Tensor& columns) { hessian_.add_batch(columns); }

void SparseGptLayer::finish() {
  const auto& group = calibration_group();
  if (group && group->size > 1) hessian_.all_reduce(*group);
}

SparsityUpdate SparseGptLayer::solve() {
  at::NoGradGuard no_grad;
  MOPT_CHECK_STATE(hessian_.num_samples() > 0, label("sparsegpt", name_),
                   ": no calibration token reached this layer, so it has no Hessian");
  const at::Tensor m = weight_matrix(weight_.detach(), layout_);
  SparsityUpdate u = sparsegpt_prune(m, hessian_.hessian(), pattern_, options_, name_);
  u.mask = weight_from_matrix(u.mask, weight_, layout_);
  u.weight = weight_from_matrix(*u.weight, weight_, layout_);
  return u;
}

}  // namespace mopt::sparsity
