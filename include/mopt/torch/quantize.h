// mopt::quantize and friends for LibTorch C++-frontend models: the C++ counterpart of
// mtq.quantize / calibrate / print_quant_summary / set_quantizer_attribute, with the same config
// semantics ("default" first, dict order, last match wins, fnmatch on full quantizer names,
// class-scoped entries, an error for enabling patterns that match nothing).
//
// How layers are converted, and what a model must look like:
//  * A torch::nn::Linear / Conv1d / Conv2d / Conv3d child (exact type) is replaced, in its
//    parent's registry, by a mopt::QuantLinear / QuantConv*d that shares its weight and bias.
//    A torch::nn::Sequential dispatches through its own list of modules, which mopt rebuilds in
//    place, so a Sequential anywhere in the tree (the root, or a member of a custom module)
//    runs the quantized layers after quantize, through the caller's existing handles.
//  * A custom module calls its children through typed members (`fc1->forward(x)` with
//    `torch::nn::Linear fc1`), which C++ binds at compile time: no library can redirect that
//    call. Declare such members as mopt::QuantLinear / QuantConv2d (drop-in subclasses of the
//    torch layers that compute exactly like them until quantized); quantize sets them up in
//    place. A plain torch layer reached only through a custom module's member keeps computing in
//    float, so quantize raises NotImplementedError naming it when the config enables one of
//    its quantizers (it is fine when the config leaves them disabled).
//  * Quantizers are registered children, so named_modules, parameters/buffers, to(device),
//    clone(), torch::save / torch::load and print_quant_summary see them; torch::load into a
//    model quantized with the same config restores the calibrated amax.
//  * On any error the module tree is restored exactly as it was (layers, Sequential contents,
//    quantizers of layers quantized before); nothing is left half converted.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <functional>
#include <iostream>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "mopt/algorithms/calibration.h"
#include "mopt/torch/configs.h"
#include "mopt/torch/quant_modules.h"
#include "mopt/torch/tensor_quantizer.h"

namespace mopt {

/// Runs calibration data through the model: `forward_loop(model)`.
using ForwardLoop = std::function<void(torch::nn::Module&)>;

/// Quantizes `model` in place: converts Linear/Conv layers, applies config.quant_cfg (each
/// matched entry resets every attribute), prints "Inserted N quantizers", then calibrates with
/// config.algorithm (any calibration method, see calibrate) running forward_loop(model); without
/// forward_loop only the weights are calibrated. On error the model is restored and the error re-raised.
void quantize(torch::nn::Module& model, const QuantizeConfig& config,
              const ForwardLoop& forward_loop = nullptr);
/// Same, for a module holder such as torch::nn::Sequential.
template <typename ModuleType>
void quantize(const torch::nn::ModuleHolder<ModuleType>& model, const QuantizeConfig& config,
              const ForwardLoop& forward_loop = nullptr) {
  quantize(*model.ptr(), config, forward_loop);
}

/// Calibrates a quantized model in eval mode (the training flag is restored) with `steps` in
/// order (algorithms::parse_calibration_steps turns a config's `algorithm` into them): max,
/// smoothquant, awq_lite / awq_clip / awq_full, gptq, mse, entropy / percentile / histogram_mse,
/// step_percentile, lsq (learned scales: the eligible weight amaxes become parameters, see
/// TensorQuantizerImpl::enable_lsq), with the numbers of Python's mtq.calibrate on the same
/// module and data. Without forward_loop
/// only the weights are calibrated; a max step whose only quantizers to calibrate read layer
/// weights (algorithms::max_calibration_from_weights) calibrates them from the weights and does
/// not run forward_loop (skip_forward_without_activation_calib: false runs it). Inside a
/// CalibrationGroupScope, statistics are combined over its process group. Afterwards a NaN,
/// infinite or negative amax raises RuntimeError naming the quantizer and its layer.
void calibrate(torch::nn::Module& model, const std::vector<algorithms::CalibrationStep>& steps,
               const ForwardLoop& forward_loop = nullptr);

/// Prints one line per TensorQuantizer, "{name:80} TensorQuantizer(...)", then
/// "N TensorQuantizers found in model" (the format of Python's mtq.print_quant_summary).
void print_quant_summary(torch::nn::Module& model, std::ostream& stream = std::cout);

/// Every TensorQuantizer with its full name (SequentialQuantizer members included), in
/// named_modules order.
std::vector<std::pair<std::string, TensorQuantizer>> named_quantizers(torch::nn::Module& model);

/// Sets the attributes in `attributes_json` (only its keys) on every TensorQuantizer or
/// SequentialQuantizer whose full name matches `pattern`; returns how many matched.
int set_quantizer_attribute(torch::nn::Module& model, const std::string& pattern,
                            const std::string& attributes_json);
/// Applies quant_cfg entries as Python's set_quantizer_by_cfg: "default" first, then in order,
/// the last match wins; attribute entries set only the keys they name.
void set_quantizer_by_cfg(torch::nn::Module& model, const std::vector<QuantCfgEntry>& quant_cfg);
/// Enables / disables the quantizers whose full names match `pattern`.
void enable_quantizer(torch::nn::Module& model, const std::string& pattern);
void disable_quantizer(torch::nn::Module& model, const std::string& pattern);

/// True when the model holds at least one quantizer.
bool is_quantized(torch::nn::Module& model);

}  // namespace mopt
