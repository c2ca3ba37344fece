#include "mopt/torch/quant_modules.h"

#include <ATen/core/grad_mode.h>
#include <torch/nn/functional/conv.h>
#include <torch/nn/functional/linear.h>
#include <torch/nn/functional/padding.h>

#include <sstream>
#include <type_traits>

#include "mopt/core/error.h"
#include "torch/module_tree.h"

namespace mopt {
namespace {

namespace F = torch::nn::functional;

QuantizerAttributeConfig per_tensor_8bit() {
  return QuantizerAttributeConfig::from_json(R"({"num_bits": 8, "axis": null})");
}

QuantizerAttributeConfig per_channel_8bit() {
  return QuantizerAttributeConfig::from_json(R"({"num_bits": 8, "axis": 0})");
}

// Points `module`'s registered parameter `name` (and the member `slot`) at `source`, so the
// quantized layer and the original share their tensors.
void adopt_parameter(torch::OrderedDict<std::string, at::Tensor>& parameters, at::Tensor& slot,
                     const std::string& name, const at::Tensor& source) {
  parameters[name] = source;
  slot = source;
}

// Carries a sparsity mask (mopt::sparsify's `_weight_mask` buffer) of `source` over to the
// quantized layer that replaces it; the weight's gradient hook travels with the shared weight.
void adopt_weight_mask(torch::nn::Module& target, const torch::nn::Module& source) {
  const at::Tensor mask = find_tensor(source.named_buffers(/*recurse=*/false), "_weight_mask");
  if (mask.defined()) target.register_buffer("_weight_mask", mask);
}

// "torch::nn::Conv2d(...)" -> "mopt::QuantConv2d(...)".
std::string quant_pretty(const std::string& torch_repr) {
  const std::string prefix = "torch::nn::";
  if (torch_repr.rfind(prefix, 0) != 0) return "mopt::Quant" + torch_repr;
  return "mopt::Quant" + torch_repr.substr(prefix.size());
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// QuantModule

const std::array<std::string, 3>& QuantModule::quantizer_slots() {
  static const std::array<std::string, 3> names = {"input_quantizer", "output_quantizer",
                                                   "weight_quantizer"};
  return names;
}

void QuantModule::setup() {
  if (converted_) return;
  torch::nn::Module& self = as_module();
  TensorQuantizer input(per_tensor_8bit());
  TensorQuantizer output(per_tensor_8bit());
  output->disable();
  TensorQuantizer weight(per_channel_8bit());
  std::array<TensorQuantizer, 3> quantizers = {input, output, weight};
  for (size_t i = 0; i < 3; ++i) {
    self.register_module(quantizer_slots()[i], quantizers[i]);
    slots_[i] = quantizers[i].ptr();
    tensor_q_[i] = quantizers[i].get();
    sequential_q_[i] = nullptr;
  }
  converted_ = true;
}

void QuantModule::unsetup() {
  if (!converted_) return;
  torch::nn::Module& self = as_module();
  for (size_t i = 0; i < 3; ++i) {
    self.unregister_module(quantizer_slots()[i]);
    slots_[i].reset();
    tensor_q_[i] = nullptr;
    sequential_q_[i] = nullptr;
  }
  converted_ = false;
}

void QuantModule::set_quantizer(Slot slot, std::shared_ptr<torch::nn::Module> quantizer) {
  MOPT_CHECK_STATE(converted_, "set_quantizer on a ", quant_class_name(),
                   " that has no quantizers yet; call setup() (or mopt::quantize) first");
  auto* tq = dynamic_cast<TensorQuantizerImpl*>(quantizer.get());
  auto* sq = dynamic_cast<SequentialQuantizerImpl*>(quantizer.get());
  MOPT_CHECK_TYPE(tq || sq, "a quantizer slot takes a TensorQuantizer or SequentialQuantizer, got ",
                  quantizer ? quantizer->name() : std::string("nullptr"));
  as_module().replace_module(quantizer_slots()[slot], quantizer);
  slots_[slot] = std::move(quantizer);
  tensor_q_[slot] = tq;
  sequential_q_[slot] = sq;
}

TensorQuantizer QuantModule::single(Slot slot) const {
  MOPT_CHECK_TYPE(tensor_q_[slot] != nullptr, quant_class_name(), ".", quantizer_slots()[slot],
                  converted_ ? " is a SequentialQuantizer, not a TensorQuantizer"
                             : " does not exist before setup() (or mopt::quantize)");
  return TensorQuantizer(std::static_pointer_cast<TensorQuantizerImpl>(slots_[slot]));
}

at::Tensor QuantModule::apply_quantizer(Slot slot, const at::Tensor& x) const {
  if (tensor_q_[slot]) return tensor_q_[slot]->forward(x);
  if (sequential_q_[slot]) return sequential_q_[slot]->forward(x);
  return x;
}

void QuantModule::clone_quantizers_from(const QuantModule& source,
                                        const std::optional<torch::Device>& device) {
  if (!source.converted_) return;
  setup();
  for (size_t i = 0; i < 3; ++i) {
    set_quantizer(static_cast<Slot>(i), source.slots_[i]->clone(device));
  }
}

// ---------------------------------------------------------------------------------------------
// QuantLinear

QuantLinearImpl::QuantLinearImpl(int64_t in_features, int64_t out_features)
    : QuantLinearImpl(torch::nn::LinearOptions(in_features, out_features)) {}

QuantLinearImpl::QuantLinearImpl(const torch::nn::LinearOptions& options)
    : torch::nn::LinearImpl(options) {}

QuantLinearImpl::QuantLinearImpl(const torch::nn::LinearImpl& source)
    : torch::nn::LinearImpl(source.options) {
  adopt_parameter(parameters_, weight, "weight", source.weight);
  adopt_parameter(parameters_, bias, "bias", source.bias);
  adopt_weight_mask(*this, source);
  train(source.is_training());
}

at::Tensor QuantLinearImpl::forward(const at::Tensor& input) {
  if (!is_converted()) return torch::nn::LinearImpl::forward(input);
  observe_input(input);
  const at::Tensor x = apply_quantizer(kInput, input);
  const at::Tensor w = apply_quantizer(kWeight, weight);
  return apply_quantizer(kOutput, F::linear(x, w, bias));
}

std::shared_ptr<torch::nn::Module> QuantLinearImpl::clone(
    const std::optional<torch::Device>& device) const {
  at::NoGradGuard no_grad;
  auto copy = std::make_shared<QuantLinearImpl>(options);
  copy->weight.set_data(device ? weight.to(*device) : weight.clone());
  if (bias.defined()) copy->bias.set_data(device ? bias.to(*device) : bias.clone());
  copy->clone_quantizers_from(*this, device);
  copy->train(is_training());
  return copy;
}

void QuantLinearImpl::pretty_print(std::ostream& stream) const {
  std::ostringstream os;
  torch::nn::LinearImpl::pretty_print(os);
  stream << quant_pretty(os.str());
}

// ---------------------------------------------------------------------------------------------
// QuantConv1d / 2d / 3d

namespace {

template <size_t D>
torch::nn::ConvOptions<D> conv_options_of(const torch::nn::detail::ConvNdOptions<D>& o) {
  return torch::nn::ConvOptions<D>(o.in_channels(), o.out_channels(), o.kernel_size())
      .stride(o.stride())
      .padding(o.padding())
      .dilation(o.dilation())
      .groups(o.groups())
      .bias(o.bias())
      .padding_mode(o.padding_mode());
}

F::PadFuncOptions::mode_t pad_mode_of(const torch::nn::detail::conv_padding_mode_t& mode) {
  F::PadFuncOptions::mode_t out = torch::kConstant;
  std::visit(
      [&](const auto& m) {
        using M = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<M, torch::enumtype::kReflect>) out = torch::kReflect;
        else if constexpr (std::is_same_v<M, torch::enumtype::kReplicate>) out = torch::kReplicate;
        else if constexpr (std::is_same_v<M, torch::enumtype::kCircular>) out = torch::kCircular;
        else MOPT_CHECK_VALUE(false, "unsupported conv padding mode");
      },
      mode);
  return out;
}

template <size_t D>
at::Tensor conv_nd(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                   const torch::nn::detail::ConvNdOptions<D>& o,
                   const torch::nn::detail::conv_padding_t<D>& padding) {
  if constexpr (D == 1) {
    return F::detail::conv1d(x, w, b, o.stride(), padding, o.dilation(), o.groups());
  } else {
    return F::detail::conv3d(x, w, b, o.stride(), padding, o.dilation(), o.groups());
  }
}

}  // namespace

template <size_t D, typename ConvImpl>
QuantConvImpl<D, ConvImpl>::QuantConvImpl(const Options& options) : ConvImpl(options) {}

template <size_t D, typename ConvImpl>
QuantConvImpl<D, ConvImpl>::QuantConvImpl(const ConvImpl& source)
    : ConvImpl(conv_options_of<D>(source.options)) {
  adopt_parameter(this->parameters_, this->weight, "weight", source.weight);
  adopt_parameter(this->parameters_, this->bias, "bias", source.bias);
  adopt_weight_mask(*this, source);
  this->train(source.is_training());
}

template <size_t D, typename ConvImpl>
at::Tensor QuantConvImpl<D, ConvImpl>::conv(const at::Tensor& input, const at::Tensor& weight) {
  if constexpr (D == 2) {
    return this->_conv_forward(input, weight);
  } else {
    // The same computation as torch's Conv1d/Conv3d forward, with the weight as an argument.
    const auto& o = this->options;
    if (!std::get_if<torch::enumtype::kZeros>(&o.padding_mode())) {
      const at::Tensor padded =
          F::pad(input, F::PadFuncOptions(this->_reversed_padding_repeated_twice)
                            .mode(pad_mode_of(o.padding_mode())));
      return conv_nd<D>(padded, weight, this->bias, o, torch::ExpandingArray<D>(0));
    }
    return conv_nd<D>(input, weight, this->bias, o, o.padding());
  }
}

template <size_t D, typename ConvImpl>
at::Tensor QuantConvImpl<D, ConvImpl>::forward(const at::Tensor& input) {
  if (!is_converted()) return conv(input, this->weight);
  observe_input(input);
  const at::Tensor x = apply_quantizer(kInput, input);
  const at::Tensor w = apply_quantizer(kWeight, this->weight);
  return apply_quantizer(kOutput, conv(x, w));
}

template <size_t D, typename ConvImpl>
std::shared_ptr<torch::nn::Module> QuantConvImpl<D, ConvImpl>::clone(
    const std::optional<torch::Device>& device) const {
  at::NoGradGuard no_grad;
  auto copy = std::make_shared<QuantConvImpl>(conv_options_of<D>(this->options));
  copy->weight.set_data(device ? this->weight.to(*device) : this->weight.clone());
  if (this->bias.defined()) {
    copy->bias.set_data(device ? this->bias.to(*device) : this->bias.clone());
  }
  copy->clone_quantizers_from(*this, device);
  copy->train(this->is_training());
  return copy;
}

template <size_t D, typename ConvImpl>
void QuantConvImpl<D, ConvImpl>::pretty_print(std::ostream& stream) const {
  std::ostringstream os;
  ConvImpl::pretty_print(os);
  stream << quant_pretty(os.str());
}

template <size_t D, typename ConvImpl>
const char* QuantConvImpl<D, ConvImpl>::quant_class_name() const {
  if constexpr (D == 1) return "QuantConv1d";
  else if constexpr (D == 2) return "QuantConv2d";
  else return "QuantConv3d";
}

template class QuantConvImpl<1, torch::nn::Conv1dImpl>;
template class QuantConvImpl<2, torch::nn::Conv2dImpl>;
template class QuantConvImpl<3, torch::nn::Conv3dImpl>;

}  // namespace mopt
