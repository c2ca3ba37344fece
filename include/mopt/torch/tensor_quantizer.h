// TensorQuantizer and SequentialQuantizer as torch::nn::Modules for the LibTorch C++ frontend.
// Same state (buffers `_amax`, `_pre_quant_scale`; with learned scales the parameters `_amax` and
// `_amax_pre`), flags, forward order and printed form as the Python mtq.nn.TensorQuantizer; the
// arithmetic is the shared mopt::quantize_tensor operator, so a C++ model gives bit-identical
// numbers to the same model quantized from Python.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "mopt/opt/state.h"
#include "mopt/quant/config.h"
#include "mopt/quant/quantizer_core.h"

namespace mopt {

/// Fake-quantizes a tensor as its QuantizerAttributeConfig describes and calibrates its amax: a
/// torch::nn::Module holding the `_amax` / `_pre_quant_scale` buffers around the shared
/// QuantizerCore, which makes every decision (mopt/quant/quantizer_core.h).
class TensorQuantizerImpl : public torch::nn::Cloneable<TensorQuantizerImpl> {
 public:
  /// A quantizer with `attributes` (default: 8-bit per tensor), quantizing, not calibrating.
  explicit TensorQuantizerImpl(QuantizerAttributeConfig attributes = {}, bool if_quant = true,
                               bool if_calib = false);

  /// Re-registers the buffers from the quantizer's state (Cloneable::clone calls it).
  void reset() override;

  /// Applies the quantizer (see the class comment for the order).
  at::Tensor forward(const at::Tensor& inputs);

  /// The shared quantizer logic (attributes, flags, calibrator); the module keeps the buffers.
  QuantizerCore& core() { return core_; }
  const QuantizerCore& core() const { return core_; }

  /// Replaces every attribute (fields a config omits take their defaults).
  void set_from_attribute_config(const QuantizerAttributeConfig& attributes);
  /// Sets only the keys present in the JSON object (set_quantizer_attribute semantics).
  void set_attributes(const std::string& json);
  /// The current attributes and their normalized JSON.
  const QuantizerAttributeConfig& attribute_config() const { return core_.attributes(); }
  const std::string& attribute_json() const { return core_.attributes_json(); }

  /// Attribute accessors (Python's properties of the same names).
  const NumBits& num_bits() const { return attribute_config().num_bits; }
  const std::optional<std::vector<int64_t>>& axis() const { return attribute_config().axis; }
  const std::optional<BlockSizes>& block_sizes() const { return attribute_config().block_sizes; }
  bool is_unsigned() const { return attribute_config().is_unsigned; }
  bool narrow_range() const { return attribute_config().narrow_range; }
  bool fake_quant() const { return attribute_config().fake_quant; }
  /// False after disable() or with `enable: false`.
  bool is_enabled() const { return core_.is_enabled(); }
  /// True when amax comes from calibration rather than from each input.
  bool is_static() const { return core_.is_static(); }
  /// The quant / calib mode flags (Python's _if_quant / _if_calib).
  bool is_quant_enabled() const { return core_.is_quant_enabled(); }
  bool is_calib_enabled() const { return core_.is_calib_enabled(); }
  /// Largest quantized magnitude: 2^(b-1+unsigned)-1, or the minifloat maximum.
  double maxbound() const { return core_.maxbound(); }
  /// amax / maxbound (nullopt before calibration).
  c10::optional<at::Tensor> step_size() const;

  /// The calibrated amax (nullopt when unset; the quantizer then uses the dynamic amax).
  c10::optional<at::Tensor> amax() const;
  /// Sets amax (stored as fp32). RuntimeError when an amax of another shape is already set.
  void set_amax(const at::Tensor& value);
  /// Removes the amax (and the zero point, and learned scales) and resets the calibrator.
  void reset_amax();

  /// Learned scales (algorithm lsq, LSQ): the calibrated amax becomes a quantization ("pre")
  /// and a dequantization ("post") amax, w_q = Q(w / s_pre) * s_post with s = amax / maxbound;
  /// the ones `lsq` marks learned become registered parameters (requires_grad) that
  /// parameters() hands to an optimizer and the ops give the LSQ gradient. Tied: one tensor
  /// (`_amax`) serves as both, learned for both or neither. ValueError without a calibrated
  /// amax, for a dynamic, asymmetric or non-fake_quant format, or a tied state that learns one.
  void enable_lsq(const opt::LsqState& lsq);
  /// The learned-scales state (nullopt when amax is a frozen buffer).
  const std::optional<opt::LsqState>& lsq() const { return lsq_; }
  /// Which amaxes train: a subset of {"pre", "post"} (Python's learnable_amax).
  std::vector<std::string> learnable_amax() const;
  /// The amax the input is quantized with: `_amax_pre` for untied learned scales, else amax().
  c10::optional<at::Tensor> amax_pre() const;
  /// The amax the codes are dequantized with (amax()).
  c10::optional<at::Tensor> amax_post() const { return amax(); }
  /// Sets the untied pre amax in place (ValueError without untied learned scales, for another
  /// shape than amax's, or a value that is not finite and non-negative).
  void set_amax_pre(const at::Tensor& value);
  /// The zero point of an asymmetric quantizer (integer codes in amax's shape; nullopt when
  /// unset). Calibration sets it with amax.
  c10::optional<at::Tensor> zero_point() const;
  /// Sets the zero point (ValueError for a symmetric quantizer, another shape than amax's, or a
  /// value that is no code of the format).
  void set_zero_point(const at::Tensor& value);
  /// The per-channel scale applied before quantization (nullopt when unset).
  c10::optional<at::Tensor> pre_quant_scale() const;
  /// Sets (or with nullopt removes) pre_quant_scale.
  void set_pre_quant_scale(const c10::optional<at::Tensor>& value);

