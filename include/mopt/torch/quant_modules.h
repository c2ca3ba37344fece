// Quantized Linear and Conv layers for the LibTorch C++ frontend (Python: mtq.nn.QuantLinear,
// QuantConv1d/2d/3d). Each derives from the torch layer it quantizes, so it keeps that layer's
// options, parameters (`weight`, `bias`) and state_dict names, and adds the children
// `input_quantizer`, `output_quantizer` (disabled) and `weight_quantizer` once set up.
//
// A Quant* layer that has not been set up computes exactly like the torch layer: declare members
// as mopt::QuantLinear instead of torch::nn::Linear and mopt::quantize converts them in place
// (see mopt/torch/quantize.h for why a custom module needs this).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <array>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "mopt/torch/tensor_quantizer.h"

namespace mopt {

/// What mopt::quantize needs from a quantized layer: its quantizer slots, its weight, and how to
/// add and remove the quantizers.
class QuantModule {
 public:
  /// Slot indices, in registration order (Python's order: input, output, weight).
  enum Slot : size_t { kInput = 0, kOutput = 1, kWeight = 2 };

  virtual ~QuantModule() = default;

  /// True once setup() has added the quantizers.
  bool is_converted() const { return converted_; }
  /// Adds input_quantizer (8-bit per tensor), output_quantizer (8-bit per tensor, disabled) and
  /// weight_quantizer (8-bit per output channel); from then on forward quantizes.
  void setup();
  /// Removes the quantizers: the layer computes in float again (rollback of a failed quantize).
  void unsetup();

  /// Slot names: "input_quantizer", "output_quantizer", "weight_quantizer".
  static const std::array<std::string, 3>& quantizer_slots();
  /// The module in a slot: a TensorQuantizerImpl or SequentialQuantizerImpl (nullptr before
  /// setup()).
  std::shared_ptr<torch::nn::Module> quantizer(Slot slot) const { return slots_[slot]; }
  /// Installs a TensorQuantizer or SequentialQuantizer module in a slot (TypeError otherwise).
  void set_quantizer(Slot slot, std::shared_ptr<torch::nn::Module> quantizer);
  /// The TensorQuantizer in a slot; TypeError when it holds a SequentialQuantizer or nothing.
  TensorQuantizer input_quantizer() const { return single(kInput); }
  TensorQuantizer output_quantizer() const { return single(kOutput); }
  TensorQuantizer weight_quantizer() const { return single(kWeight); }

  /// The weight the weight quantizer sees.
  virtual at::Tensor quant_weight() const = 0;
  /// Python's class name ("QuantLinear", "QuantConv2d"), used in summaries and messages.
  virtual const char* quant_class_name() const = 0;
  /// This layer as a torch module.
  virtual torch::nn::Module& as_module() = 0;

  /// Called with the layer's input before the input quantizer (a calibration driver's forward
  /// pre-hook); null removes it.
  using InputObserver = std::function<void(const at::Tensor&)>;
  void set_input_observer(InputObserver observer) { observer_ = std::move(observer); }

 protected:
  /// Runs a slot's quantizer (identity before setup()).
  at::Tensor apply_quantizer(Slot slot, const at::Tensor& x) const;
  /// Passes the input to the observer, if any.
  void observe_input(const at::Tensor& x) const {
    if (observer_) observer_(x);
  }
  /// Installs clones of `source`'s quantizers (for clone()).
  void clone_quantizers_from(const QuantModule& source,
                             const std::optional<torch::Device>& device);

 private:
  TensorQuantizer single(Slot slot) const;

  bool converted_ = false;
  InputObserver observer_;
  std::array<std::shared_ptr<torch::nn::Module>, 3> slots_;
  std::array<TensorQuantizerImpl*, 3> tensor_q_{};
  std::array<SequentialQuantizerImpl*, 3> sequential_q_{};
};

/// torch::nn::Linear with input, weight (per output row by default) and output quantizers.
class QuantLinearImpl : public torch::nn::LinearImpl, public QuantModule {
 public:
  /// The constructors of torch::nn::LinearImpl (no quantizers until setup()).
  QuantLinearImpl(int64_t in_features, int64_t out_features);
  explicit QuantLinearImpl(const torch::nn::LinearOptions& options);
  /// A quantizable copy of `source` that shares its weight and bias tensors.
  explicit QuantLinearImpl(const torch::nn::LinearImpl& source);

  /// output_quantizer(linear(input_quantizer(x), weight_quantizer(weight), bias)).
  at::Tensor forward(const at::Tensor& input);

  /// A deep copy, quantizers included.
  std::shared_ptr<torch::nn::Module> clone(
      const std::optional<torch::Device>& device = std::nullopt) const override;
  /// Prints "mopt::QuantLinear(in_features=..., ...)".
  void pretty_print(std::ostream& stream) const override;

  at::Tensor quant_weight() const override { return weight; }
  const char* quant_class_name() const override { return "QuantLinear"; }
  torch::nn::Module& as_module() override { return *this; }
};

/// Module holder of QuantLinearImpl.
TORCH_MODULE(QuantLinear);

/// torch::nn::Conv{1,2,3}d with input, weight (per output channel) and output quantizers.
template <size_t D, typename ConvImpl>
class QuantConvImpl : public ConvImpl, public QuantModule {
 public:
  using Options = torch::nn::ConvOptions<D>;

  /// The options constructor of the torch convolution (no quantizers until setup()).
  explicit QuantConvImpl(const Options& options);
  /// A quantizable copy of `source` that shares its weight and bias tensors.
  explicit QuantConvImpl(const ConvImpl& source);

  /// output_quantizer(conv(input_quantizer(x), weight_quantizer(weight), bias)).
  at::Tensor forward(const at::Tensor& input);

  /// A deep copy, quantizers included.
  std::shared_ptr<torch::nn::Module> clone(
      const std::optional<torch::Device>& device = std::nullopt) const override;
  /// Prints "mopt::QuantConv2d(...)".
  void pretty_print(std::ostream& stream) const override;

  at::Tensor quant_weight() const override { return this->weight; }
  const char* quant_class_name() const override;
  torch::nn::Module& as_module() override { return *this; }

 private:
  at::Tensor conv(const at::Tensor& input, const at::Tensor& weight);
};

using QuantConv1dImpl = QuantConvImpl<1, torch::nn::Conv1dImpl>;
using QuantConv2dImpl = QuantConvImpl<2, torch::nn::Conv2dImpl>;
using QuantConv3dImpl = QuantConvImpl<3, torch::nn::Conv3dImpl>;
extern template class QuantConvImpl<1, torch::nn::Conv1dImpl>;
extern template class QuantConvImpl<2, torch::nn::Conv2dImpl>;
extern template class QuantConvImpl<3, torch::nn::Conv3dImpl>;

/// Module holders of the quantized convolutions.
TORCH_MODULE(QuantConv1d);
TORCH_MODULE(QuantConv2d);
TORCH_MODULE(QuantConv3d);

}  // namespace mopt
