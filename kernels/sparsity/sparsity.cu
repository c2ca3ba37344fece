#include "common/dtype.h"
#include "common/launch.cuh"
#include "sparsity/sparsity.h"
#include "sparsity/sparsity_math.h"

namespace mopt::kernels::sparsity {
namespace {

// One thread per group: the group's scores in registers (M known at compile time) or in a local
// array (any M), selected by the same nm_keep_bits as the CPU, so the masks are identical.
template <int M, typename T>
__global__ void nm_mask_kernel(NmMaskParams p) {
  const int m = M > 0 ? M : p.m;
  const T* w = static_cast<const T*>(p.w);
  const int64_t total = p.rows * (p.cols / m);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  float s[M > 0 ? M : kMaxGroup];
  uint32_t max_bits = 0;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < total;
       g += stride) {
    const int64_t first = g * m;
    const int64_t col = first % p.cols;
#pragma unroll
    for (int i = 0; i < m; ++i) {
      const uint32_t bits = magnitude_bits(load_float(w + first + i));
      max_bits = max(max_bits, bits);
      s[i] = nm_score_from_magnitude(bits,
                                     p.column_factor != nullptr ? p.column_factor[col + i] : 1.0f);
    }
    const uint32_t keep = nm_keep_bits(s, 1, m, p.n);
#pragma unroll
    for (int i = 0; i < m; ++i) p.mask[first + i] = static_cast<uint8_t>((keep >> i) & 1u);
  }
  // Every writer stores the same value, so the race is benign.
  if (max_bits >= kNonFiniteMagnitude && p.nonfinite_found != nullptr) *p.nonfinite_found = 1;
}

// One thread per metadata word (16 dense columns, 4 groups).
template <typename T>
__global__ void compress_2to4_kernel(Compress2to4Params p) {
  const T* dense = static_cast<const T*>(p.dense);
  T* values = static_cast<T*>(p.values);
  const int64_t total = p.rows * (p.cols / kColsPerMetaWord);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; w < total;
       w += stride) {
    // Rows hold whole words (cols % 16 == 0), so word w covers dense[16 w, 16 w + 16) and
    // values[8 w, 8 w + 8) in the flattened tensors.
    const T* d = dense + w * kColsPerMetaWord;
    T* v = values + w * (kColsPerMetaWord / 2);
    uint32_t word = 0;
    int invalid = 0;
#pragma unroll
    for (int g = 0; g < kGroupsPerMetaWord; ++g) {
      const T* grp = d + g * kGroup2to4;
      const bool nz0 = magnitude_bits(grp[0]) != 0, nz1 = magnitude_bits(grp[1]) != 0;
      const bool nz2 = magnitude_bits(grp[2]) != 0, nz3 = magnitude_bits(grp[3]) != 0;
      invalid += (nz0 + nz1 + nz2 + nz3) > kKept2to4;
      const uint32_t code = meta_2to4_code(nz0, nz1, nz2, nz3);
      v[g * kKept2to4] = grp[meta_2to4_first(code)];
      v[g * kKept2to4 + 1] = grp[meta_2to4_second(code)];
      word |= code << (g * kMetaCodeBits);
    }
    p.meta[w] = static_cast<int16_t>(static_cast<uint16_t>(word));
    if (invalid > 0 && p.invalid_groups != nullptr) atomicAdd(p.invalid_groups, invalid);
  }
}

template <typename T>
__global__ void decompress_2to4_kernel(Decompress2to4Params p) {
  const T* values = static_cast<const T*>(p.values);
  T* dense = static_cast<T*>(p.dense);
  const int64_t total = p.rows * (p.cols / kColsPerMetaWord);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  T zero;
  store_float(&zero, 0.0f);
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; w < total;
       w += stride) {
    const uint32_t word = static_cast<uint16_t>(p.meta[w]);
    const T* v = values + w * (kColsPerMetaWord / 2);
    T* d = dense + w * kColsPerMetaWord;
    int invalid = 0;
#pragma unroll
    for (int g = 0; g < kGroupsPerMetaWord; ++g) {
      const uint32_t code = (word >> (g * kMetaCodeBits)) & 0xfu;
      const bool valid = meta_2to4_valid(code);
      invalid += !valid;
      const int i0 = meta_2to4_first(code), i1 = meta_2to4_second(code);
#pragma unroll
      for (int i = 0; i < kGroup2to4; ++i) {
        T x = zero;
        if (valid && i == i0) x = v[g * kKept2to4];
        if (valid && i == i1) x = v[g * kKept2to4 + 1];
        d[g * kGroup2to4 + i] = x;
      }
    }
    if (invalid > 0 && p.invalid_groups != nullptr) atomicAdd(p.invalid_groups, invalid);
  }
}

}  // namespace

void nm_mask_cuda(const NmMaskParams& p, cudaStream_t stream) {
  nm_mask_check(p);
  const int64_t groups = p.rows * (p.cols / p.m);
  if (groups == 0) return;
  MOPT_DTYPE_SWITCH(p.dtype, T, [&] {
    const unsigned blocks = grid_for(groups);
    switch (p.m) {
      case 2:
        nm_mask_kernel<2, T><<<blocks, kBlockThreads, 0, stream>>>(p);
        break;
      case 4:
        nm_mask_kernel<4, T><<<blocks, kBlockThreads, 0, stream>>>(p);
        break;
      case 8:
        nm_mask_kernel<8, T><<<blocks, kBlockThreads, 0, stream>>>(p);
        break;
      default:
        nm_mask_kernel<0, T><<<blocks, kBlockThreads, 0, stream>>>(p);
    }
    MOPT_CHECK_LAUNCH();
  });
}

void compress_2to4_cuda(const Compress2to4Params& p, cudaStream_t stream) {
  compress_2to4_check(p);
  const int64_t words = p.rows * (p.cols / kColsPerMetaWord);
  if (words == 0) return;
  MOPT_DTYPE_SWITCH(p.dtype, T, [&] {
    compress_2to4_kernel<T><<<grid_for(words), kBlockThreads, 0, stream>>>(p);
    MOPT_CHECK_LAUNCH();
  });
}

void decompress_2to4_cuda(const Decompress2to4Params& p, cudaStream_t stream) {
  decompress_2to4_check(p);
  const int64_t words = p.rows * (p.cols / kColsPerMetaWord);
  if (words == 0) return;
  MOPT_DTYPE_SWITCH(p.dtype, T, [&] {
    decompress_2to4_kernel<T><<<grid_for(words), kBlockThreads, 0, stream>>>(p);
    MOPT_CHECK_LAUNCH();
  });
}

}  // namespace mopt::kernels::sparsity
