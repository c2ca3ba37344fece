// Walking a LibTorch module tree as Python's named_modules does (internal to libmopt).
#pragma once

#include <torch/nn/module.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace mopt {

/// One entry of named_modules: the module, its full name and where it is registered.
struct Node {
  std::string name;
  torch::nn::Module* module = nullptr;
  std::shared_ptr<torch::nn::Module> ptr;  // null for an unowned root
  torch::nn::Module* parent = nullptr;     // null for the root
  std::string attr;                        // name in the parent
};

/// Preorder walk with each module once (the first path that reaches it), as Python's
/// named_modules. Works on a root that is not owned by a shared_ptr.
std::vector<Node> named_modules(torch::nn::Module& root);

/// `dict.find(name)` copied out while `dict` (often the temporary that named_parameters(false) /
/// named_buffers(false) return) is alive; an undefined tensor when absent.
inline at::Tensor find_tensor(const torch::OrderedDict<std::string, at::Tensor>& dict,
                              const std::string& name) {
  const at::Tensor* t = dict.find(name);
  return t != nullptr ? *t : at::Tensor();
}

/// Converts every Linear/Conv layer of `model` as mopt::quantize does, names the quantizers, then
/// runs `setup`; on any error the module tree is put back as it was and the error re-raised.
void convert_layers_then(torch::nn::Module& model, const std::function<void()>& setup);

/// Converts every Linear/Conv layer as mopt::quantize does with every quantizer disabled (each
/// layer computes as before, and a QuantModule input observer sees its input), runs `body`, then
/// puts the module tree back exactly as it was, also when `body` throws. Weights and biases are
/// shared with the original layers throughout.
void with_observable_layers(torch::nn::Module& model, const std::function<void()>& body);

/// Installs `fresh` in the place of the quantizer at `node` (its QuantModule slot or registry
/// entry).
void replace_quantizer(const Node& node, const std::shared_ptr<torch::nn::Module>& fresh);

/// Sets every quantizer's message name to its full name in `model`.
void name_quantizers(torch::nn::Module& model);

}  // namespace mopt
