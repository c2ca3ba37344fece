// Block-format fake quantization along the last (contiguous) axis: NVFP4, OCP MX and NF4.
// A row whose length is not a multiple of the block ends in a partial block, which quantizes
// exactly as if it were zero padded (padding never raises a block's amax).
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/cuda_stream.h"
#include "common/dtype.h"
#include "common/format.h"

namespace mopt::kernels::block_quant {

/// Arguments of block_quant_cpu / block_quant_cuda. x and y are contiguous [rows, row_len] of
/// `dtype` and may alias; blocks of block_size run along each row.
struct BlockQuantParams {
  const void* x = nullptr;
  void* y = nullptr;
  DType dtype = DType::kFloat32;
  int64_t rows = 0;
  int64_t row_len = 0;
  int64_t block_size = 16;
  Format format = Format::kNVFP4;  // kNVFP4, kMX or kNF4
  /// MX element format: a minifloat for exponent_bits 1..5 (E4M3, E5M2, E3M2, E2M3, E2M1, E1M2),
  /// a sign-magnitude integer of mantissa_bits magnitude bits for exponent_bits 0 (E0M7 = INT8).
  int exponent_bits = 2;
  int mantissa_bits = 1;
  /// NVFP4: one fp32 value, the tensor amax behind the tensor scale (required).
  const float* global_amax = nullptr;
  /// Optional static (calibrated) amax per block, [rows, blocks_per_row] fp32; nullptr computes
  /// each block's amax from x.
  const float* block_amax = nullptr;
  /// NF4 double quantization: 0 = none (fp32 block scales), > 0 = int8 scales around their mean
  /// with one fp32 scale per this many consecutive block scales (flattened row-major), -1 = one
  /// such group over all block scales.
  int64_t scale_block_size = 0;
  /// CUDA NF4 with double quantization: device scratch of block_quant_workspace_bytes(p) bytes,
  /// 16-byte aligned. Unused on CPU and by the other formats.
  void* workspace = nullptr;
};

/// Blocks in one row: ceil(row_len / block_size).
int64_t blocks_per_row(const BlockQuantParams& p);

/// Validates p (sizes, formats, required pointers); throws KernelError naming the problem.
void block_quant_check(const BlockQuantParams& p);

/// Bytes of device scratch block_quant_cuda needs for p (0 when it needs none).
size_t block_quant_workspace_bytes(const BlockQuantParams& p);

/// CPU implementation (vectorizable inner loops, parallel over blocks).
void block_quant_cpu(const BlockQuantParams& p);

/// CUDA implementation on `stream` (device pointers; global_amax and block_amax too). Never
/// synchronizes; bit-identical to block_quant_cpu.
void block_quant_cuda(const BlockQuantParams& p, cudaStream_t stream);

}  // namespace mopt::kernels::block_quant
