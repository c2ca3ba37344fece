// Argument checks shared by the per-layer calibration algorithms (internal to libmopt).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

#include "core/tensor_utils.h"
#include "mopt/core/error.h"

namespace mopt::algorithms {

/// "layer 'name'" for messages ("a linear layer" when unnamed).
inline std::string layer_label(const std::string& name) {
  return name.empty() ? std::string("a linear layer") : "layer '" + name + "'";
}

/// ValueError/TypeError naming the algorithm and layer unless `weight` is a floating [out, in].
inline void check_linear_weight(const at::Tensor& weight, const char* algorithm,
                                const std::string& name) {
  MOPT_CHECK_VALUE(weight.defined() && weight.dim() == 2, algorithm, ": ", layer_label(name),
                   ": expected a linear weight of shape [out, in], got ",
                   weight.defined() ? core::shape_str(weight.sizes()) : std::string("none"));
  MOPT_CHECK_TYPE(at::isFloatingType(weight.scalar_type()), algorithm, ": ", layer_label(name),
                  ": expected a floating-point weight, got ", weight.scalar_type());
}

/// The input [..., in] of a linear layer as a detached [tokens, in] matrix; ValueError naming the
/// layer when the last dim is not `in`.
inline at::Tensor layer_tokens(const at::Tensor& x, int64_t in, const char* algorithm,
                               const std::string& name) {
  MOPT_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == in, algorithm, ": ", layer_label(name),
                   ": expected inputs [..., ", in, "], got ", core::shape_str(x.sizes()));
  MOPT_CHECK_TYPE(at::isFloatingType(x.scalar_type()), algorithm, ": ", layer_label(name),
                  ": expected floating-point inputs, got ", x.scalar_type());
  return x.detach().reshape({-1, in});
}

}  // namespace mopt::algorithms