  /// Switch the quantizer on or off (off: identity after pre_quant_scale).
  void enable() { core_.enable(); }
  void disable() { core_.disable(); }
  /// Switch fake quantization on or off (calibration-only mode when off).
  void enable_quant() { core_.enable_quant(); }
  void disable_quant() { core_.disable_quant(); }
  /// ValueError without a calibrator.
  void enable_calib() { core_.enable_calib(); }
  /// Stop feeding the calibrator.
  void disable_calib() { core_.disable_calib(); }

  /// Feeds one batch to the calibrator, whatever the calib flag.
  void collect(const at::Tensor& inputs);
  /// Sets amax from the calibrator (a warning and no change when it collected nothing);
  /// `request` picks a histogram calibrator's method.
  void load_calib_amax(const AmaxRequest& request = {});
  /// amax for export (fp32), nullopt when unset.
  c10::optional<at::Tensor> export_amax() const { return amax(); }
  /// The calibrator (nullptr for a custom calibrator config without a factory).
  Calibrator* calibrator() const { return core_.calibrator().get(); }

  /// amax as the summary shows it: "dynamic", "1.86e-01" or "[1.86e-01, 2.50e-01](32)".
  std::string short_amax() const { return QuantizerCore::short_amax(amax()); }
  /// Python's extra_repr: "8 bit fake axis=0 amax=[1.86e-01, 2.50e-01](32) calibrator=... quant"
  /// (learned scales add " lsq(pre=<amax_pre or tied>, learn=['post'])").
  std::string extra_repr() const;
  /// Prints "TensorQuantizer(<extra_repr>)", as Python prints the module.
  void pretty_print(std::ostream& stream) const override;
  /// Full name in the model, used in messages (set by mopt::quantize).
  const std::string& quantizer_name() const { return core_.name(); }
  /// Sets the name used in messages.
  void set_quantizer_name(std::string name) { core_.set_name(std::move(name)); }

  /// Loads `_amax` / `_pre_quant_scale` (and `_amax_pre` of untied learned scales) from a
  /// checkpoint, creating or reshaping them as needed (a freshly quantized model has no amax
  /// yet). The learned-scales state itself is not in a torch::save archive: enable_lsq first.
  void load(torch::serialize::InputArchive& archive) override;

 private:
  void store_amax(const at::Tensor& value, bool validate);
  void sync_buffers();

  QuantizerCore core_;
  at::Tensor amax_;             // the `_amax` buffer when defined
  at::Tensor pre_quant_scale_;  // the `_pre_quant_scale` buffer when defined
  at::Tensor zero_point_;       // the `_zero_point` buffer (asymmetric) when defined
  at::Tensor amax_pre_;         // `_amax_pre` of untied learned scales, when defined
  std::optional<opt::LsqState> lsq_;  // learned scales: `_amax` / `_amax_pre` are parameters
};

/// Module holder of TensorQuantizerImpl.
TORCH_MODULE(TensorQuantizer);

/// Several TensorQuantizers applied in order (e.g. INT4 blocks then FP8 for W4A8 weights),
/// registered as children "0", "1", ...
class SequentialQuantizerImpl : public torch::nn::Cloneable<SequentialQuantizerImpl> {
 public:
  /// `n` default quantizers.
  explicit SequentialQuantizerImpl(size_t n = 1);

  /// Rebuilds the children after clone(): the quantizers are cloned by Cloneable.
  void reset() override;

  /// Applies every quantizer in order.
  at::Tensor forward(const at::Tensor& inputs);

  /// One full attribute config per quantizer (ValueError when the counts differ).
  void set_from_attribute_config(const std::vector<QuantizerAttributeConfig>& attributes);
  /// One attribute JSON per quantizer, setting only the keys given.
  void set_attributes(const std::vector<std::string>& json);

  /// Number of quantizers.
  size_t size() const { return quantizers_.size(); }
  /// The i-th quantizer.
  TensorQuantizer at(size_t i) const { return quantizers_.at(i); }
  /// All quantizers, in order.
  const std::vector<TensorQuantizer>& quantizers() const { return quantizers_; }

  /// Enable / disable every quantizer.
  void enable();
  void disable();
  /// True when any quantizer is enabled.
  bool is_enabled() const;

  /// Prints "SequentialQuantizer" (the children print below it).
  void pretty_print(std::ostream& stream) const override;

 private:
  std::vector<TensorQuantizer> quantizers_;
};

/// Module holder of SequentialQuantizerImpl.
TORCH_MODULE(SequentialQuantizer);

}  // namespace mopt
