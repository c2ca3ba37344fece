// Packed weights: every format's codes (one per element, 4-bit codes two per byte along the last
// dim) and scales, from a weight and its quantizer's amax (pack), and back to the fake-quantized
// weight (dequantize), bit for bit (pack_math.h says how each format replays its fake-quant
// kernel).
#pragma once

#include <cstdint>

#include "common/cuda_stream.h"
#include "common/dtype.h"
#include "common/format.h"
#include "common/layout.h"

namespace mopt::kernels::pack {

/// Arguments of pack_cpu / dequantize_cpu (and their CUDA twins). The weight is contiguous
/// [rows, row_len] of `dtype` (row_len its last dim). Which scale an element uses: with
/// block_size > 0 the block (row, col / block_size), flat index row * blocks + col / block_size;
/// otherwise the entry of `layout` (per tensor, per channel on any axes).
struct PackParams {
  DType dtype = DType::kFloat32;
  int64_t rows = 0;
  int64_t row_len = 0;
  int64_t block_size = 0;
  ReduceLayout layout;
  Format format = Format::kInt;
  int num_bits = 8;           // kInt: 2..8
  bool is_unsigned = false;   // kInt
  bool narrow_range = false;  // kInt
  bool full_range = false;    // kInt (set with zero_point)
  int exponent_bits = 4;      // kMinifloat and kMX elements (kMX: 0 = sign-magnitude integer)
  int mantissa_bits = 3;
  int code_bits = 8;          // storage: 8 (a byte per code) or 4 (two per byte)
  int64_t scale_block_size = 0;  // kNF4 double quantization, as BlockQuantParams

  // Both directions.
  /// kInt / kMinifloat: amax per scale (layout or blocks), fp32.
  const float* amax = nullptr;
  /// kInt asymmetric: the zero point per scale, a signed code (as fake_quant takes it).
  const float* zero_point = nullptr;

  // pack: inputs
  const void* x = nullptr;
  /// kNVFP4: the tensor amax (one value). kMX / kNF4: optional static block amax [rows * blocks].
  const float* global_amax = nullptr;
  const float* block_amax = nullptr;

  // pack: outputs; dequantize: inputs
  uint8_t* data = nullptr;         // rows * row_bytes(row_len, code_bits)
  uint8_t* block_scale = nullptr;  // kNVFP4 E4M3 bits, kMX E8M0, kNF4 double quant int8 codes
  float* block_scale_f32 = nullptr;  // kNF4 without double quantization: the block divisor
  float* tensor_scale = nullptr;     // kNVFP4: scale_2 (one value)
  float* group_amax = nullptr;       // kNF4 double quantization: dq amax per group of scales
  float* scale_mean = nullptr;       // kNF4 double quantization: the mean (one value)
  /// pack: set to 1 when a block's scale cannot be stored in the format's scale encoding (an
  /// NVFP4 block with nonzero elements whose calibrated amax gives the fallback scale 1).
  int32_t* unrepresentable = nullptr;

  // dequantize: output
  void* y = nullptr;
};

/// Blocks per row (0 without blocks).
int64_t pack_blocks_per_row(const PackParams& p);
/// Total blocks (rows * blocks per row).
int64_t pack_num_blocks(const PackParams& p);
/// Groups of block scales under NF4 double quantization (0 without it).
int64_t pack_num_scale_groups(const PackParams& p);

/// Validates the format fields and pointers; throws KernelError naming the problem.
void pack_check(const PackParams& p, bool for_pack);

/// Packs x into data and the scale outputs (CPU).
void pack_cpu(const PackParams& p);
/// Dequantizes data and scales into y (CPU).
void dequantize_cpu(const PackParams& p);

/// Bytes of device scratch pack_cuda needs (NF4 double quantization; 0 otherwise).
size_t pack_workspace_bytes(const PackParams& p);
/// CUDA twins on `stream` (device pointers, scratch of pack_workspace_bytes in `workspace`).
/// Bit-identical to the CPU versions; never synchronize.
void pack_cuda(const PackParams& p, void* workspace, cudaStream_t stream);
void dequantize_cuda(const PackParams& p, cudaStream_t stream);

}  // namespace mopt::kernels::pack
