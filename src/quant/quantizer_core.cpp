#include "mopt/quant/quantizer_core.h"

#include <ATen/ops/amax.h>
#include <ATen/ops/amin.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/round.h>
#include <ATen/ops/minimum.h>
#include <ATen/ops/neg.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/mul.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdio>

#include "fake_quant/fake_quant_math.h"
#include "mopt/calib/histogram_calibrator.h"
#include "mopt/calib/max_calibrator.h"
#include "mopt/calib/mse_calibrator.h"
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
  if (t.is_meta()) return "meta";
  if (t.numel() == 1) return format_e2(t.item<double>());
  return "[" + format_e2(t.min().item<double>()) + ", " + format_e2(t.max().item<double>()) +
         "](" + std::to_string(t.numel()) + ")";
}

// The fields whose change makes a new calibrator.
bool same_calibration(const QuantizerAttributeConfig& a, const QuantizerAttributeConfig& b) {
  auto block_json = [](const QuantizerAttributeConfig& c) {
    QuantizerAttributeConfig only;
    only.block_sizes = c.block_sizes;
    return only.to_json();
  };
  // block sizes compare by their normalized JSON, built only when both have some
  return a.calibrator == b.calibrator && a.num_bits == b.num_bits && a.axis == b.axis &&
         a.is_unsigned == b.is_unsigned && a.asymmetric == b.asymmetric &&
         ((!a.block_sizes && !b.block_sizes) || block_json(a) == block_json(b));
}

bool defined(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// "(4, 1)": shapes as Python shows them (messages reach Python users first).
std::string shape_tuple(at::IntArrayRef sizes) {
  std::string s = "(";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + (sizes.size() == 1 ? ",)" : ")");
}

// "torch.int64": dtypes as Python names them.
std::string dtype_name(at::ScalarType t) {
  return "torch." + std::string(c10::getDtypeNames(t).first);
}

}  // namespace

QuantizerCore::QuantizerCore(const QuantizerAttributeConfig& attributes,
                             CalibratorFactory factory) {
  set_attributes(attributes, std::move(factory));
}

QuantizerCore::QuantizerCore(const QuantizerCore& other) { *this = other; }

QuantizerCore& QuantizerCore::operator=(const QuantizerCore& other) {
  if (this == &other) return *this;
  attr_ = other.attr_;
  attr_json_ = other.attr_json_;
  disabled_json_ = other.disabled_json_;
  format_ = other.format_;
  flags_ = other.flags_;
  factory_ = other.factory_;
  calibrator_ = other.calibrator_ ? other.calibrator_->clone() : nullptr;
  batch_min_ = other.batch_min_.defined() ? other.batch_min_.clone() : at::Tensor();
  warned_uncalibrated_ = other.warned_uncalibrated_;
  name_ = other.name_;
  return *this;
}

std::string QuantizerCore::label() const { return name_.empty() ? "TensorQuantizer" : name_; }

void QuantizerCore::set_attributes(const QuantizerAttributeConfig& attributes,
                                   CalibratorFactory factory) {
  // resolve_format raises NotImplementedError for formats without a kernel, before any change.
  ResolvedFormat format = resolve_format(attributes);
  MOPT_CHECK_VALUE(attributes.calibrator != "custom" || factory || (factory_ && attr_json_.size()),
                   "quantizer '", label(), "': a custom calibrator config needs the front end's "
                   "calibrator factory");
  const bool renew = attr_json_.empty() || !same_calibration(attr_, attributes) ||
                     (factory && attributes.calibrator == "custom");
  attr_ = attributes;
  attr_json_ = attributes.to_json();
  QuantizerAttributeConfig disabled = attributes;
  disabled.enable = false;
  disabled_json_ = disabled.to_json();
  format_ = std::move(format);
  flags_.disabled = !attributes.enable;
  if (factory) factory_ = std::move(factory);
  if (renew) rebuild_calibrator();
}

void QuantizerCore::copy_attributes_from(const QuantizerCore& other) {
  if (this == &other) return;
  if (other.attr_.calibrator == "custom") {  // the factory decides; build it as set_attributes does
    set_attributes(other.attr_, other.factory_);
    return;
  }
  const bool renew = attr_json_.empty() || !same_calibration(attr_, other.attr_);
  attr_ = other.attr_;
  attr_json_ = other.attr_json_;
  disabled_json_ = other.disabled_json_;
  format_ = other.format_;
  flags_.disabled = !attr_.enable;
  if (other.factory_) factory_ = other.factory_;
  if (renew) {
    batch_min_ = at::Tensor();
    calibrator_ = other.calibrator_ ? other.calibrator_->clone() : nullptr;
  }
}

