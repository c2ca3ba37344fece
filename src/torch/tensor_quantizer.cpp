#include "mopt/torch/tensor_quantizer.h"

#include <array>
#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>
#include <torch/serialize/archive.h>

#include "mopt/core/error.h"

namespace mopt {

TensorQuantizerImpl::TensorQuantizerImpl(QuantizerAttributeConfig attributes, bool if_quant,
                                         bool if_calib)
    : core_(attributes) {
  QuantizerFlags flags = core_.flags();
  flags.quant = if_quant;
  flags.calib = if_calib;
  core_.set_flags(flags);
}

void TensorQuantizerImpl::reset() {
  // A clone must not share buffers with its source: Cloneable copies the data in afterwards.
  if (amax_.defined()) amax_ = amax_.detach().clone();
  if (pre_quant_scale_.defined()) pre_quant_scale_ = pre_quant_scale_.detach().clone();
  if (zero_point_.defined()) zero_point_ = zero_point_.detach().clone();
  if (amax_pre_.defined()) amax_pre_ = amax_pre_.detach().clone();
  sync_buffers();
}

void TensorQuantizerImpl::sync_buffers() {
  // torch::nn::Module can register a buffer but not remove one; rebuilding the base's registry
  // (it holds no children) gives Python's "buffer present only when set". Learned amaxes are
  // parameters, as in Python, so parameters() hands them to an optimizer.
  torch::nn::Module fresh;
  const bool learn_post = lsq_ && lsq_->learn_post;
  const bool learn_pre = lsq_ && !lsq_->tied && lsq_->learn_pre;
  if (amax_.defined()) {
    if (learn_post) {
      fresh.register_parameter("_amax", amax_);
    } else {
      amax_.requires_grad_(false);
      fresh.register_buffer("_amax", amax_);
    }
  }
  if (amax_pre_.defined()) {
    if (learn_pre) {
      fresh.register_parameter("_amax_pre", amax_pre_);
    } else {
      amax_pre_.requires_grad_(false);
      fresh.register_buffer("_amax_pre", amax_pre_);
    }
  }
  if (pre_quant_scale_.defined()) fresh.register_buffer("_pre_quant_scale", pre_quant_scale_);
  if (zero_point_.defined()) fresh.register_buffer("_zero_point", zero_point_);
  fresh.train(is_training());
  torch::nn::Module::operator=(fresh);
}

void TensorQuantizerImpl::set_from_attribute_config(const QuantizerAttributeConfig& attributes) {
  core_.set_attributes(attributes);
}

void TensorQuantizerImpl::set_attributes(const std::string& json) {
  core_.set_attributes(core_.attributes().updated(json));
}

c10::optional<at::Tensor> TensorQuantizerImpl::step_size() const {
  if (!amax_.defined()) return c10::nullopt;
  return amax_ / maxbound();
}

c10::optional<at::Tensor> TensorQuantizerImpl::amax() const {
  if (!amax_.defined()) return c10::nullopt;
  return amax_;
}

void TensorQuantizerImpl::set_amax(const at::Tensor& value) { store_amax(value, true); }

void TensorQuantizerImpl::store_amax(const at::Tensor& value, bool validate) {
  at::Tensor v = core_.amax_to_store(value, amax(), validate);
  if (!amax_.defined()) {
    amax_ = v.clone();
    sync_buffers();
    return;
  }
  at::NoGradGuard no_grad;
  amax_.copy_(v.to(amax_.device()));
}

void TensorQuantizerImpl::reset_amax() {
  if (amax_.defined() || zero_point_.defined() || amax_pre_.defined() || lsq_) {
    amax_ = at::Tensor();
    zero_point_ = at::Tensor();
    amax_pre_ = at::Tensor();
    lsq_.reset();
    sync_buffers();
  }
  core_.reset_calibrator();
}

void TensorQuantizerImpl::enable_lsq(const opt::LsqState& lsq) {
  const std::string label = quantizer_name().empty() ? "TensorQuantizer" : quantizer_name();
  MOPT_CHECK_VALUE(amax_.defined(), "quantizer '", label, "': enable_lsq needs a calibrated amax");
  const QuantizerAttributeConfig& a = attribute_config();
  MOPT_CHECK_VALUE(is_static() && !a.asymmetric &&
                       std::string(core_.format().info->kernel) == "fake_quant",
                   "quantizer '", label, "': learned scales need a static symmetric integer or "
                   "minifloat format, got ", core_.format().name,
                   is_static() ? "" : " (dynamic)", a.asymmetric ? " (asymmetric)" : "");
  MOPT_CHECK_VALUE(!lsq.tied || lsq.learn_pre == lsq.learn_post, "quantizer '", label,
                   "': a tied amax is learned for both pre and post or for neither");
  // New tensors, not the old buffer: an optimizer holding the old one must not move them.
  at::Tensor value = amax_.detach().to(at::kFloat).clone();
  amax_pre_ = lsq.tied ? at::Tensor() : value.clone();
  amax_ = value;
  lsq_ = lsq;
  sync_buffers();
}

std::vector<std::string> TensorQuantizerImpl::learnable_amax() const {
  std::vector<std::string> out;
  if (lsq_ && lsq_->learn_pre) out.push_back("pre");
  if (lsq_ && lsq_->learn_post) out.push_back("post");
  return out;
}

c10::optional<at::Tensor> TensorQuantizerImpl::amax_pre() const {
  if (lsq_ && !lsq_->tied && amax_pre_.defined()) return amax_pre_;
  return amax();
}

void TensorQuantizerImpl::set_amax_pre(const at::Tensor& value) {
  MOPT_CHECK_VALUE(lsq_ && !lsq_->tied && amax_pre_.defined(), "quantizer '",
                   quantizer_name().empty() ? "TensorQuantizer" : quantizer_name(),
                   "': set_amax_pre needs untied learned scales (enable_lsq)");
  const at::Tensor v = core_.amax_to_store(value, amax_pre_, /*validate=*/true);
  at::NoGradGuard no_grad;
  amax_pre_.copy_(v.to(amax_pre_.device()));
}

std::string TensorQuantizerImpl::extra_repr() const {
  const std::string text = core_.extra_repr(amax(), pre_quant_scale());
  return lsq_ ? text + opt::lsq_extra_repr(*lsq_, amax_pre()) : text;
}

c10::optional<at::Tensor> TensorQuantizerImpl::zero_point() const {
  if (!zero_point_.defined()) return c10::nullopt;
  return zero_point_;
}

void TensorQuantizerImpl::set_zero_point(const at::Tensor& value) {
  at::Tensor v = core_.zero_point_to_store(value, amax());
  if (!zero_point_.defined() || zero_point_.sizes() != v.sizes()) {
    zero_point_ = amax_.defined() ? v.to(amax_.device()).clone() : v.clone();
    sync_buffers();
    return;
  }
  at::NoGradGuard no_grad;
  zero_point_.copy_(v.to(zero_point_.device()));
}

c10::optional<at::Tensor> TensorQuantizerImpl::pre_quant_scale() const {
  if (!pre_quant_scale_.defined()) return c10::nullopt;
  return pre_quant_scale_;
}

void TensorQuantizerImpl::set_pre_quant_scale(const c10::optional<at::Tensor>& value) {
  if (!value.has_value() || !value->defined()) {
    if (pre_quant_scale_.defined()) {
      pre_quant_scale_ = at::Tensor();
      sync_buffers();
    }
    return;
  }
  at::Tensor v = value->detach();
  if (!pre_quant_scale_.defined() || pre_quant_scale_.sizes() != v.sizes()) {
    pre_quant_scale_ = v.clone();
    sync_buffers();
  } else {
    at::NoGradGuard no_grad;
    pre_quant_scale_.copy_(v.to(pre_quant_scale_.device()));
  }
}

void TensorQuantizerImpl::collect(const at::Tensor& inputs) {
  core_.collect(inputs, pre_quant_scale());
}

void TensorQuantizerImpl::load_calib_amax(const AmaxRequest& request) {
  const c10::optional<at::Tensor> amax = core_.compute_amax(request);
  if (!amax.has_value()) return;
  if (lsq_ || (amax_.defined() && amax_.sizes() != amax->sizes())) {
    // recalibration replaces learned scales by the calibrated amax
    amax_ = at::Tensor();
    amax_pre_ = at::Tensor();
    lsq_.reset();
  }
  store_amax(*amax, /*validate=*/false);  // check_amax reports bad calibration results
  if (const auto zp = core_.compute_zero_point()) set_zero_point(*zp);
}

at::Tensor TensorQuantizerImpl::forward(const at::Tensor& inputs) {
  if (lsq_ && !lsq_->tied && amax_pre_.defined()) {
    return core_.forward(inputs, amax_pre_, pre_quant_scale(), zero_point(), amax_);
  }
  return core_.forward(inputs, amax(), pre_quant_scale(), zero_point());
}

void TensorQuantizerImpl::pretty_print(std::ostream& stream) const {
  stream << "TensorQuantizer(" << extra_repr() << ")";
}

void TensorQuantizerImpl::load(torch::serialize::InputArchive& archive) {
  // Everything is read and checked before anything changes: a bad checkpoint leaves the
  // quantizer as it was.
  const std::string label = quantizer_name().empty() ? "TensorQuantizer" : quantizer_name();
  std::array<at::Tensor, 4> values;
  std::array<bool, 4> found{};
  const std::array<const char*, 4> keys{"_amax", "_pre_quant_scale", "_zero_point",
                                        "_amax_pre"};
  std::array<at::Tensor*, 4> slots{&amax_, &pre_quant_scale_, &zero_point_, &amax_pre_};
  const bool untied = lsq_ && !lsq_->tied;
  for (size_t i = 0; i < keys.size(); ++i) {
    // learned amaxes were written as parameters, the others as buffers
    const bool learned = lsq_ && ((i == 0 && lsq_->learn_post) ||
                                  (i == 3 && untied && lsq_->learn_pre));
    found[i] = archive.try_read(keys[i], values[i], /*is_buffer=*/!learned);
    const at::Tensor& slot = *slots[i];
    MOPT_CHECK_VALUE(found[i] || !slot.defined(), "checkpoint has no '", keys[i],
                     "' for quantizer '", label, "', which has one");
  }
  MOPT_CHECK_VALUE(!found[3] || untied, "checkpoint has '_amax_pre' (untied learned scales) for "
                   "quantizer '", label, "', which has none: enable_lsq before loading");
  if (found[0]) values[0] = core_.amax_to_store(values[0], c10::nullopt, /*validate=*/true);
  if (found[3]) {
    values[3] = core_.amax_to_store(values[3], c10::nullopt, /*validate=*/true);
    const auto post = found[0] ? c10::optional(values[0]) : amax();
    MOPT_CHECK_VALUE(post && post->sizes() == values[3].sizes(), "checkpoint '_amax_pre' of "
                     "quantizer '", label, "' has shape ", values[3].sizes(),
                     ", its '_amax' another");
  }
  if (found[2]) {
    values[2] = core_.zero_point_to_store(values[2], found[0] ? c10::optional(values[0])
                                                              : amax());
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    if (!found[i]) continue;
    at::Tensor& slot = *slots[i];
    const auto device = slot.defined() ? slot.device() : values[i].device();
    slot = values[i].detach().to(device);
  }
  sync_buffers();
}

// ---------------------------------------------------------------------------------------------

SequentialQuantizerImpl::SequentialQuantizerImpl(size_t n) {
  MOPT_CHECK_VALUE(n >= 1, "a SequentialQuantizer needs at least one quantizer, got ", n);
  quantizers_.resize(n, TensorQuantizer(nullptr));
  reset();
}

void SequentialQuantizerImpl::reset() {
  for (size_t i = 0; i < quantizers_.size(); ++i) {
    quantizers_[i] = register_module(std::to_string(i), TensorQuantizer());
  }
}

at::Tensor SequentialQuantizerImpl::forward(const at::Tensor& inputs) {
  at::Tensor x = inputs;
  for (auto& q : quantizers_) x = q->forward(x);
  return x;
}

void SequentialQuantizerImpl::set_from_attribute_config(
    const std::vector<QuantizerAttributeConfig>& attributes) {
  MOPT_CHECK_VALUE(attributes.size() == quantizers_.size(), attributes.size(),
                   " attribute configs given for a SequentialQuantizer of ", quantizers_.size(),
                   " quantizers");
  for (size_t i = 0; i < attributes.size(); ++i) {
    quantizers_[i]->set_from_attribute_config(attributes[i]);
  }
}

void SequentialQuantizerImpl::set_attributes(const std::vector<std::string>& json) {
  MOPT_CHECK_VALUE(json.size() == quantizers_.size(), json.size(),
                   " attribute configs given for a SequentialQuantizer of ", quantizers_.size(),
                   " quantizers");
  for (size_t i = 0; i < json.size(); ++i) quantizers_[i]->set_attributes(json[i]);
}

void SequentialQuantizerImpl::enable() {
  for (auto& q : quantizers_) q->enable();
}

void SequentialQuantizerImpl::disable() {
  for (auto& q : quantizers_) q->disable();
}

bool SequentialQuantizerImpl::is_enabled() const {
  for (const auto& q : quantizers_) {
    if (q->is_enabled()) return true;
  }
  return false;
}

void SequentialQuantizerImpl::pretty_print(std::ostream& stream) const {
  stream << "SequentialQuantizer";
}

}  // namespace mopt
