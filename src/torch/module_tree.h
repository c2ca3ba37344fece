// Walking a LibTorch module tree as Python's named_modules does (internal to libmopt).
#pragma once

#include <torch/nn/module.h>

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

}  // namespace mopt