void QuantizerCore::rebuild_calibrator() {
  batch_min_ = at::Tensor();
  const NumBits& n = attr_.num_bits;
  if (attr_.calibrator == "max") {
    // a minifloat's width stands in for num_bits, which max calibration does not use
    calibrator_ = std::make_shared<MaxCalibrator>(n.bits, attr_.axis, attr_.is_unsigned,
                                                  /*track_amax=*/false, attr_.asymmetric);
  } else if (attr_.calibrator == "histogram") {
    calibrator_ = std::make_shared<HistogramCalibrator>(n, attr_.axis, attr_.is_unsigned);
  } else {
    calibrator_ = factory_ ? factory_() : nullptr;
  }
}

double quantizer_maxbound(const QuantizerAttributeConfig& attributes) {
  const NumBits& n = attributes.num_bits;
  if (n.is_float) return minifloat_max_value(n.exponent, n.mantissa);
  return kernels::fake_quant::int_scale_bound(n.bits, attributes.is_unsigned,
                                              attributes.uses_full_range());
}

double QuantizerCore::maxbound() const { return quantizer_maxbound(attr_); }

std::vector<int64_t> QuantizerCore::kept_axes(int64_t ndim) const {
  return quantizer_amax_axes(attr_, ndim);
}

void QuantizerCore::set_flags(const QuantizerFlags& flags) {
  MOPT_CHECK_VALUE(!flags.calib || calibrator_, "quantizer '", label(),
                   "' has no calibrator, so it cannot calibrate");
  flags_ = flags;
}

void QuantizerCore::enable_calib() {
  MOPT_CHECK_VALUE(calibrator_ != nullptr, "quantizer '", label(),
                   "' has no calibrator, so it cannot calibrate");
  flags_.calib = true;
}

void QuantizerCore::set_calibrator(std::shared_ptr<Calibrator> calibrator) {
  const auto* max = dynamic_cast<const MaxCalibrator*>(calibrator.get());
  MOPT_CHECK_IMPLEMENTED(!attr_.asymmetric || !calibrator || (max && max->asymmetric()),
                         "quantizer '", label(), "' is asymmetric (zero points): only its min/max "
                         "calibration is implemented, not ", calibrator->class_name());
  calibrator_ = std::move(calibrator);
  batch_min_ = at::Tensor();
}

at::Tensor QuantizerCore::calib_view(const at::Tensor& x,
                                     const c10::optional<at::Tensor>& pre_quant_scale) {
  MOPT_CHECK_TYPE(x.is_floating_point(), "quantizer '", label(), "' got a ",
                  dtype_name(x.scalar_type()), " tensor; only floating-point tensors (float32, "
                  "float16, bfloat16) can be quantized");
  return quantizer_calib_view(x, pre_quant_scale, attr_json_);
}

void QuantizerCore::collect(const at::Tensor& x,
                            const c10::optional<at::Tensor>& pre_quant_scale) {
  MOPT_CHECK_VALUE(calibrator_ != nullptr, "quantizer '", label(),
                   "' has no calibrator, so it cannot calibrate");
  if (x.numel() == 0) return;  // an empty batch is no data: it must not count as amax 0
  const at::Tensor view = calib_view(x, pre_quant_scale).detach();
  std::vector<int64_t> axes = kept_axes(x.dim());
  calibrator_->set_axis(axes.empty() ? std::nullopt : std::optional(std::move(axes)));
  if (attr_.is_unsigned && view.numel() > 0) {
    const at::Tensor m = at::amin(view).to(at::kFloat);
    batch_min_ = batch_min_.defined() ? at::minimum(batch_min_, m.to(batch_min_.device())) : m;
  }
  calibrator_->collect(view);
}

