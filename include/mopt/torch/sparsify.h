// mopt::sparsify for LibTorch C++-frontend models: the C++ counterpart of mts.sparsify with the
// same modes ("sparse_magnitude", "sparsegpt", "wanda"), rules, patterns and solvers (the C++
// core of include/mopt/sparsity/solvers.h, so a C++ user gets the masks a Python user gets).
//
// What it does to a model:
//  * torch::nn::Linear / Conv1d / Conv2d layers (and mopt::QuantLinear / QuantConv*d members)
//    that the rules select get a bool `_weight_mask` buffer of the weight's shape (ModelOpt's and
//    Python's name, so mopt::save / torch::save carry it), their pruned weights are set to zero
//    in place (SparseGPT also writes its compensating update), and a gradient hook on the weight
//    multiplies its gradient by the mask, so fine-tuning (SGD, Adam, AdamW: a zero weight with a
//    zero gradient stays zero) keeps the pattern. A C++ layer cannot read its weight through a
//    mask the way Python's sparse modules do, so code that writes a masked weight in place by
//    hand must keep the pattern itself.
//  * wanda / sparsegpt observe each selected layer's input while forward_loop(model) runs, by the
//    layer conversion mopt::quantize uses (with every quantizer off, rolled back afterwards): a
//    layer that a custom module calls through a plain torch::nn::Linear member cannot be observed
//    (declare it as mopt::QuantLinear, as for quantize); a layer no data reached gets a magnitude
//    mask with a warning. All layers are solved from one pass (the Python front end replays
//    decoder layers one at a time; C++ modules have no hooks to do that).
//  * On any error every layer keeps its weight and gets no mask.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <utility>
#include <vector>

#include "mopt/torch/quantize.h"

namespace mopt {

/// Options of mopt::sparsify (the keys of mts.sparsify's mode rules and search config).
struct SparsifyConfig {
  std::string mode = "sparse_magnitude";  // sparse_magnitude | sparsegpt | wanda
  std::string pattern = "2:4 sparsity";   // any "N:M sparsity"
  /// Rules per layer type ("nn.Linear", "nn.Conv1d", "nn.Conv2d"): (name pattern, sparsify?),
  /// the last matching pattern wins; a type without rules gets {"*": true, "*lm_head*": false}.
  std::vector<std::pair<std::string, std::vector<std::pair<std::string, bool>>>> rules;
  int64_t col_block_size = 128;  // sparsegpt
  double hessian_damp = 0.1;     // sparsegpt
  bool update_weights = true;    // sparsegpt: keep the compensating update
  bool skip_incompatible = false;  // leave layers whose input dim is not a multiple of M dense

  /// Parses Python's mode rules, e.g. {"nn.Linear": {"*": {}, "*lm_head*": null}}.
  /// ValueError naming a bad type or value.
  static std::vector<std::pair<std::string, std::vector<std::pair<std::string, bool>>>>
  rules_from_json(const std::string& json);
  /// The JSON of the rules every type gets (for the recorded mode config).
  std::string rules_json() const;
};

/// Sparsifies `model` in place (see the file comment); records the mode for mopt::save.
/// ValueError before any change for an unknown mode or pattern, a rule set that selects no
/// layer, a layer whose input dim is not a multiple of M (unless skip_incompatible), wanda /
/// sparsegpt without forward_loop, or a model that is quantized or sparsified already.
void sparsify(torch::nn::Module& model, const SparsifyConfig& config,
              const ForwardLoop& forward_loop = nullptr);
/// Same, for a module holder such as torch::nn::Sequential.
template <typename ModuleType>
void sparsify(const torch::nn::ModuleHolder<ModuleType>& model, const SparsifyConfig& config,
              const ForwardLoop& forward_loop = nullptr) {
  sparsify(*model.ptr(), config, forward_loop);
}

/// Names of the layers that carry a sparsity mask, in named_modules order.
std::vector<std::string> sparse_layers(torch::nn::Module& model);

/// Installs `mask` on `layer` (buffer `_weight_mask`, gradient hook); used by sparsify and by
/// mopt::restore. ValueError when the shapes differ.
void set_weight_mask(torch::nn::Module& layer, const at::Tensor& mask);

}  // namespace mopt
