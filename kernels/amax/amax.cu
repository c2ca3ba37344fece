#include "common/launch.cuh"
#include "common/vec.cuh"
#include "amax/amax.h"
#include "amax/amax_math.h"

namespace mopt::kernels::reduce {
namespace {

// Non-negative floats (canonical NaN included) order like their bit patterns as int32, so an
// integer atomicMax is a float max in which NaN wins.
__device__ __forceinline__ void atomic_max_nonneg(float* addr, float v) {
  atomicMax(reinterpret_cast<int*>(addr), __float_as_int(v));
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = max_keep_nan(v, __shfl_down_sync(0xffffffffu, v, offset));
  }
  return v;
}

// Grid-stride over VEC-element vectors. A thread keeps a running max while consecutive elements
// map to the same output slot and flushes it with one atomic when the slot changes. kPerTensor:
// every element maps to slot 0, so no per-element index arithmetic runs (a 64-bit division per
// element would make the reduction compute bound).
template <typename T, int VEC, bool kPerTensor>
__global__ void amax_kernel(const T* __restrict__ x, int64_t begin, int64_t end,
                            ReduceLayout layout, float* __restrict__ out, bool vectorized) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t slot = -1;
  float m = 0.0f;
  const int64_t width = vectorized ? VEC : 1;
  const int64_t items = (end - begin) / width;
  for (int64_t v = tid; v < items; v += stride) {
    const int64_t i0 = begin + v * width;
    float vals[VEC];
    if (vectorized) {
      const Vec<T, VEC> in = reinterpret_cast<const Vec<T, VEC>*>(x + begin)[v];
#pragma unroll
      for (int k = 0; k < VEC; ++k) vals[k] = abs_canonical(load_float(&in.v[k]));
    } else {
      vals[0] = abs_canonical(load_float(x + i0));
    }
    if constexpr (kPerTensor) {
      for (int k = 0; k < width; ++k) m = max_keep_nan(m, vals[k]);
    } else {
      for (int k = 0; k < width; ++k) {
        const int64_t s = layout.offset(i0 + k);
        if (s != slot) {
          if (slot >= 0) atomic_max_nonneg(out + slot, m);
          slot = s;
          m = 0.0f;
        }
        m = max_keep_nan(m, vals[k]);
      }
    }
  }
  if constexpr (kPerTensor) {
    // Per-tensor: reduce the warp first so only one lane per warp issues the atomic.
    m = warp_max(m);
    if ((threadIdx.x & 31) == 0) atomic_max_nonneg(out, m);
  } else if (slot >= 0) {
    atomic_max_nonneg(out + slot, m);
  }
}

template <typename T, bool kPerTensor>
void launch(const AmaxParams& p, cudaStream_t stream) {
  constexpr int VEC = vec_width<T>();
  const T* x = static_cast<const T*>(p.x);
  const int64_t numel = p.layout.numel;
  int64_t done = 0;
  if (is_vec_aligned(x) && numel >= VEC) {
    done = numel / VEC * VEC;
    amax_kernel<T, VEC, kPerTensor>
        <<<grid_for(done / VEC), kBlockThreads, 0, stream>>>(x, 0, done, p.layout, p.out, true);
    MOPT_CHECK_LAUNCH();
  }
  if (done < numel) {
    amax_kernel<T, VEC, kPerTensor><<<grid_for(numel - done), kBlockThreads, 0, stream>>>(
        x, done, numel, p.layout, p.out, false);
    MOPT_CHECK_LAUNCH();
  }
}

template <typename T>
void launch(const AmaxParams& p, cudaStream_t stream) {
  MOPT_CHECK_CUDA(cudaMemsetAsync(p.out, 0, sizeof(float) * p.layout.out_numel, stream));
  if (p.layout.numel == 0) return;
  if (p.layout.out_numel == 1) {
    launch<T, true>(p, stream);
  } else {
    launch<T, false>(p, stream);
  }
}

}  // namespace

void amax_cuda(const AmaxParams& p, cudaStream_t stream) {
  if (p.layout.out_numel == 0) return;  // e.g. keeping an empty axis: nothing to write
  MOPT_CHECK(p.out != nullptr, "amax output pointer is null");
  MOPT_CHECK(p.layout.numel == 0 || p.x != nullptr, "amax input pointer is null");
  MOPT_DTYPE_SWITCH(p.dtype, T, [&] { launch<T>(p, stream); });
}

}  // namespace mopt::kernels::reduce