c10::optional<at::Tensor> QuantizerCore::compute_amax(const AmaxRequest& request) {
  MOPT_CHECK_VALUE(calibrator_ != nullptr, "quantizer '", label(),
                   "' has no calibrator, so it has no amax to compute");
  if (const auto& group = calibration_group(); group && group->size > 1) {
    calibrator_->all_reduce(*group);
    if (attr_.is_unsigned) {
      // the ranks' minima, so that every rank raises (or none does)
      const at::Tensor mine = batch_min_.defined() ? batch_min_.cpu() : at::zeros({}, at::kFloat);
      batch_min_ = at::neg(group->all_reduce(at::neg(mine), ReduceOp::kMax));
    }
  }
  // The one host synchronization of the unsigned check, after the data is in.
  MOPT_CHECK_VALUE(!batch_min_.defined() || batch_min_.item<float>() >= 0.0f,
                   "unsigned quantizer '", label(), "' met negative values while calibrating (",
                   batch_min_.defined() ? batch_min_.item<float>() : 0.0f,
                   "); use unsigned=False for this tensor");
  c10::optional<at::Tensor> amax = calibrator_->compute_amax(request);
  if (!amax.has_value()) {
    MOPT_WARN("mopt: quantizer '", label(), "' collected no data; its amax is left unset (it "
               "quantizes with the dynamic amax of each input)");
  }
  return amax;
}

void QuantizerCore::reset_calibrator() {
  if (calibrator_) calibrator_->reset();
  batch_min_ = at::Tensor();
}

std::shared_ptr<Calibrator> QuantizerCore::make_mse_calibrator(const at::Tensor& amax,
                                                              int64_t num_steps,
                                                              double start_multiplier,
                                                              double stop_multiplier) const {
  MOPT_CHECK_IMPLEMENTED(!attr_.asymmetric, "quantizer '", label(), "': MSE calibration of "
                         "asymmetric (zero-point) quantizers is not implemented; calibrate them "
                         "with max (min/max)");
  return std::make_shared<MseCalibrator>(
      amax.detach().clone(), calibrator_ ? calibrator_->axis() : attr_.axis, num_steps,
      start_multiplier, stop_multiplier, quantizer_view_quant_func(attr_));
}

at::Tensor QuantizerCore::amax_to_store(const at::Tensor& value,
                                        const c10::optional<at::Tensor>& current,
                                        bool validate) const {
  MOPT_CHECK_VALUE(value.defined(), "quantizer '", label(), "': amax must be a tensor; use "
                   "reset_amax() to remove it");
  MOPT_CHECK_TYPE(at::isFloatingType(value.scalar_type()) || at::isIntegralType(value.scalar_type(),
                  /*includeBool=*/false), "quantizer '", label(), "': amax must be a real "
                  "number tensor, got ", value.scalar_type());
  at::Tensor v = value.detach().to(at::kFloat);
  if (validate && v.numel() > 0 && !v.is_meta()) {
    const at::Tensor lo = at::amin(v.reshape(-1)), hi = at::amax(v.reshape(-1));
    const float lo_v = lo.item<float>(), hi_v = hi.item<float>();
    MOPT_CHECK_VALUE(lo_v >= 0.0f && std::isfinite(hi_v), "quantizer '", label(),
                     "': amax must be finite and non-negative, got values in [", lo_v, ", ", hi_v,
                     "]");
  }
  if (defined(current)) {
    MOPT_CHECK_STATE(current->sizes() == v.sizes(), "Changing shape when setting amax is not "
                     "allowed: ", shape_tuple(current->sizes()), " -> ", shape_tuple(v.sizes()),
                     " (call reset_amax() first)");
  }
  return v;
}

c10::optional<at::Tensor> QuantizerCore::compute_zero_point() const {
  if (!attr_.asymmetric) return c10::nullopt;
  const auto* max = dynamic_cast<const MaxCalibrator*>(calibrator_.get());
  return max != nullptr ? max->compute_zero_point() : c10::nullopt;
}

