// The one implementation of a TensorQuantizer's logic, shared by Python's mtq.nn.TensorQuantizer
// (nn.Module) and the C++ mopt::TensorQuantizer (torch::nn::Module). The wrappers keep the state
// their frameworks serialize (the `_amax` and `_pre_quant_scale` buffers) and pass it in; the
// core holds the attributes, the flags, the calibrator and every decision: flag semantics, the
// calibrator choice and rebuild, the calibration view and its kept axes, the amax policy (static,
// dynamic, never calibrated), the checks on inputs and the printed form.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mopt/calib/calibrator.h"
#include "mopt/quant/config.h"
#include "mopt/quant/formats.h"

namespace mopt {

/// The mode flags of a quantizer (ModelOpt's _disabled / _if_quant / _if_calib).
struct QuantizerFlags {
  bool disabled = false;
  bool quant = true;
  bool calib = false;
};

/// The quantized magnitude amax maps to in `attributes`' format: 2^(b-1+unsigned)-1 (plus 1/2
/// with full_range), or the minifloat maximum (what QuantizerCore::maxbound returns, without
/// building a quantizer). scale = amax / maxbound.
double quantizer_maxbound(const QuantizerAttributeConfig& attributes);

/// A quantizer's attributes, flags and calibrator, and what it does with a tensor.
class QuantizerCore {
 public:
  /// Builds a calibrator for a config whose calibrator is a front end's own class ("custom").
  using CalibratorFactory = std::function<std::shared_ptr<Calibrator>()>;

  /// A quantizer with `attributes`, quantizing and not calibrating.
  explicit QuantizerCore(const QuantizerAttributeConfig& attributes = {},
                         CalibratorFactory factory = nullptr);
  /// A deep copy: the calibrator and what it collected are cloned.
  QuantizerCore(const QuantizerCore& other);
  QuantizerCore& operator=(const QuantizerCore& other);

  // -- attributes ------------------------------------------------------------------------------
  /// Replaces every attribute (fields a config omits take their defaults); the calibrator is
  /// rebuilt when a field it depends on changes (calibrator, num_bits, axis, unsigned,
  /// block_sizes). NotImplementedError for a format without kernels, before anything changes.
  void set_attributes(const QuantizerAttributeConfig& attributes,
                      CalibratorFactory factory = nullptr);
  /// set_attributes with `other`'s attributes, taking what `other` derived from them (format,
  /// JSON forms) instead of deriving it again; a calibrator to rebuild is a clone of `other`'s,
  /// so `other` must never have collected (a restore applies one prototype per distinct
  /// attribute set this way). Flags other than `disabled` and the name are kept.
  void copy_attributes_from(const QuantizerCore& other);
  const QuantizerAttributeConfig& attributes() const { return attr_; }
  /// The normalized JSON of the attributes (the quantize_tensor operator's config argument).
  const std::string& attributes_json() const { return attr_json_; }
  /// The format the attributes resolve to (format table row and element format).
  const ResolvedFormat& format() const { return format_; }
  /// True when amax comes from calibration (possibly only NVFP4's per-tensor amax).
  bool is_static() const { return format_.calibrated; }
  /// The magnitude amax maps to: 2^(b-1+unsigned)-1 (plus 1/2 with full_range), or the
  /// minifloat maximum.
  double maxbound() const;
  /// Axes of the calibration view kept in amax for an input of `ndim` dims.
  std::vector<int64_t> kept_axes(int64_t ndim) const;

  // -- flags -----------------------------------------------------------------------------------
  const QuantizerFlags& flags() const { return flags_; }
  /// Restores flags saved with flags(); ValueError when calib is set without a calibrator.
  void set_flags(const QuantizerFlags& flags);
  bool is_enabled() const { return !flags_.disabled; }
  void enable() { flags_.disabled = false; }
  void disable() { flags_.disabled = true; }
  bool is_quant_enabled() const { return flags_.quant; }
  void enable_quant() { flags_.quant = true; }
  void disable_quant() { flags_.quant = false; }
  bool is_calib_enabled() const { return flags_.calib; }
  /// ValueError when there is no calibrator.
  void enable_calib();
  void disable_calib() { flags_.calib = false; }

  // -- calibrator ------------------------------------------------------------------------------
  /// The calibrator (null only for a custom calibrator config without a factory).
  const std::shared_ptr<Calibrator>& calibrator() const { return calibrator_; }
  /// Replaces the calibrator (algorithms swap in histogram or MSE calibrators and back).
  void set_calibrator(std::shared_ptr<Calibrator> calibrator);
  /// True when this quantizer takes part in calibration: enabled, static and with a calibrator.
  bool needs_calibration() const { return is_enabled() && is_static() && calibrator_ != nullptr; }

