#include "mopt/algorithms/smoothquant.h"

#include <ATen/ops/maximum.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>

#include <utility>

#include "algorithms/layer_stats.h"
#include "core/tensor_utils.h"
#include "mopt/core/distributed.h"
#include "mopt/core/error.h"

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
  } else {
    return std::nullopt;
  }
  return "smoothquant: layer '" + name + "' is not smoothed (" + reason +
         "); it gets max calibration";
}

void SmoothQuantLayer::finish_pass(int) {
  const auto& group = calibration_group();
  if (!group || group->size <= 1) return;
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

void SmoothQuantLayer::collect(const at::Tensor& x) {
  const at::Tensor t = layer_tokens(x, weight_.size(1), "smoothquant", name_);
  if (t.size(0) == 0) return;  // an expert that received no token
  const at::Tensor m = t.abs().amax(0).to(at::kFloat);
  act_amax_ = act_amax_.defined() ? at::maximum(act_amax_, m) : m;
  ++num_batches_;
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
  return smoothquant_scale(act_amax_, w, alpha_);
}

SmoothedLinear SmoothQuantLayer::compute(
    const c10::optional<at::Tensor>& prior_pre_quant_scale) const {
  return fold_pre_quant_scale(weight_.detach(), scale(), act_amax_, prior_pre_quant_scale);
}

}  // namespace mopt::algorithms