at::Tensor QuantizerCore::zero_point_to_store(const at::Tensor& value,
                                              const c10::optional<at::Tensor>& amax) const {
  MOPT_CHECK_VALUE(attr_.asymmetric, "quantizer '", label(), "' is symmetric: it has no zero "
                   "point (set 'asymmetric': True in its attributes)");
  MOPT_CHECK_VALUE(value.defined(), "quantizer '", label(), "': zero_point must be a tensor");
  MOPT_CHECK_TYPE(at::isFloatingType(value.scalar_type()) || at::isIntegralType(value.scalar_type(),
                  /*includeBool=*/false), "quantizer '", label(), "': zero_point must be a real "
                  "number tensor, got ", value.scalar_type());
  at::Tensor v = value.detach().to(at::kFloat);
  if (defined(amax)) {
    MOPT_CHECK_VALUE(amax->sizes() == v.sizes(), "quantizer '", label(), "': zero_point of shape ",
                     shape_tuple(v.sizes()), " must have amax's shape ",
                     shape_tuple(amax->sizes()));
  }
  if (v.numel() > 0 && !v.is_meta()) {
    const float qmin = kernels::fake_quant::int_minbound(attr_.num_bits.bits, false, false);
    const float qmax = kernels::fake_quant::int_maxbound(attr_.num_bits.bits, false);
    const at::Tensor flat = v.reshape(-1);
    const float lo = at::amin(flat).item<float>(), hi = at::amax(flat).item<float>();
    MOPT_CHECK_VALUE(lo >= qmin && hi <= qmax, "quantizer '", label(), "': zero points must "
                     "be codes of the ", attr_.num_bits.bits, "-bit format, in [", qmin, ", ",
                     qmax, "]; got values in [", lo, ", ", hi, "]");
    MOPT_CHECK_VALUE(at::equal(v, v.round()), "quantizer '", label(), "': zero points must be "
                     "integer codes; got fractional values");
  }
  return v;
}

at::Tensor QuantizerCore::forward(const at::Tensor& x, const c10::optional<at::Tensor>& amax,
                                  const c10::optional<at::Tensor>& pre_quant_scale,
                                  const c10::optional<at::Tensor>& zero_point,
                                  const c10::optional<at::Tensor>& amax_post) {
  auto scaled = [&] {
    return defined(pre_quant_scale) ? at::mul(x, pre_quant_scale->to(x.scalar_type())) : x;
  };
  if (flags_.disabled || !(flags_.quant || flags_.calib)) return scaled();
  if (flags_.calib && is_static()) collect(x, pre_quant_scale);
  if (!flags_.quant) return scaled();
  if (!defined(amax) && is_static() && !warned_uncalibrated_) {
    warned_uncalibrated_ = true;
    MOPT_WARN("mopt: static quantizer '", label(), "' has no calibrated amax; using the dynamic "
               "amax of its input");
  }
  return quantize_tensor(x, amax, pre_quant_scale, attr_json_, zero_point, amax_post);
}

std::optional<std::string> QuantizerCore::forward_config(bool has_amax) const {
  if (flags_.disabled || !(flags_.quant || flags_.calib)) return disabled_json_;
  if (flags_.calib) return std::nullopt;
  if (!has_amax && is_static() && !warned_uncalibrated_) return std::nullopt;
  return attr_json_;
}

std::string QuantizerCore::short_amax(const c10::optional<at::Tensor>& amax) {
  if (!defined(amax)) return "dynamic";
  return short_tensor(*amax);
}

std::string QuantizerCore::extra_repr(const c10::optional<at::Tensor>& amax,
                                      const c10::optional<at::Tensor>& pre_quant_scale) const {
  if (flags_.disabled) {
    std::string s = "disabled";
    if (defined(pre_quant_scale)) s += " pre_quant_scale=" + short_tensor(*pre_quant_scale);
    return s;
  }
  const QuantizerAttributeConfig& a = attr_;
  std::string s =
      std::string(a.is_unsigned ? "unsigned " : "") + num_bits_repr(a.num_bits) + " bit";
  if (a.narrow_range) s += " narrow";
  if (a.asymmetric) {
    s += " asymmetric";
  } else if (a.full_range) {
    s += " full_range";
  }
  if (a.fake_quant) s += " fake";
  if (a.block_sizes) {
    s += " block_sizes=" + block_sizes_repr(*a.block_sizes) + ",";
  } else {
    s += a.axis ? " axis=" + axis_repr(*a.axis) : std::string(" per-tensor");
  }
  s += " amax=" + short_amax(amax);
  if (defined(pre_quant_scale)) s += " pre_quant_scale=" + short_tensor(*pre_quant_scale);
  if (calibrator_) s += " calibrator=" + calibrator_->class_name();
  if (flags_.quant) s += " quant";
  if (flags_.calib) s += " calib";
  return s;
}

}  // namespace mopt
