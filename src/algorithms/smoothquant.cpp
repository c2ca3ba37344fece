#include "mopt/algorithms/smoothquant.h"

#include <ATen/ops/maximum.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <utility>

#include "algorithms/layer_stats.h"
#include "core/tensor_utils.h"
#include "mopt/algorithms/awq.h"
#include "mopt/core/distributed.h"
#include "mopt/core/error.h"
#include "mopt/quant/quantize_tensor.h"

namespace mopt::algorithms {
namespace {

constexpr double kMinScale = 1e-4;
constexpr double kMaxScale = 1e4;
// A channel whose max |x| stays at or below this never fires; scaling it would only blow up.
constexpr double kDeadChannelAmax = 1.0 / 2147483648.0;  // 2^-31

}  // namespace

at::Tensor smoothquant_scale(const at::Tensor& act_amax, const at::Tensor& weight_max,
                             double alpha) {
  MOPT_CHECK_VALUE(alpha >= 0.0 && alpha <= 1.0, "smoothquant alpha must be in [0, 1], got ",
                   alpha);
  MOPT_CHECK_VALUE(act_amax.dim() == 1 && act_amax.sizes() == weight_max.sizes(),
                   "smoothquant_scale expects act_amax and weight_max of the same shape [in], got ",
                   core::shape_str(act_amax.sizes()), " and ", core::shape_str(weight_max.sizes()));
  const at::Tensor a = act_amax.to(at::kFloat);
  const at::Tensor w = weight_max.to(a.device(), at::kFloat);
  at::Tensor s = w.pow(1.0 - alpha) / a.pow(alpha);
  s = at::where(a <= kDeadChannelAmax, at::scalar_tensor(1.0, a.options()), s);
  return s.clamp(kMinScale, kMaxScale);
}

SmoothedLinear fold_pre_quant_scale(const at::Tensor& weight, const at::Tensor& pre_quant_scale,
                                    const at::Tensor& act_amax,
                                    const c10::optional<at::Tensor>& prior_pre_quant_scale) {
  MOPT_CHECK_VALUE(weight.dim() == 2, "expected a linear weight [out, in], got shape ",
                   core::shape_str(weight.sizes()));
  const int64_t in = weight.size(1);
  MOPT_CHECK_VALUE(pre_quant_scale.dim() == 1 && pre_quant_scale.size(0) == in,
                   "pre_quant_scale must have shape [", in, "] for a weight of shape ",
                   core::shape_str(weight.sizes()), ", got ",
                   core::shape_str(pre_quant_scale.sizes()));
  MOPT_CHECK_VALUE(act_amax.dim() == 1 && act_amax.size(0) == in, "act_amax must have shape [", in,
                   "], got ", core::shape_str(act_amax.sizes()));
  const at::Tensor p = pre_quant_scale.to(weight.device(), at::kFloat);
  MOPT_CHECK_VALUE((p > 0).all().item<bool>(), "pre_quant_scale must be positive and finite");
  SmoothedLinear out;
  // Like the reference: the weight is multiplied by 1 / p computed in fp32, then stored in its
  // own dtype.
  out.weight = (weight.to(at::kFloat) * p.reciprocal().unsqueeze(0)).to(weight.scalar_type());
  out.input_amax = (act_amax.to(p.device(), at::kFloat) * p).amax();
  if (prior_pre_quant_scale.has_value() && prior_pre_quant_scale->defined()) {
    const at::Tensor prior = prior_pre_quant_scale->to(p.device(), at::kFloat).reshape({-1});
    MOPT_CHECK_VALUE(prior.numel() == in, "prior pre_quant_scale must have ", in, " elements, got ",
                     prior.numel());
    out.pre_quant_scale = prior * p;
  } else {
    out.pre_quant_scale = p;
  }
  return out;
}

std::optional<std::string> smoothquant_skip_reason(const std::string& name,
                                                   const QuantizerCore* input_quantizer,
                                                   const QuantizerCore* weight_quantizer) {
  auto is_int8 = [](const QuantizerCore* q) {
    return q && !q->attributes().num_bits.is_float && q->attributes().num_bits.bits == 8;
  };
  std::string reason;
  if (!is_int8(input_quantizer) || !is_int8(weight_quantizer)) {
    reason = "SmoothQuant smooths 8-bit integer weights and activations only";
  } else if (input_quantizer->is_static() && (input_quantizer->attributes().axis ||
                                               input_quantizer->attributes().block_sizes)) {
    // A dynamic input quantizer (e.g. per token) computes its scales from the smoothed inputs
    // themselves; a static one keeps a single calibrated amax, which the smoothing resets.
    reason = "SmoothQuant needs a static per-tensor or a dynamic input quantizer";
  } else if (input_quantizer->is_static() && input_quantizer->attributes().asymmetric) {
    // the smoothing sets a symmetric per-tensor input amax, with no zero point
    reason = "SmoothQuant sets a symmetric input amax; a static asymmetric input quantizer "
             "needs a zero point";
  } else {
    return std::nullopt;
  }
  return "smoothquant: layer '" + name + "' is not smoothed (" + reason +
         "); it gets max calibration";
}

void SmoothQuantLayer::finish_pass(int pass) {
  const auto& group = calibration_group();
  if (!group || group->size <= 1) return;
  if (pass == 1) {
    losses_ = group->all_reduce(losses_, ReduceOp::kSum);
    num_search_steps_ =
        group->all_reduce(at::scalar_tensor(num_search_steps_, at::kLong), ReduceOp::kSum)
            .item<int64_t>();
    return;
  }
  const int64_t in = weight_.size(1);
  const at::Tensor mine =
      act_amax_.defined() ? act_amax_ : at::zeros({in}, weight_.options().dtype(at::kFloat));
  act_amax_ = group->all_reduce(mine, ReduceOp::kMax);
  num_batches_ = group->all_reduce(at::scalar_tensor(num_batches_, at::kLong), ReduceOp::kSum)
                     .item<int64_t>();
  if (num_batches_ == 0) act_amax_ = at::Tensor();
}

LayerUpdate SmoothQuantLayer::solve(const LayerState& state) {
  const SmoothedLinear s = compute(state.input_pre_quant_scale);
  LayerUpdate u;
  u.weight = s.weight;
  u.pre_quant_scale = s.pre_quant_scale.to(weight_.scalar_type());
  u.input_amax = s.input_amax;
  u.recalibrate_weight = true;
  return u;
}

SmoothQuantLayer::SmoothQuantLayer(at::Tensor weight, double alpha, std::string name)
    : weight_(std::move(weight)), alpha_(alpha), name_(std::move(name)) {
  check_linear_weight(weight_, "smoothquant", name_);
  MOPT_CHECK_VALUE(alpha >= 0.0 && alpha <= 1.0, "smoothquant alpha must be in [0, 1], got ",
                   alpha);
}

SmoothQuantLayer::SmoothQuantLayer(at::Tensor weight, const QuantizerAttributeConfig& input_cfg,
                                   const QuantizerAttributeConfig& weight_cfg,
                                   SmoothQuantSearchOptions options, std::string name)
    : SmoothQuantLayer(std::move(weight), 1.0, std::move(name)) {
  MOPT_CHECK_VALUE(options.alpha_step > 0.0 && options.alpha_step <= 1.0,
                   "smoothquant alpha_step must be in (0, 1], got ", options.alpha_step);
  MOPT_CHECK_VALUE(options.max_tokens_per_batch > 0,
                   "smoothquant max_tokens_per_batch must be positive, got ",
                   options.max_tokens_per_batch);
  alphas_ = awq_alpha_grid(options.alpha_step);
  input_cfg_json_ = input_cfg.to_json();
  weight_cfg_json_ = weight_cfg.to_json();
  // as QuantizerCore::is_static: a dynamic type or dynamic blocks compute scales per call
  input_static_ = input_cfg.type != "dynamic" &&
                  !(input_cfg.block_sizes && input_cfg.block_sizes->dynamic());
  max_tokens_per_batch_ = options.max_tokens_per_batch;
  losses_ = at::zeros({static_cast<int64_t>(alphas_.size())},
                      weight_.options().dtype(at::kDouble));
}

void SmoothQuantLayer::collect(const at::Tensor& x) {
  const at::Tensor t = layer_tokens(x, weight_.size(1), "smoothquant", name_);
  if (t.size(0) == 0) return;  // an expert that received no token
  const at::Tensor m = t.abs().amax(0).to(at::kFloat);
  act_amax_ = act_amax_.defined() ? at::maximum(act_amax_, m) : m;
  ++num_batches_;
}

void SmoothQuantLayer::search(const at::Tensor& x) {
  MOPT_CHECK_STATE(searches(), "smoothquant: ", layer_label(name_),
                   ": search() on a layer built without an alpha search");
  check_ready();
  const at::Tensor t = layer_tokens(x, weight_.size(1), "smoothquant", name_);
  const int64_t n = t.size(0);
  if (n == 0) return;
  const at::Tensor sampled = t.slice(0, 0, n, std::max<int64_t>(1, n / max_tokens_per_batch_));
  const at::Tensor w = weight_.detach();
  const at::Tensor reference = sampled.to(at::kFloat).mm(w.to(at::kFloat).t());
  const at::Tensor w_max = weight_max();
  std::vector<at::Tensor> batch_losses;
  batch_losses.reserve(alphas_.size());
  for (const double alpha : alphas_) {
    // What the update would set for this alpha: pre_quant_scale (in the weight's dtype, as the
    // quantizer stores it), W / s, the per-tensor input amax; the weight amax from W / s.
    const SmoothedLinear f =
        fold_pre_quant_scale(w, smoothquant_scale(act_amax_, w_max, alpha), act_amax_);
    const at::Tensor xq = quantize_tensor(
        sampled, input_static_ ? c10::optional<at::Tensor>(f.input_amax) : c10::nullopt,
        f.pre_quant_scale.to(w.scalar_type()), input_cfg_json_);
    const at::Tensor wq = quantize_tensor(f.weight, c10::nullopt, c10::nullopt, weight_cfg_json_);
    batch_losses.push_back(
        (xq.to(at::kFloat).mm(wq.to(at::kFloat).t()) - reference).pow(2).mean());
  }
  losses_ += at::stack(batch_losses).to(at::kDouble);
  ++num_search_steps_;
  num_search_tokens_ += sampled.size(0);
}

double SmoothQuantLayer::alpha() const {
  if (!searches()) return alpha_;
  MOPT_CHECK_STATE(num_search_steps_ > 0, "smoothquant: ", layer_label(name_),
                   " received no input during the alpha search pass of forward_loop");
  const at::Tensor host = losses_.to(at::kCPU).contiguous();
  MOPT_CHECK_STATE(host.isfinite().all().item<bool>(), "smoothquant: the alpha search losses of ",
                   layer_label(name_), " are not finite");
  const double* v = host.data_ptr<double>();
  size_t best = 0;  // the first minimum
  for (size_t i = 1; i < alphas_.size(); ++i) {
    if (v[i] < v[best]) best = i;
  }
  return alphas_[best];
}

at::Tensor SmoothQuantLayer::weight_max() const {
  return weight_.detach().abs().amax(0).to(at::kFloat);
}

void SmoothQuantLayer::check_ready() const {
  MOPT_CHECK_STATE(num_batches_ > 0, "smoothquant: ", layer_label(name_),
                   " received no input from forward_loop");
  MOPT_CHECK_STATE(act_amax_.isfinite().all().item<bool>(), "smoothquant: the inputs of ",
                   layer_label(name_), " hold NaN or Inf (per-channel max |x| is not finite)");
}

at::Tensor SmoothQuantLayer::scale() const {
  check_ready();
  const at::Tensor w = weight_max();
  MOPT_CHECK_STATE(w.isfinite().all().item<bool>(), "smoothquant: the weight of ",
                   layer_label(name_), " holds NaN or Inf");
  return smoothquant_scale(act_amax_, w, alpha());
}

SmoothedLinear SmoothQuantLayer::compute(
    const c10::optional<at::Tensor>& prior_pre_quant_scale) const {
  return fold_pre_quant_scale(weight_.detach(), scale(), act_amax_, prior_pre_quant_scale);
}

}  // namespace mopt::algorithms