  // -- calibration -----------------------------------------------------------------------------
  /// The tensor the calibrator sees: x * pre_quant_scale in the static block view. TypeError for
  /// a non-floating input.
  at::Tensor calib_view(const at::Tensor& x, const c10::optional<at::Tensor>& pre_quant_scale);
  /// Feeds one batch to the calibrator (whatever the calib flag), with the kept axes of this
  /// input's rank. An unsigned quantizer records the batch minimum on the device; a negative
  /// one is reported by compute_amax (no host synchronization per batch).
  void collect(const at::Tensor& x, const c10::optional<at::Tensor>& pre_quant_scale);
  /// amax from the calibrator (nullopt, with a warning naming the quantizer, when it collected
  /// nothing). Inside a CalibrationGroupScope the calibrator first combines the ranks'
  /// statistics. ValueError when an unsigned quantizer met negative values.
  c10::optional<at::Tensor> compute_amax(const AmaxRequest& request = {});
  /// The zero points of an asymmetric quantizer from its (max) calibrator, in compute_amax's
  /// shape; call after compute_amax (which first combines the ranks' statistics). nullopt for
  /// symmetric quantizers and before any data.
  c10::optional<at::Tensor> compute_zero_point() const;
  /// `value` as the zero point to store (fp32 integer codes, detached). ValueError when the
  /// quantizer is symmetric, the shape differs from `amax`'s, or a value is not an integer code
  /// of the format (outside [-2^(b-1), 2^(b-1)-1]).
  at::Tensor zero_point_to_store(const at::Tensor& value,
                                 const c10::optional<at::Tensor>& amax) const;
  /// Forgets what the calibrator collected.
  void reset_calibrator();
  /// An MSE calibrator that searches multipliers of `amax` (the quantizer's max-calibrated amax)
  /// with this quantizer's format on its calibration view, with the current calibrator's kept
  /// axes (SPEC §5 `mse`). NotImplementedError for formats the table marks unsearchable.
  std::shared_ptr<Calibrator> make_mse_calibrator(const at::Tensor& amax, int64_t num_steps = 10,
                                                  double start_multiplier = 0.25,
                                                  double stop_multiplier = 4.0) const;

  // -- amax policy -----------------------------------------------------------------------------
  /// `value` as the amax to store (fp32, detached). RuntimeError when `current` (the stored
  /// amax, if any) has another shape: amax never changes shape silently. A user's amax (setter,
  /// load_state_dict, postprocess_amax: `validate`) must also be finite and non-negative
  /// (ValueError naming the quantizer); calibration results are checked by check_amax instead,
  /// which names every bad quantizer at once.
  at::Tensor amax_to_store(const at::Tensor& value, const c10::optional<at::Tensor>& current,
                           bool validate = true) const;

  // -- forward ---------------------------------------------------------------------------------
  /// The quantizer applied to x: multiply by pre_quant_scale; if disabled (or neither quantizing
  /// nor calibrating), return; if calibrating, collect; if quantizing, fake-quantize with `amax`
  /// (a static quantizer never calibrated uses the input's dynamic amax, with a one-time
  /// warning). `amax_post` (learned scales with separate amaxes) dequantizes the codes.
  at::Tensor forward(const at::Tensor& x, const c10::optional<at::Tensor>& amax,
                     const c10::optional<at::Tensor>& pre_quant_scale,
                     const c10::optional<at::Tensor>& zero_point = c10::nullopt,
                     const c10::optional<at::Tensor>& amax_post = c10::nullopt);
  /// The config `cfg` for which forward(x, amax, pqs) is exactly the operator
  /// quantize_tensor(x, amax, pqs, cfg), given whether an amax is stored (`has_amax`): the
  /// attributes when quantizing, a disabled config (pre_quant_scale only) when disabled or
  /// neither quantizing nor calibrating; nullopt when the core must run (calibrating, or the
  /// one-time warning of a never-calibrated static quantizer). A front end whose forward must
  /// trace into a graph (torch.compile) calls the operator then.
  std::optional<std::string> forward_config(bool has_amax) const;

  // -- names and printing ----------------------------------------------------------------------
  /// Full name in the model, used in messages ("TensorQuantizer" until set).
  const std::string& name() const { return name_; }
  void set_name(std::string name) { name_ = std::move(name); }
  /// "dynamic", "1.86e-01" or "[1.86e-01, 2.50e-01](32)".
  static std::string short_amax(const c10::optional<at::Tensor>& amax);
  /// The summary form: "8 bit fake axis=0 amax=[...](32) calibrator=MaxCalibrator quant".
  std::string extra_repr(const c10::optional<at::Tensor>& amax,
                         const c10::optional<at::Tensor>& pre_quant_scale) const;

 private:
  std::string label() const;
  void rebuild_calibrator();

  QuantizerAttributeConfig attr_;
  std::string attr_json_;
  std::string disabled_json_;  // attr_json_ with enable = false
  ResolvedFormat format_;
  QuantizerFlags flags_;
  CalibratorFactory factory_;
  std::shared_ptr<Calibrator> calibrator_;
  at::Tensor batch_min_;  // unsigned quantizers: running minimum of the calibration views
  bool warned_uncalibrated_ = false;
  std::string name_;
};

}  // namespace mopt
