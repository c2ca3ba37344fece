#include "common/launch.cuh"
#include "common/vec.cuh"
#include "fake_quant/fake_quant.h"
#include "fake_quant/fake_quant_math.h"

namespace mopt::kernels::fake_quant {
namespace {

template <typename Q>
__device__ __forceinline__ float quant_one(const Q& q, float x, const float* amax, const float*,
                                           int64_t off) {
  if (amax == nullptr) return q(x, 1.0f);
  return apply_scaled(q, x, scale_from_amax(amax[off], q.max_value()));
}

// Integer formats may carry zero points (asymmetric) in amax's layout.
__device__ __forceinline__ float quant_one(const IntQuant& q, float x, const float* amax,
                                           const float* zp, int64_t off) {
  const float s = scale_from_amax(amax[off], q.max_value());
  return zp == nullptr ? apply_scaled(q, x, s) : apply_scaled_zp(q, x, s, zp[off]);
}

template <typename Q>
__device__ __forceinline__ float quant_uniform(const Q& q, float x, const float* amax, float s,
                                               float) {
  return amax == nullptr ? q(x, 1.0f) : apply_scaled(q, x, s);
}

__device__ __forceinline__ float quant_uniform(const IntQuant& q, float x, const float*, float s,
                                               float zp) {
  return apply_scaled_zp(q, x, s, zp);
}

// Each thread handles VEC consecutive elements per step of a grid-stride loop. When every row
// holds a whole number of vectors (the launcher checks) a vector never straddles two rows.
// kUniform (one amax for the whole tensor, or none): the scale is computed once per thread and
// no index arithmetic runs per vector (64-bit division is dozens of instructions on a GPU, about
// as long as the vector's memory time at full bandwidth).
template <typename T, typename Q, int VEC, bool kUniform>
__global__ void fake_quant_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t numel,
                                  const float* __restrict__ amax,
                                  const float* __restrict__ zero_point, ReduceLayout layout, Q q,
                                  int32_t* negative_found) {
  const int64_t nvec = numel / VEC;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const bool inner_kept = layout.inner_kept();
  const int64_t inner = layout.inner();
  float uniform_scale = 1.0f;
  float uniform_zp = 0.0f;  // symmetric: adding and removing 0 is exact
  if (kUniform && amax != nullptr) uniform_scale = scale_from_amax(amax[0], q.max_value());
  if (kUniform && zero_point != nullptr) uniform_zp = zero_point[0];
  bool neg = false;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < nvec;
       v += stride) {
    const int64_t i0 = v * VEC;
    Vec<T, VEC> in = reinterpret_cast<const Vec<T, VEC>*>(x)[v];
    Vec<T, VEC> out;
    if constexpr (kUniform) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float xf = load_float(&in.v[k]);
        neg |= xf < 0.0f;
        const float r = quant_uniform(q, xf, amax, uniform_scale, uniform_zp);
        store_float(&out.v[k], r);
      }
    } else {
      const int64_t base = layout.row_offset(i0 / inner);
      const int64_t col = i0 % inner;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float xf = load_float(&in.v[k]);
        neg |= xf < 0.0f;
        const int64_t off = base + (inner_kept ? col + k : 0);
        store_float(&out.v[k], quant_one(q, xf, amax, zero_point, off));
      }
    }
    reinterpret_cast<Vec<T, VEC>*>(y)[v] = out;
  }
  if (neg && negative_found != nullptr) *negative_found = 1;
}

// Scalar loop for misaligned tensors, rows not divisible by the vector width, and tails.
template <typename T, typename Q>
__global__ void fake_quant_scalar_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t begin,
                                         int64_t numel, const float* __restrict__ amax,
                                         const float* __restrict__ zero_point,
                                         ReduceLayout layout, Q q, int32_t* negative_found) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  bool neg = false;
  for (int64_t i = begin + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += stride) {
    const float xf = load_float(x + i);
    neg |= xf < 0.0f;
    store_float(y + i, quant_one(q, xf, amax, zero_point, layout.offset(i)));
  }
  if (neg && negative_found != nullptr) *negative_found = 1;
}

template <typename T, typename Q>
void launch(const FakeQuantParams& p, const Q& q, cudaStream_t stream) {
  constexpr int VEC = vec_width<T>();
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  const int64_t numel = p.layout.numel;
  int32_t* neg = (p.format == Format::kInt && p.is_unsigned) ? p.negative_found : nullptr;
  const bool vectorizable = is_vec_aligned(x) && is_vec_aligned(y) && p.layout.inner() % VEC == 0;
  int64_t done = 0;
  if (vectorizable && numel >= VEC) {
    const int64_t nvec = numel / VEC;
    if (p.amax == nullptr || p.layout.out_numel == 1) {
      fake_quant_kernel<T, Q, VEC, true>
          <<<grid_for(nvec), kBlockThreads, 0, stream>>>(x, y, numel, p.amax, p.zero_point,
                                                         p.layout, q, neg);
    } else {
      fake_quant_kernel<T, Q, VEC, false>
          <<<grid_for(nvec), kBlockThreads, 0, stream>>>(x, y, numel, p.amax, p.zero_point,
                                                         p.layout, q, neg);
    }
    MOPT_CHECK_LAUNCH();
    done = nvec * VEC;
  }
  if (done < numel) {
    fake_quant_scalar_kernel<T, Q><<<grid_for(numel - done), kBlockThreads, 0, stream>>>(
        x, y, done, numel, p.amax, p.zero_point, p.layout, q, neg);
    MOPT_CHECK_LAUNCH();
  }
}

__global__ void int_asym_range_kernel(const float* __restrict__ lo, const float* __restrict__ hi,
                                      float* __restrict__ amax, float* __restrict__ zero_point,
                                      int64_t n, int num_bits) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const AsymRange r = int_asym_range(lo[i], hi[i], num_bits);
    amax[i] = r.amax;
    zero_point[i] = r.zero_point;
  }
}

}  // namespace

void int_asym_range_cuda(const AsymRangeParams& p, cudaStream_t stream) {
  MOPT_CHECK(p.num_bits >= 2 && p.num_bits <= 16, "integer num_bits must be in [2, 16], got ",
             p.num_bits);
  if (p.n == 0) return;
  int_asym_range_kernel<<<grid_for(p.n), kBlockThreads, 0, stream>>>(p.lo, p.hi, p.amax,
                                                                     p.zero_point, p.n, p.num_bits);
  MOPT_CHECK_LAUNCH();
}

void fake_quant_cuda(const FakeQuantParams& p, cudaStream_t stream) {
  fake_quant_check(p);
  if (p.layout.numel == 0) return;
  MOPT_DTYPE_SWITCH(p.dtype, T, [&] {
    if (p.format == Format::kInt) {
      const IntQuant q = make_int_quant(p.num_bits, p.is_unsigned, p.narrow_range, p.full_range);
      launch<T>(p, q, stream);
    } else {
      const MinifloatQuant q{p.mantissa_bits, minifloat_min_exponent(p.exponent_bits),
                             minifloat_max(p.exponent_bits, p.mantissa_bits)};
      launch<T>(p, q, stream);
    }
  });
}

}  // namespace mopt::kernels::fake_quant
