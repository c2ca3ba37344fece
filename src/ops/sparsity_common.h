// Argument checking and kernel-parameter preparation shared by the CPU and CUDA implementations
// of the N:M sparsity ops (internal).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <cstdint>

#include "sparsity/sparsity.h"

namespace mopt::ops {

/// Tensors kept alive for one nm_mask kernel call, with its parameters.
struct NmMaskCall {
  at::Tensor weight;  // contiguous fp32/fp16/bf16 [rows, cols]
  at::Tensor factor;  // contiguous fp32 [cols], or undefined
  at::Tensor mask;    // bool [rows, cols]
  kernels::sparsity::NmMaskParams params;
};

/// Validates and prepares an nm_mask call; errors name the layer `name` (empty: none). Checks
/// that the factor is finite and non-negative (one device sync when it lives on a GPU); the
/// weight's finiteness comes back through params.nonfinite_found.
NmMaskCall prepare_nm_mask(const at::Tensor& weight, const c10::optional<at::Tensor>& factor,
                           int64_t n, int64_t m, c10::string_view name);

/// RuntimeError naming the layer: the weight holds NaN or Inf.
[[noreturn]] void throw_nonfinite_weight(c10::string_view name);

/// Tensors kept alive for one compress_2to4 kernel call.
struct Compress2to4Call {
  at::Tensor dense;   // contiguous [rows, cols]
  at::Tensor values;  // [rows, cols / 2], dense's dtype
  at::Tensor meta;    // int16 [rows, cols / 16]
  kernels::sparsity::Compress2to4Params params;
};

/// Validates and prepares a compress_2to4 call.
Compress2to4Call prepare_compress_2to4(const at::Tensor& weight);

/// ValueError for `count` groups with more than 2 nonzeros (the CUDA path's report).
[[noreturn]] void throw_not_2to4(int64_t count);

/// Tensors kept alive for one decompress_2to4 kernel call.
struct Decompress2to4Call {
  at::Tensor values;  // contiguous [rows, cols / 2]
  at::Tensor meta;    // contiguous int16 [rows, cols / 16]
  at::Tensor dense;   // [rows, cols], values' dtype
  kernels::sparsity::Decompress2to4Params params;
};

/// Validates and prepares a decompress_2to4 call.
Decompress2to4Call prepare_decompress_2to4(const at::Tensor& values, const at::Tensor& meta);

/// ValueError for `count` metadata codes that no 2:4 encoder writes (the CUDA path's report).
[[noreturn]] void throw_bad_2to4_meta(int64_t count);

}  // namespace mopt::ops
