#include "block_quant/block_quant.h"
#include "block_quant/block_quant_math.h"
#include "common/launch.cuh"
#include "common/vec.cuh"

namespace mopt::kernels::block_quant {
namespace {

constexpr uint32_t kFullMask = 0xffffffffu;

// max |x| of n elements as an integer max of |x| bits (exact in any order, NaN-sticky): the
// same value as the CPU loops.
template <typename T>
__device__ __forceinline__ float block_amax_of(const T* x, int64_t n) {
  uint32_t m = 0;
  for (int64_t i = 0; i < n; ++i) m = max(m, abs_bits(load_float(x + i)));
  return bits_to_float(m);
}

// One thread per block: any block size, partial blocks at row ends, any alignment.
template <typename T, typename Op>
__global__ void block_quant_scalar_kernel(const T* x, T* y, int64_t rows, int64_t row_len,
                                          int64_t block_size, const float* block_amax, Op op) {
  const auto bound = op.bind();
  const int64_t nb = ceil_div(row_len, block_size);
  const int64_t blocks = rows * nb;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; b < blocks;
       b += stride) {
    const int64_t row = b / nb, j = b % nb;
    const int64_t start = row * row_len + j * block_size;
    const int64_t rem = row_len - j * block_size;
    const int64_t n = rem < block_size ? rem : block_size;
    const float amax = block_amax != nullptr ? block_amax[b] : block_amax_of(x + start, n);
    const auto q = bound.block(amax, b);
    for (int64_t i = 0; i < n; ++i) store_float(y + start + i, q(load_float(x + start + i)));
  }
}

// Each thread moves one 16-byte vector; `group` = block_size / VEC consecutive lanes (a power of
// two dividing 32) hold one block and combine their maxima with butterfly shuffles. The loop
// base is warp-uniform so every lane reaches every shuffle.
template <typename T, typename Op, int VEC>
__global__ void block_quant_vec_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t nvec,
                                       int group, const float* __restrict__ block_amax, Op op) {
  const auto bound = op.bind();
  const int lane = threadIdx.x & 31;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x - lane;
       base < nvec; base += stride) {
    const int64_t v = base + lane;
    const bool active = v < nvec;
    float f[VEC];
    uint32_t m = 0;
    if (active) {
      const Vec<T, VEC> in = reinterpret_cast<const Vec<T, VEC>*>(x)[v];
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        f[k] = load_float(&in.v[k]);
        m = max(m, abs_bits(f[k]));
      }
    }
    const int64_t blk = v / group;
    float amax;
    if (block_amax != nullptr) {
      amax = active ? block_amax[blk] : 0.0f;
    } else {
      for (int off = group >> 1; off > 0; off >>= 1) m = max(m, __shfl_xor_sync(kFullMask, m, off));
      amax = bits_to_float(m);
    }
    if (active) {
      const auto q = bound.block(amax, blk);
      Vec<T, VEC> out;
#pragma unroll
      for (int k = 0; k < VEC; ++k) store_float(&out.v[k], q(f[k]));
      reinterpret_cast<Vec<T, VEC>*>(y)[v] = out;
    }
  }
}

template <typename T, typename Op>
void launch(const BlockQuantParams& p, const Op& op, const float* block_amax, cudaStream_t stream) {
  constexpr int VEC = vec_width<T>();
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  const int64_t group = p.block_size / VEC;
  const bool vectorizable = p.row_len % p.block_size == 0 && p.block_size % VEC == 0 &&
                            group <= 32 && (group & (group - 1)) == 0 && is_vec_aligned(x) &&
                            is_vec_aligned(y);
  if (vectorizable) {
    const int64_t nvec = p.rows * p.row_len / VEC;
    block_quant_vec_kernel<T, Op, VEC><<<grid_for(nvec), kBlockThreads, 0, stream>>>(
        x, y, nvec, static_cast<int>(group), block_amax, op);
  } else {
    const int64_t blocks = p.rows * blocks_per_row(p);
    block_quant_scalar_kernel<T, Op><<<grid_for(blocks), kBlockThreads, 0, stream>>>(
        x, y, p.rows, p.row_len, p.block_size, block_amax, op);
  }
  MOPT_CHECK_LAUNCH();
}

// --- NF4 double quantization: absmax -> fp64 mean -> per-group max deviation -> scales ------

template <typename T>
__global__ void nf4_absmax_kernel(const T* x, int64_t rows, int64_t row_len, int64_t block_size,
                                  float* absmax) {
  const int64_t nb = ceil_div(row_len, block_size);
  const int64_t blocks = rows * nb;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; b < blocks;
       b += stride) {
    const int64_t row = b / nb, j = b % nb;
    const int64_t rem = row_len - j * block_size;
    absmax[b] =
        block_amax_of(x + row * row_len + j * block_size, rem < block_size ? rem : block_size);
  }
}

constexpr int kMeanThreads = 1024;

