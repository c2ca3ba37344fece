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
  sync_buffers();
}

void TensorQuantizerImpl::sync_buffers() {
  // torch::nn::Module can register a buffer but not remove one; rebuilding the base's registry
  // (it holds no parameters or children) gives Python's "buffer present only when set".
  torch::nn::Module fresh;
  if (amax_.defined()) fresh.register_buffer("_amax", amax_);
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
  if (amax_.defined() || zero_point_.defined()) {
    amax_ = at::Tensor();
    zero_point_ = at::Tensor();
    sync_buffers();
  }
  core_.reset_calibrator();
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
  if (amax_.defined() && amax_.sizes() != amax->sizes()) amax_ = at::Tensor();
  store_amax(*amax, /*validate=*/false);  // check_amax reports bad calibration results
  if (const auto zp = core_.compute_zero_point()) set_zero_point(*zp);
}

at::Tensor TensorQuantizerImpl::forward(const at::Tensor& inputs) {
  return core_.forward(inputs, amax(), pre_quant_scale(), zero_point());
}

void TensorQuantizerImpl::pretty_print(std::ostream& stream) const {
  stream << "TensorQuantizer(" << extra_repr() << ")";
}

void TensorQuantizerImpl::load(torch::serialize::InputArchive& archive) {
  // Everything is read and checked before anything changes: a bad checkpoint leaves the
  // quantizer as it was.
  std::array<at::Tensor, 3> values;
  std::array<bool, 3> found{};
  const std::array<const char*, 3> keys{"_amax", "_pre_quant_scale", "_zero_point"};
  std::array<at::Tensor*, 3> slots{&amax_, &pre_quant_scale_, &zero_point_};
  for (size_t i = 0; i < keys.size(); ++i) {
    found[i] = archive.try_read(keys[i], values[i], /*is_buffer=*/true);
    const at::Tensor& slot = *slots[i];
    MOPT_CHECK_VALUE(found[i] || !slot.defined(), "checkpoint has no '", keys[i],
                     "' for quantizer '",
                     quantizer_name().empty() ? "TensorQuantizer" : quantizer_name(),
                     "', which has one");
  }
  if (found[0]) values[0] = core_.amax_to_store(values[0], c10::nullopt, /*validate=*/true);
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
