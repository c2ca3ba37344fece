// GPTQ column loop (SPEC §5 "GPTQ"): inside one block of columns, quantize each column as the
// layer's weight quantizer would, scale its error by the inverse-Hessian diagonal and propagate it
// to the remaining columns of the block. Rows are independent, so the CPU splits them across
// threads and CUDA gives each row a warp. Carrying the block's changes to the other columns is a
// GEMM left to the caller. Only the block's diagonal block of hinv (rows and columns [col0,
// col0 + ncols)) is read.
#pragma once

#include <cstdint>

#include "common/cuda_stream.h"
#include "common/format.h"

namespace mopt::kernels::gptq {

/// How one weight element is rounded (mirrors the quantizer config).
struct QuantSpec {
  Format format = Format::kInt;
  int num_bits = 4;              // kInt
  bool narrow_range = false;     // kInt
  bool full_range = false;       // kInt: amax maps to maxbound + 1/2
  bool asymmetric = false;       // kInt: groups carry zero points (implies full_range)
  int exponent_bits = 4;         // kMinifloat
  int mantissa_bits = 3;         // kMinifloat
  float nvfp4_tensor_scale = 0;  // kNVFP4: s2 = global_amax / (6 * 448)
};

/// Scale groups of a weight [rows, cols]: group g of row r holds original columns
/// [g * group_size, (g + 1) * group_size). `param` is the group's amax (kInt, kMinifloat; the half
/// width of its range when asymmetric, with the zero point in `zero`) or its
/// block scale s1 (kNVFP4; 0 for an all-zero group, which quantizes to zero). `pin` (optional,
/// kNVFP4 with dynamic block scales) is the original column of the element that set the block
/// amax while no element of the group has reached the largest code yet, else -1: that element is
/// quantized to the largest code, so the block amax of the result reproduces s1 and the result is
/// a fixed point of the dynamic quantizer.
struct Groups {
  int64_t group_size = 0;
  int64_t count = 0;       // groups per row
  float* param = nullptr;  // [rows, count]
  int32_t* pin = nullptr;  // [rows, count] or nullptr; used by kNVFP4 only
  float* zero = nullptr;   // [rows, count]: zero points of an asymmetric kInt spec, else unused
};

/// Arguments of gptq_group_params_*: computes every group's parameters from w.
struct GroupParamsArgs {
  const float* w = nullptr;  // [rows, ld], columns in the original order
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t ld = 0;
  QuantSpec spec;
  Groups groups;
};

/// Arguments of gptq_block_*: processes working columns [col0, col0 + ncols).
struct BlockArgs {
  float* w = nullptr;  // [rows, ldw] working weights (act_order-permuted); the block's
                       // columns are overwritten with their quantized values
  int64_t rows = 0;
  int64_t ldw = 0;
  int64_t col0 = 0;
  int64_t ncols = 0;
  const float* hinv = nullptr;  // [cols, ldh] upper Cholesky factor U of the damped H^-1 (only
                                // its diagonal block is read)
  int64_t ldh = 0;
  float* err = nullptr;                // [rows, ncols] out: (w - q) / hinv[j, j]
  const int32_t* col_index = nullptr;  // [cols] original column of each working column
  Groups groups;
  /// Compute a group's parameters from the current (updated) weights when its first column is
  /// reached. Requires groups of contiguous working columns that start inside this block and
  /// end inside it or at the last column (no act_order, block a multiple of group_size).
  bool groups_at_start = false;
  QuantSpec spec;
  float* row_loss = nullptr;  // optional [rows]: adds sum_j err^2 / 2 of this block
};

/// Validates the arguments; throws KernelError naming the problem.
void gptq_check(const BlockArgs& a);

/// Arguments of sparsegpt_block_*: SparseGPT's column loop (SPEC §5) on working columns
/// [col0, col0 + ncols). At the first column of each group of m, the group's mask keeps the n
/// weights with the largest |w| / U_jj (OBS error w^2 / U_jj^2, computed on the weights as
/// updated so far); each column's pruned weights become zero, their error (w - q) / U_jj goes to
/// `err` and to the remaining columns of the block through row j of U. Carrying the block's
/// changes to the other columns is a GEMM left to the caller, as for GPTQ.
struct PruneBlockArgs {
  float* w = nullptr;  // [rows, ldw] working weights; the block's columns are overwritten
  int64_t rows = 0;
  int64_t ldw = 0;
  int64_t col0 = 0;   // a multiple of m
  int64_t ncols = 0;  // a multiple of m
  const float* hinv = nullptr;  // [cols, ldh] upper Cholesky factor U of the damped H^-1 (only
                                // its diagonal block is read)
  int64_t ldh = 0;
  float* err = nullptr;      // [rows, ncols] out: (w - q) / hinv[j, j]
  uint8_t* mask = nullptr;   // [rows, ldw] out: 1 where a weight of the block is kept
  int n = 2;                 // weights kept per group
  int m = 4;                 // group size, at most sparsity::kMaxGroup
  float* row_loss = nullptr; // optional [rows]: adds sum_j err^2 / 2 of this block
};

/// Validates the arguments; throws KernelError naming the problem.
void sparsegpt_check(const PruneBlockArgs& a);
/// CPU: one block of SparseGPT's column loop.
void sparsegpt_block_cpu(const PruneBlockArgs& a);
/// CUDA twin on `stream` (device pointers); bit-identical to the CPU version.
void sparsegpt_block_cuda(const PruneBlockArgs& a, cudaStream_t stream);

/// CPU: parameters of every (row, group).
void gptq_group_params_cpu(const GroupParamsArgs& a);
/// CPU: one block of the column loop.
void gptq_block_cpu(const BlockArgs& a);

/// CUDA twins on `stream` (device pointers); bit-identical to the CPU versions.
void gptq_group_params_cuda(const GroupParamsArgs& a, cudaStream_t stream);
void gptq_block_cuda(const BlockArgs& a, cudaStream_t stream);

}  // namespace mopt::kernels::gptq
