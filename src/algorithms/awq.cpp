#include "mopt/algorithms/awq.h"

#include <ATen/ops/cat.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/maximum.h>
#include <ATen/ops/minimum.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <utility>

#include "algorithms/layer_stats.h"
#include "core/tensor_utils.h"
#include "mopt/core/distributed.h"
#include "mopt/core/error.h"
#include "mopt/quant/config.h"
#include "mopt/quant/fake_quant.h"
#include "mopt/quant/quantize_tensor.h"

namespace mopt::algorithms {
namespace {

constexpr double kMinScale = 1e-4;
constexpr double kMaxScale = 1e4;
constexpr double kTiny = std::numeric_limits<float>::min();  // torch.finfo(float32).tiny

// Zero-pads the last dim of a [rows, in] matrix to a multiple of `block`.
at::Tensor pad_to_blocks(const at::Tensor& m, int64_t block) {
  const int64_t pad = (block - m.size(-1) % block) % block;
  return pad ? at::constant_pad_nd(m, {0, pad}, 0) : m;
}

bool all_finite(const at::Tensor& t) { return t.isfinite().all().item<bool>(); }

// Index of the first minimum (ties keep the earlier candidate, like the reference's strict <).
int64_t first_argmin(const at::Tensor& losses) {
  const at::Tensor host = losses.to(at::kCPU, at::kDouble).contiguous();
  const double* v = host.data_ptr<double>();
  int64_t best = 0;
  for (int64_t i = 1; i < host.numel(); ++i) {
    if (v[i] < v[best]) best = i;
  }
  return best;
}

// The output MSE of each of `n` candidate weights on a batch: mean over tokens and outputs of
// (x e_k^T)^2, where e_k = error(k) [out, in] fp32 is the candidate's effective weight minus the
// float weight and x [tokens, in] fp32. sum_t |e x_t|^2 = sum(e * (e G)) with G = x^T x, which
// costs tokens*in^2 + n*out*in^2 flops instead of n*tokens*in*out: cheaper whenever the batch
// has more tokens than the layer has inputs. Either way nothing outlives the call.
template <typename Error>
at::Tensor candidate_output_mse(const at::Tensor& x, int64_t out, int64_t n, Error&& error) {
  const auto tokens = static_cast<double>(x.size(0));
  const auto in = static_cast<double>(x.size(1));
  const double direct_flops = n * tokens * in * out;
  const double gram_flops = tokens * in * in + n * out * in * in;
  std::vector<at::Tensor> losses;
  losses.reserve(n);
  if (gram_flops < direct_flops) {
    const at::Tensor gram = x.t().mm(x);
    for (int64_t k = 0; k < n; ++k) {
      const at::Tensor e = error(k);
      losses.push_back((e.mm(gram) * e).sum() / (tokens * out));
    }
  } else {
    for (int64_t k = 0; k < n; ++k) losses.push_back(x.mm(error(k).t()).pow(2).mean());
  }
  return at::stack(losses);
}

}  // namespace

std::vector<double> awq_alpha_grid(double alpha_step) {
  MOPT_CHECK_VALUE(alpha_step > 0.0 && alpha_step <= 1.0,
                   "awq_lite alpha_step must be in (0, 1], got ", alpha_step);
  const auto n = static_cast<int64_t>(std::floor(1.0 / alpha_step + 1e-9));
  std::vector<double> alphas;
  for (int64_t k = 0; k <= n; ++k) alphas.push_back(std::min(1.0, k * alpha_step));
  return alphas;
}

std::vector<double> awq_clip_ratios(double min_clip_ratio, double shrink_step) {
  MOPT_CHECK_VALUE(min_clip_ratio > 0.0 && min_clip_ratio <= 1.0,
                   "awq_clip min_clip_ratio must be in (0, 1], got ", min_clip_ratio);
  MOPT_CHECK_VALUE(shrink_step > 0.0 && shrink_step < 1.0,
                   "awq_clip shrink_step must be in (0, 1), got ", shrink_step);
  std::vector<double> ratios;
  for (int64_t k = 0;; ++k) {
    // Rounded so that 0.5 + 2 * 0.05 is the 0.6 a user reads in the debug output.
    const double r = std::round((min_clip_ratio + k * shrink_step) * 1e9) / 1e9;
    if (r >= 1.0) break;
    ratios.push_back(r);
  }
  ratios.push_back(1.0);
  return ratios;
}

int64_t awq_block_size(const QuantizerAttributeConfig& cfg, int64_t in_features) {
  if (!cfg.block_sizes) return in_features;
  for (const auto& [axis, size] : cfg.block_sizes->axes) {
    if (axis == -1 || axis == 1) return size ? std::min(*size, in_features) : in_features;
  }
  MOPT_CHECK_VALUE(false,
                   "AWQ needs the weight quantized in blocks along the input axis (-1); "
                   "block_sizes of this weight quantizer: ",
                   cfg.to_json());
  return in_features;
}

at::Tensor awq_weight_scale(const at::Tensor& weight, int64_t block_size) {
  MOPT_CHECK_VALUE(weight.dim() == 2, "awq_weight_scale expects a weight [out, in], got ",
                   core::shape_str(weight.sizes()));
  MOPT_CHECK_VALUE(block_size > 0, "awq_weight_scale block_size must be positive, got ",
                   block_size);
  const int64_t out = weight.size(0);
  const int64_t in = weight.size(1);
  const at::Tensor w = pad_to_blocks(weight.detach().to(at::kFloat).abs(), block_size);
  const at::Tensor blocks = w.reshape({-1, block_size});
  const at::Tensor rel = blocks / (blocks.amax(1, /*keepdim=*/true) + kTiny);
  return rel.reshape({out, -1}).narrow(1, 0, in).mean(0);
}

at::Tensor awq_scale(const at::Tensor& act_scale, const at::Tensor& weight_scale, double alpha) {
  MOPT_CHECK_VALUE(act_scale.dim() == 1 && act_scale.sizes() == weight_scale.sizes(),
                   "awq_scale expects act_scale and weight_scale of the same shape [in], got ",
                   core::shape_str(act_scale.sizes()), " and ",
                   core::shape_str(weight_scale.sizes()));
  const at::Tensor a = act_scale.to(at::kFloat);
  const at::Tensor w = weight_scale.to(a.device(), at::kFloat);
  const at::Tensor s = (a.pow(alpha) / (w.pow(1.0 - alpha) + kTiny)).clamp(kMinScale, kMaxScale);
  return s / (s.max() * s.min()).sqrt();
}

// ---------------------------------------------------------------------------------------------
// AWQ lite

std::optional<std::string> awq_lite_skip_reason(const std::string& name,
                                                const QuantizerCore& input_quantizer) {
  if (!input_quantizer.is_enabled() || !input_quantizer.is_static() ||
      input_quantizer.kept_axes(2).empty()) {
    return std::nullopt;
  }
  return "awq_lite: layer '" + name + "' is not searched: its input quantizer keeps a "
         "per-channel static amax, which a folded scale would invalidate; it gets max "
         "calibration";
}

std::optional<std::string> awq_clip_skip_reason(const std::string& name,
                                                const QuantizerCore& weight_quantizer) {
  if (weight_quantizer.is_static()) return std::nullopt;
  return "awq_clip: layer '" + name + "' is not clipped: its weight format computes every "
         "scale from the weight, leaving no amax to clip";
}

AwqLiteLayer::AwqLiteLayer(at::Tensor weight, const QuantizerAttributeConfig& weight_cfg,
                           double alpha_step, std::string name)
    : weight_(std::move(weight)), cfg_json_(weight_cfg.to_json()), name_(std::move(name)) {
  check_linear_weight(weight_, "awq_lite", name_);
  alphas_ = awq_alpha_grid(alpha_step);
  block_size_ = awq_block_size(weight_cfg, weight_.size(1));
  weight_scale_ = awq_weight_scale(weight_, block_size_);
  losses_ = at::zeros({static_cast<int64_t>(alphas_.size())}, weight_.options().dtype(at::kDouble));
}

at::Tensor AwqLiteLayer::tokens(const at::Tensor& x, const char* pass) const {
  return layer_tokens(x, weight_.size(1), pass, name_);
}

void AwqLiteLayer::collect(const at::Tensor& x) {
  MOPT_CHECK_STATE(!collect_finished_, "awq_lite: ", layer_label(name_),
                   ": collect() after finish_collect()");
  const at::Tensor t = tokens(x, "awq_lite");
  if (t.size(0) == 0) return;  // an expert that received no token
  const at::Tensor a = t.abs().to(at::kFloat);
  const at::Tensor mean = a.mean(0);
  const at::Tensor amax = a.amax(0);
  act_sum_ = act_sum_.defined() ? act_sum_ + mean : mean;
  act_amax_ = act_amax_.defined() ? at::maximum(act_amax_, amax) : amax;
  ++num_collect_steps_;
  num_tokens_ += t.size(0);
}

void AwqLiteLayer::finish_collect() {
  MOPT_CHECK_STATE(num_collect_steps_ > 0, "awq_lite: ", layer_label(name_),
                   " received no input from forward_loop");
  act_scale_ = act_sum_ / static_cast<double>(num_collect_steps_);
  MOPT_CHECK_STATE(all_finite(act_scale_) && all_finite(act_amax_), "awq_lite: the inputs of ",
                   layer_label(name_), " hold NaN or Inf (mean or max |x| is not finite)");
  MOPT_CHECK_STATE(all_finite(weight_scale_), "awq_lite: the weight of ", layer_label(name_),
                   " holds NaN or Inf");
  scales_.clear();
  inv_scales_.clear();
  for (const double alpha : alphas_) {
    const at::Tensor s = awq_scale(act_scale_, weight_scale_, alpha);
    scales_.push_back(s);
    inv_scales_.push_back(s.reciprocal().unsqueeze(0));
  }
  collect_finished_ = true;
}

void AwqLiteLayer::search(const at::Tensor& x) {
  MOPT_CHECK_STATE(collect_finished_, "awq_lite: ", layer_label(name_),
                   ": search() before finish_collect()");
  const at::Tensor t = tokens(x, "awq_lite");
  if (t.size(0) == 0) return;
  const at::Tensor xf = t.to(at::kFloat);
  const at::Tensor w = weight_.detach();
  const at::Tensor wf = w.to(at::kFloat);
  // The layer with W * s quantized and inputs x / s, minus the float layer: its output error is
  // x @ (Q(W * s) / s - W)^T (the bias cancels).
  const at::Tensor batch_losses =
      candidate_output_mse(xf, w.size(0), static_cast<int64_t>(alphas_.size()), [&](int64_t k) {
        const at::Tensor wq = quantize_tensor(w, c10::nullopt, scales_[k], cfg_json_);
        return wq.to(at::kFloat) * inv_scales_[k] - wf;
      });
  losses_ += batch_losses.to(at::kDouble);
  ++num_search_steps_;
}

void AwqLiteLayer::finish_pass(int pass) {
  const auto& group = calibration_group();
  const bool reduce = group && group->size > 1;
  auto count = [&](int64_t n) {
    return reduce ? group->all_reduce(at::scalar_tensor(n, at::kLong), ReduceOp::kSum)
                        .item<int64_t>()
                  : n;
  };
  const auto fp32 = weight_.options().dtype(at::kFloat);
  const int64_t in = weight_.size(1);
  if (pass == 0) {
    if (reduce) {
      act_sum_ = group->all_reduce(act_sum_.defined() ? act_sum_ : at::zeros({in}, fp32),
                                   ReduceOp::kSum);
      act_amax_ = group->all_reduce(act_amax_.defined() ? act_amax_ : at::zeros({in}, fp32),
                                    ReduceOp::kMax);
      num_collect_steps_ = count(num_collect_steps_);
      num_tokens_ = count(num_tokens_);
    }
    if (num_collect_steps_ > 0) finish_collect();
    return;
  }
  if (reduce) {
    losses_ = group->all_reduce(losses_, ReduceOp::kSum);
    num_search_steps_ = count(num_search_steps_);
  }
}

LayerUpdate AwqLiteLayer::solve(const LayerState& state) {
  const AwqLiteResult r = compute(state.input_pre_quant_scale);
  LayerUpdate u;
  u.weight = r.folded.weight;
  u.pre_quant_scale = r.folded.pre_quant_scale.to(weight_.scalar_type());
  u.input_amax = r.folded.input_amax;
  u.recalibrate_weight = true;
  return u;
}

AwqLiteResult AwqLiteLayer::compute(const c10::optional<at::Tensor>& prior_pre_quant_scale) const {
  MOPT_CHECK_STATE(num_search_steps_ > 0, "awq_lite: ", layer_label(name_),
                   " received no input during the search pass of forward_loop");
  MOPT_CHECK_STATE(all_finite(losses_), "awq_lite: the search losses of ", layer_label(name_),
                   " are not finite");
  AwqLiteResult r;
  const int64_t best = first_argmin(losses_);
  r.alpha = alphas_[best];
  r.scale = scales_[best];
  r.folded = fold_pre_quant_scale(weight_.detach(), r.scale.reciprocal(), act_amax_,
                                  prior_pre_quant_scale);
  return r;
}

// ---------------------------------------------------------------------------------------------
// AWQ clip

AwqClipLayer::AwqClipLayer(at::Tensor weight, at::Tensor weight_amax,
                           const QuantizerAttributeConfig& weight_cfg, AwqClipOptions options,
                           std::string name)
    : weight_(std::move(weight)),
      weight_amax_(std::move(weight_amax)),
      cfg_json_(weight_cfg.to_json()),
      options_(options),
      name_(std::move(name)) {
  check_linear_weight(weight_, "awq_clip", name_);
  MOPT_CHECK_VALUE(options_.max_co_batch_size > 0,
                   "awq_clip max_co_batch_size must be positive, got ", options_.max_co_batch_size);
  MOPT_CHECK_VALUE(options_.max_tokens_per_batch > 0,
                   "awq_clip max_tokens_per_batch must be positive, got ",
                   options_.max_tokens_per_batch);
  ratios_ = awq_clip_ratios(options_.min_clip_ratio, options_.shrink_step);
  MOPT_CHECK_VALUE(weight_amax_.defined() && weight_amax_.numel() > 0,
                   "awq_clip: ", layer_label(name_), ": the weight quantizer has no amax to clip");
  weight_amax_ = weight_amax_.detach().to(weight_.device(), at::kFloat);
  MOPT_CHECK_STATE(all_finite(weight_amax_), "awq_clip: the weight of ", layer_label(name_),
                   " holds NaN or Inf (its amax is not finite)");
  const int64_t out = weight_.size(0);
  const int64_t in = weight_.size(1);
  const auto n_ratios = static_cast<int64_t>(ratios_.size());
  asymmetric_ = weight_cfg.asymmetric;
  num_bits_ = weight_cfg.num_bits.bits;
  if (asymmetric_) {
    const at::Tensor view = quantizer_calib_view(weight_.detach(), c10::nullopt, cfg_json_);
    std::tie(weight_lo_, weight_hi_) =
        compute_min_max(view, quantizer_amax_axes(weight_cfg, weight_.dim()));
    MOPT_CHECK_VALUE(weight_lo_.sizes() == weight_amax_.sizes(), "awq_clip: ", layer_label(name_),
                     ": weight amax of shape ", core::shape_str(weight_amax_.sizes()),
                     " does not match the quantizer's ranges ",
                     core::shape_str(weight_lo_.sizes()));
  }
  if (weight_amax_.numel() == 1) {
    per_tensor_ = true;
    losses_ = at::zeros({n_ratios}, weight_.options().dtype(at::kDouble));
    return;
  }
  block_size_ = awq_block_size(weight_cfg, in);
  num_blocks_ = kernels::ceil_div(in, block_size_);
  MOPT_CHECK_IMPLEMENTED(
      weight_amax_.numel() == out * num_blocks_, "awq_clip: ", layer_label(name_),
      ": weight amax of shape ", core::shape_str(weight_amax_.sizes()),
      " is neither one value nor one per output channel and input block (", out, " x ", num_blocks_,
      " blocks of ", block_size_, "); clipping other amax granularities is not implemented");
  gram_ = at::zeros({num_blocks_, block_size_, block_size_}, weight_.options().dtype(at::kFloat));
}

void AwqClipLayer::collect(const at::Tensor& x) {
  const at::Tensor t = layer_tokens(x, weight_.size(1), "awq_clip", name_);
  const int64_t n = t.size(0);
  if (n == 0) return;
  ++num_batches_;
  if (per_tensor_) {
    num_tokens_ += n;
    const at::Tensor xf = t.to(at::kFloat);
    const at::Tensor w = weight_.detach();
    const at::Tensor wf = w.to(at::kFloat);
    const at::Tensor batch_losses =
        candidate_output_mse(xf, w.size(0), static_cast<int64_t>(ratios_.size()), [&](int64_t k) {
          const auto [a, zp] = clipped(at::scalar_tensor(ratios_[k], weight_amax_.options()));
          const at::Tensor wq = quantize_tensor(w, a, c10::nullopt, cfg_json_,
                                                zp.defined() ? c10::optional(zp) : c10::nullopt);
          return wq.to(at::kFloat) - wf;
        });
    losses_ += batch_losses.to(at::kDouble);
    return;
  }
  // Block-wise: sample tokens like the reference, then keep only their per-block second moments.
  const int64_t stride = std::max<int64_t>(1, n / options_.max_tokens_per_batch);
  const at::Tensor sampled = t.slice(0, 0, n, stride).to(at::kFloat);
  const int64_t ns = sampled.size(0);
  num_tokens_ += ns;
  const at::Tensor xb = pad_to_blocks(sampled, block_size_)
                            .reshape({ns, num_blocks_, block_size_})
                            .transpose(0, 1);  // [blocks, tokens, block]
  gram_.baddbmm_(xb.transpose(1, 2), xb, /*beta=*/1.0, /*alpha=*/1.0 / static_cast<double>(ns));
}

void AwqClipLayer::finish_pass(int) {
  const auto& group = calibration_group();
  if (!group || group->size <= 1) return;
  auto count = [&](int64_t n) {
    return group->all_reduce(at::scalar_tensor(n, at::kLong), ReduceOp::kSum).item<int64_t>();
  };
  // both are sums over batches of per-batch means, as one process sums them over every batch
  if (per_tensor_) {
    losses_ = group->all_reduce(losses_, ReduceOp::kSum);
  } else {
    gram_ = group->all_reduce(gram_, ReduceOp::kSum);
  }
  num_batches_ = count(num_batches_);
  num_tokens_ = count(num_tokens_);
}

LayerUpdate AwqClipLayer::solve(const LayerState&) {
  LayerUpdate u;
  AwqClipResult r = compute();
  u.weight_amax = r.amax;
  if (r.zero_point.defined()) u.weight_zero_point = r.zero_point;
  return u;
}

AwqClipResult AwqClipLayer::compute() const {
  MOPT_CHECK_STATE(num_batches_ > 0, "awq_clip: ", layer_label(name_),
                   " received no input from forward_loop");
  const auto n_ratios = static_cast<int64_t>(ratios_.size());
  const at::Tensor ratio_values = at::tensor(ratios_, at::kDouble).to(weight_amax_.options());
  const at::Tensor w = weight_.detach();
  AwqClipResult res;
  if (per_tensor_) {
    MOPT_CHECK_STATE(all_finite(losses_), "awq_clip: the inputs of ", layer_label(name_),
                     " hold NaN or Inf (the clip losses are not finite)");
    const int64_t best = first_argmin(losses_);
    res.ratio = ratio_values.narrow(0, best, 1).reshape(weight_amax_.sizes());
    res.losses = losses_.to(at::kFloat);
  } else {
    MOPT_CHECK_STATE(all_finite(gram_), "awq_clip: the inputs of ", layer_label(name_),
                     " hold NaN or Inf");
    const int64_t out = w.size(0);
    const at::Tensor wf = pad_to_blocks(w.to(at::kFloat), block_size_);
    std::vector<at::Tensor> per_ratio;
    per_ratio.reserve(ratios_.size());
    for (const double r : ratios_) {
      const auto [a, zp] = clipped(at::scalar_tensor(r, weight_amax_.options()));
      const at::Tensor wq = quantize_tensor(w, a, c10::nullopt, cfg_json_,
                                            zp.defined() ? c10::optional(zp) : c10::nullopt);
      // [blocks, out, block]: each row's quantization error within each block
      const at::Tensor err = (pad_to_blocks(wq.to(at::kFloat), block_size_) - wf)
                                 .reshape({out, num_blocks_, block_size_})
                                 .transpose(0, 1);
      std::vector<at::Tensor> chunks;
      for (int64_t c0 = 0; c0 < out; c0 += options_.max_co_batch_size) {
        const int64_t cn = std::min(options_.max_co_batch_size, out - c0);
        const at::Tensor e = err.narrow(1, c0, cn);
        chunks.push_back((at::bmm(e, gram_) * e).sum(-1).t());  // [cn, blocks]
      }
      per_ratio.push_back(chunks.size() == 1 ? chunks[0] : at::cat(chunks, 0));
    }
    const at::Tensor losses = at::stack(per_ratio);  // [ratios, out, blocks]
    const at::Tensor best = losses.argmin(0);        // first minimum
    res.ratio = ratio_values.index_select(0, best.reshape({-1})).reshape(weight_amax_.sizes());
    std::vector<int64_t> shape{n_ratios};
    shape.insert(shape.end(), weight_amax_.sizes().begin(), weight_amax_.sizes().end());
    res.losses = losses.reshape(shape);
  }
  // Scaled like the search: amax * ratio in fp32.
  std::tie(res.amax, res.zero_point) = clipped(res.ratio);
  return res;
}

std::pair<at::Tensor, at::Tensor> AwqClipLayer::clipped(const at::Tensor& ratio) const {
  if (!asymmetric_) return {weight_amax_ * ratio, at::Tensor()};
  const at::Tensor bound = at::maximum(weight_lo_.neg(), weight_hi_) * ratio;
  const auto [amax, zp] = int_asym_range(at::maximum(weight_lo_, bound.neg()),
                                         at::minimum(weight_hi_, bound), num_bits_);
  return {amax, zp};
}

}  // namespace mopt::algorithms
