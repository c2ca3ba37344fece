// N:M sparsity kernels (SPEC §2): the keep mask of a weight (in each group of M consecutive
// weights along the input dimension keep the N with the largest |w| * factor[col]) and the 2:4
// compressed layout (values + metadata) that sparse tensor-core GEMMs start from. The per-group
// math and the 2:4 layout are defined once in sparsity_math.h.
#pragma once

#include <cstdint>

#include "common/cuda_stream.h"
#include "common/dtype.h"
#include "sparsity/sparsity_math.h"

namespace mopt::kernels::sparsity {

/// Arguments of nm_mask_*: w is a contiguous [rows, cols] weight of `dtype`; mask receives
/// [rows, cols] bytes, 1 = keep, exactly n per group of m columns (ties keep the lower column).
/// Requires cols % m == 0 and 1 <= n <= m <= kMaxGroup (KernelError otherwise).
///
/// A NaN score has no rank (nm_keep_bits then keeps an unspecified subset), and a kernel cannot
/// throw, so finiteness is the caller's to enforce: the factor must be checked before the call
/// (finite and >= 0; it is small), while a NaN or Inf weight is reported through
/// nonfinite_found, which costs the loop one integer max per element instead of the caller a
/// second pass over the weight. The mask is unspecified when the flag is set.
struct NmMaskParams {
  const void* w = nullptr;
  DType dtype = DType::kFloat32;
  int64_t rows = 0;
  int64_t cols = 0;
  const float* column_factor = nullptr;  // [cols] score factor (Wanda, SparseGPT); nullptr = 1
  int n = 2;
  int m = 4;
  uint8_t* mask = nullptr;  // [rows, cols] out
  /// Optional. Set to 1 when a weight is NaN or +-Inf (device pointer for nm_mask_cuda).
  int32_t* nonfinite_found = nullptr;
};

/// Validates the arguments of nm_mask_*; throws KernelError naming the problem.
void nm_mask_check(const NmMaskParams& p);

/// CPU: parallel over rows, with loops vectorized across groups for M = 2, 4 and 8 (with AVX2 and
/// no column factor: ranking the magnitude bits as integers in 16 or 32-bit lanes).
void nm_mask_cpu(const NmMaskParams& p);
/// CUDA twin on `stream` (device pointers); the same mask as the CPU.
void nm_mask_cuda(const NmMaskParams& p, cudaStream_t stream);

/// Arguments of compress_2to4_*: dense is a contiguous [rows, cols] tensor of `dtype` with at
/// most 2 nonzeros (x != 0; NaN counts as nonzero) in each group of 4 columns, cols % 16 == 0.
/// Outputs in the layout defined (with its static_asserts) in sparsity_math.h: values
/// [rows, cols / 2] of `dtype`, the two stored elements of each group in column order, copied bit
/// for bit; meta int16 [rows, cols / 16], one 4-bit code idx0 | idx1 << 2 per group, group g of
/// each 16 columns at bits [4 g, 4 g + 4). For fp16/bf16 this is torch's
/// sparse_semi_structured_from_dense_cutlass before its metadata reordering.
///
/// A group with more than 2 nonzeros: compress_2to4_cpu counts such groups before writing and
/// throws KernelError naming the first one. The CUDA kernel cannot throw; it adds their number
/// to *invalid_groups (a device counter the caller zeroes, reads after the stream has run and
/// turns into an error; nullptr = not counted) and encodes them as torch does (excess dropped).
struct Compress2to4Params {
  const void* dense = nullptr;
  DType dtype = DType::kFloat32;
  int64_t rows = 0;
  int64_t cols = 0;
  void* values = nullptr;             // [rows, cols / 2] out
  int16_t* meta = nullptr;            // [rows, cols / 16] out
  int32_t* invalid_groups = nullptr;  // CUDA only, optional device counter
};

/// Validates the sizes and pointers of compress_2to4_*; throws KernelError.
void compress_2to4_check(const Compress2to4Params& p);

/// CPU compression; KernelError when a group has more than 2 nonzeros (nothing written then).
void compress_2to4_cpu(const Compress2to4Params& p);
/// CUDA twin on `stream`; counts invalid groups into p.invalid_groups instead of throwing.
void compress_2to4_cuda(const Compress2to4Params& p, cudaStream_t stream);

/// Arguments of decompress_2to4_*: the inverse of compress_2to4 for dense [rows, cols]
/// (cols % 16 == 0): every group gets values at the two positions its code names and zeros
/// elsewhere. A code whose positions are not increasing (no encoder writes one) is invalid:
/// decompress_2to4_cpu throws KernelError before writing, the CUDA kernel adds the number of
/// such codes to *invalid_groups (nullptr = not counted) and writes zeros for that group.
struct Decompress2to4Params {
  const void* values = nullptr;   // [rows, cols / 2]
  const int16_t* meta = nullptr;  // [rows, cols / 16]
  DType dtype = DType::kFloat32;
  int64_t rows = 0;
  int64_t cols = 0;
  void* dense = nullptr;              // [rows, cols] out
  int32_t* invalid_groups = nullptr;  // CUDA only, optional device counter
};

/// Validates the sizes and pointers of decompress_2to4_*; throws KernelError.
void decompress_2to4_check(const Decompress2to4Params& p);

/// CPU decompression; KernelError on an invalid code (nothing written then).
void decompress_2to4_cpu(const Decompress2to4Params& p);
/// CUDA twin on `stream`; counts invalid codes into p.invalid_groups instead of throwing.
void decompress_2to4_cuda(const Decompress2to4Params& p, cudaStream_t stream);

}  // namespace mopt::kernels::sparsity
