// N:M sparsity on at::Tensor (SPEC §2): the keep mask of a weight and the 2:4 compressed layout.
// Each function calls the torch.ops.mopt operator of the same name through the dispatcher, so it
// has CPU, CUDA and Meta implementations from C++ and Python alike; CPU and CUDA give the same
// bits.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <string>
#include <tuple>

namespace mopt::sparsity {

/// Keep mask (bool [rows, cols]) of a 2-D floating weight [rows, cols]: in every group of m
/// consecutive columns the n largest |w| * column_factor[col] (factor: [cols], finite, >= 0;
/// none = magnitude), ties to the lower column; float64 weights are ranked in fp32. ValueError
/// naming layer `name` for a bad shape, n, m or factor, RuntimeError for NaN/Inf values or a
/// negative factor. The torch.ops.mopt.nm_mask operator.
at::Tensor nm_mask(const at::Tensor& weight, const c10::optional<at::Tensor>& column_factor,
                   int64_t n, int64_t m, const std::string& name = "");

/// 2:4 compression of a 2-D fp32/fp16/bf16 tensor [rows, cols] (cols % 16 == 0, at most 2
/// nonzeros per group of 4 columns) into (values [rows, cols / 2], meta int16 [rows, cols / 16]),
/// the layout of CUTLASS's metadata before its reordering (kernels/sparsity/sparsity_math.h);
/// for fp16/bf16 it equals torch's sparse_semi_structured_from_dense_cutlass with the reordering
/// undone. The torch.ops.mopt.compress_2to4 operator.
std::tuple<at::Tensor, at::Tensor> compress_2to4(const at::Tensor& weight);

/// Dense [rows, 2 * values.size(1)] tensor from compress_2to4's values and meta (zeros at the
/// positions the metadata does not name). The torch.ops.mopt.decompress_2to4 operator.
at::Tensor decompress_2to4(const at::Tensor& values, const at::Tensor& meta);

}  // namespace mopt::sparsity