// One CTA: fixed chunks summed in order by many threads, then the chunk sums in chunk order by
// one thread, exactly as the CPU does.
__global__ void nf4_mean_kernel(const float* absmax, int64_t blocks, double* partial, float* mean) {
  const int64_t chunks = ceil_div(blocks, kNf4SumChunk);
  for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
    const int64_t end = (c + 1) * kNf4SumChunk;
    partial[c] = nf4_scale_sum(absmax, c * kNf4SumChunk, end < blocks ? end : blocks);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int64_t c = 0; c < chunks; ++c) total += partial[c];
    *mean = static_cast<float>(total / static_cast<double>(blocks));
  }
}

__global__ void nf4_group_max_kernel(const float* absmax, int64_t blocks, int64_t group,
                                     const float* mean, uint32_t* group_max) {
  const float mu = *mean;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < blocks;
       i += stride) {
    atomicMax(group_max + i / group, abs_bits(nf4_stat_scale(absmax[i]) - mu));
  }
}

__global__ void nf4_dequant_scales_kernel(const float* absmax, int64_t blocks, int64_t group,
                                          const float* mean, const uint32_t* group_max,
                                          float* out_scales) {
  const float mu = *mean;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < blocks;
       i += stride) {
    out_scales[i] =
        nf4_dequantized_scale(nf4_stat_scale(absmax[i]), mu, bits_to_float(group_max[i / group]));
  }
}

template <typename T>
void run_nf4_double_quant(const BlockQuantParams& p, cudaStream_t stream) {
  const int64_t blocks = p.rows * blocks_per_row(p);
  if (blocks == 0) return;
  MOPT_CHECK(p.workspace != nullptr, "NF4 double quantization on CUDA needs a workspace of ",
             block_quant_workspace_bytes(p), " bytes");
  const int64_t group = p.scale_block_size > 0 ? p.scale_block_size : blocks;
  const int64_t groups = ceil_div(blocks, group);
  const int64_t chunks = ceil_div(blocks, kNf4SumChunk);
  auto round16 = [](int64_t bytes) { return (bytes + 15) / 16 * 16; };
  char* ws = static_cast<char*>(p.workspace);
  float* absmax_buf = reinterpret_cast<float*>(ws);
  float* out_scales = reinterpret_cast<float*>(ws + round16(blocks * 4));
  uint32_t* group_max = reinterpret_cast<uint32_t*>(ws + 2 * round16(blocks * 4));
  double* partial = reinterpret_cast<double*>(ws + 2 * round16(blocks * 4) + round16(groups * 4));
  float* mean = reinterpret_cast<float*>(ws + 2 * round16(blocks * 4) + round16(groups * 4) +
                                         round16(chunks * 8));

  const float* absmax = p.block_amax;
  if (absmax == nullptr) {
    nf4_absmax_kernel<T><<<grid_for(blocks), kBlockThreads, 0, stream>>>(
        static_cast<const T*>(p.x), p.rows, p.row_len, p.block_size, absmax_buf);
    MOPT_CHECK_LAUNCH();
    absmax = absmax_buf;
  }
  nf4_mean_kernel<<<1, kMeanThreads, 0, stream>>>(absmax, blocks, partial, mean);
  MOPT_CHECK_LAUNCH();
  MOPT_CHECK_CUDA(cudaMemsetAsync(group_max, 0, groups * sizeof(uint32_t), stream));
  nf4_group_max_kernel<<<grid_for(blocks), kBlockThreads, 0, stream>>>(absmax, blocks, group, mean,
                                                                       group_max);
  MOPT_CHECK_LAUNCH();
  nf4_dequant_scales_kernel<<<grid_for(blocks), kBlockThreads, 0, stream>>>(
      absmax, blocks, group, mean, group_max, out_scales);
  MOPT_CHECK_LAUNCH();
  launch<T>(p, Nf4Op{out_scales}, absmax, stream);
}

}  // namespace

void block_quant_cuda(const BlockQuantParams& p, cudaStream_t stream) {
  block_quant_check(p);
  if (p.rows * p.row_len == 0) return;
  MOPT_DTYPE_SWITCH(p.dtype, T, [&] {
    switch (p.format) {
      case Format::kNVFP4:
        launch<T>(p, Nvfp4Op{p.global_amax}, p.block_amax, stream);
        break;
      case Format::kMX: {
        const float emax = mx_element_max(p.exponent_bits, p.mantissa_bits);
        if (p.exponent_bits == 0) {
          launch<T>(p, MxOp<MxIntElement>{MxIntElement{emax}, emax}, p.block_amax, stream);
        } else {
          const MxFloatElement elem{p.mantissa_bits,
                                    fake_quant::minifloat_min_exponent(p.exponent_bits), emax};
          launch<T>(p, MxOp<MxFloatElement>{elem, emax}, p.block_amax, stream);
        }
        break;
      }
      case Format::kNF4:
        if (p.scale_block_size == 0) {
          launch<T>(p, Nf4Op{nullptr}, p.block_amax, stream);
        } else {
          run_nf4_double_quant<T>(p, stream);
        }
        break;
    }
  });
}

}  // namespace mopt::kernels::block_quant
