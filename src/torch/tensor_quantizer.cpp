#include "mopt/torch/tensor_quantizer.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/mul.h>
#include <c10/util/Exception.h>
#include <torch/serialize/archive.h>

#include <cmath>
#include <cstdio>
#include <sstream>

#include "mopt/core/error.h"
#include "mopt/quant/fake_quant.h"
#include "mopt/quant/quantize_tensor.h"

namespace mopt {
namespace {

// Python's f"{x:.2e}" for a float (nan is printed without a sign).
std::string format_e2(double v) {
  if (std::isnan(v)) return "nan";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.2e", v);
  return buf;
}

// Python's repr of a num_bits value: 8 or (4, 3).
std::string num_bits_repr(const NumBits& n) {
  if (!n.is_float) return std::to_string(n.bits);
  return "(" + std::to_string(n.exponent) + ", " + std::to_string(n.mantissa) + ")";
}

std::string block_axes_repr(const std::vector<BlockAxis>& axes) {
  std::string s;
  for (const auto& [axis, size] : axes) {
    s += (s.empty() ? "" : ", ") + std::to_string(axis) + ": " +
         (size ? std::to_string(*size) : std::string("None"));
  }
  return s;
}

// Python's repr of the block_sizes dict as mtq shows it ({-1: 128, 'type': 'static'}): axes in
// config order, then 'type', then the scale keys that are set.
std::string block_sizes_repr(const BlockSizes& b) {
  std::string s = "{" + block_axes_repr(b.axes);
  s += ", 'type': '" + b.type + "'";
  if (b.scale_bits) s += ", 'scale_bits': " + num_bits_repr(*b.scale_bits);
  if (!b.scale_block_sizes.empty()) {
    s += ", 'scale_block_sizes': {" + block_axes_repr(b.scale_block_sizes) + "}";
  }
  return s + "}";
}

std::string axis_repr(const std::vector<int64_t>& axis) {
  if (axis.size() == 1) return std::to_string(axis[0]);
  std::string s = "(";
  for (size_t i = 0; i < axis.size(); ++i) s += (i ? ", " : "") + std::to_string(axis[i]);
  return s + ")";
}

std::string short_tensor(const at::Tensor& t) {
  if (t.numel() == 1) return format_e2(t.item<double>());
  return "[" + format_e2(t.min().item<double>()) + ", " + format_e2(t.max().item<double>()) +
         "](" + std::to_string(t.numel()) + ")";
}

std::string calibrator_class(const std::string& kind) {
  if (kind == "max") return "MaxCalibrator";
  if (kind == "histogram") return "HistogramCalibrator";
  return "Calibrator";
}

// The fields whose change makes a new calibrator (as in Python's _set_attr).
bool same_calibration(const QuantizerAttributeConfig& a, const QuantizerAttributeConfig& b) {
  auto block_json = [](const QuantizerAttributeConfig& c) {
    QuantizerAttributeConfig only;
    only.block_sizes = c.block_sizes;
    return only.to_json();
  };
  return a.calibrator == b.calibrator && a.num_bits == b.num_bits && a.axis == b.axis &&
         a.is_unsigned == b.is_unsigned && block_json(a) == block_json(b);
}

}  // namespace

TensorQuantizerImpl::TensorQuantizerImpl(QuantizerAttributeConfig attributes, bool if_quant,
                                         bool if_calib)
    : if_quant_(if_quant), if_calib_(if_calib) {
  set_from_attribute_config(attributes);
}

void TensorQuantizerImpl::reset() {
  // A clone must not share buffers with its source: Cloneable copies the data in afterwards.
  if (amax_.defined()) amax_ = amax_.detach().clone();
  if (pre_quant_scale_.defined()) pre_quant_scale_ = pre_quant_scale_.detach().clone();
  sync_buffers();
}

void TensorQuantizerImpl::sync_buffers() {
  // torch::nn::Module can register a buffer but not remove one; rebuilding the base's registry
  // (it holds no parameters or children) gives Python's "buffer present only when set".
  torch::nn::Module fresh;
  if (amax_.defined()) fresh.register_buffer("_amax", amax_);
  if (pre_quant_scale_.defined()) fresh.register_buffer("_pre_quant_scale", pre_quant_scale_);
  fresh.train(is_training());
  torch::nn::Module::operator=(fresh);
}

void TensorQuantizerImpl::set_from_attribute_config(const QuantizerAttributeConfig& attributes) {
  // resolve_format raises NotImplementedError for formats without a kernel, before any state
  // changes.
  const ResolvedFormat format = resolve_format(attributes);
  const bool renew_calibrator = attr_json_.empty() || !same_calibration(attr_, attributes);
  attr_ = attributes;
  attr_json_ = attributes.to_json();
  disabled_ = !attributes.enable;
  needs_amax_ = format.calibrated;
  if (renew_calibrator) {
    calibrator_.reset();
    calibrator_axes_.reset();
  }
}

void TensorQuantizerImpl::set_attributes(const std::string& json) {
  set_from_attribute_config(attr_.updated(json));
}

double TensorQuantizerImpl::maxbound() const {
  const NumBits& n = attr_.num_bits;
  if (n.is_float) return minifloat_max_value(n.exponent, n.mantissa);
  return static_cast<double>((int64_t{1} << (n.bits - 1 + (attr_.is_unsigned ? 1 : 0))) - 1);
}

c10::optional<at::Tensor> TensorQuantizerImpl::step_size() const {
  if (!amax_.defined()) return c10::nullopt;
  return amax_ / maxbound();
}

c10::optional<at::Tensor> TensorQuantizerImpl::amax() const {
  if (!amax_.defined()) return c10::nullopt;
  return amax_;
}

void TensorQuantizerImpl::set_amax(const at::Tensor& value) {
  MOPT_CHECK_VALUE(value.defined(), "set_amax needs a defined tensor; use reset_amax() to remove");
  at::Tensor v = value.detach().to(at::kFloat);
  if (!amax_.defined()) {
    amax_ = v.clone();
    sync_buffers();
    return;
  }
  MOPT_CHECK_STATE(amax_.sizes() == v.sizes(),
                   "Changing shape when setting amax is not allowed: ", amax_.sizes(), " -> ",
                   v.sizes(), " (call reset_amax() first)");
  at::NoGradGuard no_grad;
  amax_.copy_(v.to(amax_.device()));
}

void TensorQuantizerImpl::reset_amax() {
  if (amax_.defined()) {
    amax_ = at::Tensor();
    sync_buffers();
  }
  if (calibrator_) calibrator_->reset();
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

void TensorQuantizerImpl::enable_calib() {
  MOPT_CHECK_IMPLEMENTED(attr_.calibrator == "max", "quantizer '",
                         name_.empty() ? "TensorQuantizer" : name_, "' uses the '",
                         attr_.calibrator, "' calibrator, which the C++ module API does not "
                         "provide (it calibrates with 'max'); calibrate this model from Python");
  if_calib_ = true;
}

at::Tensor TensorQuantizerImpl::calib_view(const at::Tensor& inputs) {
  MOPT_CHECK_IMPLEMENTED(attr_.calibrator == "max", "quantizer '",
                         name_.empty() ? "TensorQuantizer" : name_, "' uses the '",
                         attr_.calibrator, "' calibrator, which the C++ module API does not "
                         "provide (it calibrates with 'max')");
  at::Tensor view = quantizer_calib_view(inputs, pre_quant_scale(), attr_json_);
  std::vector<int64_t> axes = quantizer_amax_axes(attr_, inputs.dim());
  std::optional<std::vector<int64_t>> keep;
  if (!axes.empty()) keep = std::move(axes);
  if (!calibrator_ || calibrator_axes_ != keep) {
    // The kept axes follow the input's rank; changing them mid-way would mix amax shapes.
    MOPT_CHECK_STATE(!calibrator_ || !calibrator_->compute_amax().has_value(),
                     "amax shape changed! (the calibrator's axis changed mid-way)");
    calibrator_.emplace(attr_.num_bits.bits, keep, attr_.is_unsigned, false);
    calibrator_axes_ = keep;
  }
  return view;
}

void TensorQuantizerImpl::collect(const at::Tensor& inputs) {
  at::Tensor view = calib_view(inputs);
  calibrator_->collect(view);
}

void TensorQuantizerImpl::load_calib_amax() {
  c10::optional<at::Tensor> amax = calibrator_ ? calibrator_->compute_amax() : c10::nullopt;
  if (!amax.has_value()) {
    TORCH_WARN("mopt: quantizer '", name_.empty() ? "TensorQuantizer" : name_,
               "' collected no data; its amax is left unset (it quantizes with the dynamic "
               "amax of each input)");
    return;
  }
  if (amax_.defined() && amax_.sizes() != amax->sizes()) amax_ = at::Tensor();
  set_amax(*amax);
}

at::Tensor TensorQuantizerImpl::scaled_input(const at::Tensor& inputs) const {
  if (!pre_quant_scale_.defined()) return inputs;
  return at::mul(inputs, pre_quant_scale_.to(inputs.scalar_type()));
}

at::Tensor TensorQuantizerImpl::forward(const at::Tensor& inputs) {
  if (disabled_ || !(if_quant_ || if_calib_)) return scaled_input(inputs);
  if (if_calib_ && needs_amax_) {
    at::Tensor view = calib_view(inputs);
    calibrator_->collect(view);
  }
  if (!if_quant_) return scaled_input(inputs);
  if (!amax_.defined() && needs_amax_ && !warned_uncalibrated_) {
    warned_uncalibrated_ = true;
    TORCH_WARN("mopt: static quantizer '", name_.empty() ? "TensorQuantizer" : name_,
               "' has no calibrated amax; using the dynamic amax of its input");
  }
  return quantize_tensor(inputs, amax(), pre_quant_scale(), attr_json_);
}

std::string TensorQuantizerImpl::short_amax() const {
  if (!amax_.defined()) return "dynamic";
  return amax_.is_meta() ? "meta" : short_tensor(amax_);
}

std::string TensorQuantizerImpl::extra_repr() const {
  if (disabled_) {
    std::string s = "disabled";
    if (pre_quant_scale_.defined()) s += " pre_quant_scale=" + short_tensor(pre_quant_scale_);
    return s;
  }
  const QuantizerAttributeConfig& a = attr_;
  std::string s =
      std::string(a.is_unsigned ? "unsigned " : "") + num_bits_repr(a.num_bits) + " bit";
  if (a.narrow_range) s += " narrow";
  if (a.fake_quant) s += " fake";
  if (a.block_sizes) {
    s += " block_sizes=" + block_sizes_repr(*a.block_sizes) + ",";
  } else {
    s += a.axis ? " axis=" + axis_repr(*a.axis) : std::string(" per-tensor");
  }
  s += " amax=" + short_amax();
  if (pre_quant_scale_.defined()) s += " pre_quant_scale=" + short_tensor(pre_quant_scale_);
  s += " calibrator=" + calibrator_class(a.calibrator);
  if (if_quant_) s += " quant";
  if (if_calib_) s += " calib";
  return s;
}

void TensorQuantizerImpl::pretty_print(std::ostream& stream) const {
  stream << "TensorQuantizer(" << extra_repr() << ")";
}

void TensorQuantizerImpl::load(torch::serialize::InputArchive& archive) {
  for (const char* key : {"_amax", "_pre_quant_scale"}) {
    at::Tensor value;
    const bool found = archive.try_read(key, value, /*is_buffer=*/true);
    at::Tensor& slot = std::string(key) == "_amax" ? amax_ : pre_quant_scale_;
    MOPT_CHECK_VALUE(found || !slot.defined(), "checkpoint has no '", key, "' for quantizer '",
                     name_.empty() ? "TensorQuantizer" : name_, "', which has one");
    if (!found) continue;
    const auto device = slot.defined() ? slot.device() : value.device();
    slot = value.detach().to(device);
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
