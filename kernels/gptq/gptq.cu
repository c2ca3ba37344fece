#include "common/launch.cuh"
#include "gptq/gptq.h"
#include "gptq/gptq_math.h"

namespace mopt::kernels::gptq {
namespace {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// One thread per (row, group), the same sequential scan as the CPU.
__global__ void group_params_kernel(GroupParamsArgs a, ElementQuant q) {
  const Groups g = a.groups;
  const int64_t total = a.rows * g.count;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t r = i / g.count;
    const int64_t k = i % g.count;
    const int64_t c = k * g.group_size;
    const int64_t n = g.group_size < a.cols - c ? g.group_size : a.cols - c;
    if (q.asymmetric) {
      const GroupRange gr = group_range(a.w + r * a.ld + c, n, 1);
      const fake_quant::AsymRange ar = fake_quant::int_asym_range(gr.lo, gr.hi, q.num_bits);
      g.param[i] = ar.amax;
      g.zero[i] = ar.zero_point;
      continue;
    }
    const GroupMax m = group_max(a.w + r * a.ld + c, n, 1);
    const float p = q.param_from_amax(m.amax);
    g.param[i] = p;
    if (q.format == Format::kNVFP4 && g.pin != nullptr) {
      g.pin[i] = p != 0.0f ? static_cast<int32_t>(c + m.argmax) : -1;
    }
  }
}

// The largest |v| of a warp's partial maxima and its smallest index (the first maximum, as the
// sequential CPU scan finds it).
__device__ __forceinline__ GroupMax warp_group_max(GroupMax m) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off /= 2) {
    const float oa = __shfl_down_sync(kFullMask, m.amax, off);
    const int64_t oi = __shfl_down_sync(kFullMask, m.argmax, off);
    if (oa > m.amax || (oa == m.amax && oi < m.argmax)) m = GroupMax{oa, oi};
  }
  return m;
}

// The signed min and max of the warp's partial ranges (order-free, so bit-identical to the CPU).
__device__ __forceinline__ GroupRange warp_group_range(GroupRange r) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off /= 2) {
    const float lo = __shfl_down_sync(kFullMask, r.lo, off);
    const float hi = __shfl_down_sync(kFullMask, r.hi, off);
    r.lo = lo < r.lo ? lo : r.lo;
    r.hi = hi > r.hi ? hi : r.hi;
  }
  return r;
}

// One warp per row: every lane reads the current column, lane 0 records it, and the lanes share
// the update of the remaining columns. Each element sees the same operations in the same order
// as on the CPU, so the results are bit-identical.
__global__ void block_kernel(BlockArgs a, ElementQuant q) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  const Groups g = a.groups;
  const bool pins = q.format == Format::kNVFP4 && g.pin != nullptr;
  const int64_t n = a.ncols;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
       r < a.rows; r += warps) {
    float* wr = a.w + r * a.ldw + a.col0;
    float* er = a.err + r * n;
    float* gp = g.param + r * g.count;
    float* gz = q.asymmetric ? g.zero + r * g.count : nullptr;
    int32_t* gpin = pins ? g.pin + r * g.count : nullptr;
    float loss = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t c = a.col_index[a.col0 + j];
      const int64_t k = c / g.group_size;
      if (a.groups_at_start && c % g.group_size == 0 && gz != nullptr) {
        const int64_t len = g.group_size < n - j ? g.group_size : n - j;
        GroupRange gr{0.0f, 0.0f};
        for (int64_t i = lane; i < len; i += kWarp) {
          const float v = wr[j + i];
          gr.lo = v < gr.lo ? v : gr.lo;
          gr.hi = v > gr.hi ? v : gr.hi;
        }
        gr = warp_group_range(gr);
        if (lane == 0) {
          const fake_quant::AsymRange ar = fake_quant::int_asym_range(gr.lo, gr.hi, q.num_bits);
          gp[k] = ar.amax;
          gz[k] = ar.zero_point;
        }
        __syncwarp();
      } else if (a.groups_at_start && c % g.group_size == 0) {
        const int64_t len = g.group_size < n - j ? g.group_size : n - j;
        GroupMax m{0.0f, 0};
        for (int64_t i = lane; i < len; i += kWarp) {
          const float v = bits_to_float(block_quant::abs_bits(wr[j + i]));
          if (v > m.amax) m = GroupMax{v, i};
        }
        m = warp_group_max(m);
        if (lane == 0) {
          const float p = q.param_from_amax(m.amax);
          gp[k] = p;
          if (pins) gpin[k] = p != 0.0f ? static_cast<int32_t>(c + m.argmax) : -1;
        }
        __syncwarp();
      }
      const float x = wr[j];
      const float p = gp[k];
      float y = q(x, p, gz != nullptr ? gz[k] : 0.0f);
      int32_t pin = pins ? gpin[k] : -1;
      if (pin >= 0) {
        if (q.reaches_top_code(x, p)) {
          pin = -1;
        } else if (pin == c) {
          y = q.top_code(x, p);
          pin = -1;
        }
      }
      const float* h = a.hinv + (a.col0 + j) * a.ldh + a.col0;
      const float e = (x - y) / h[j];
      __syncwarp();  // every lane has read x and the group state before lane 0 overwrites them
      if (lane == 0) {
        wr[j] = y;
        er[j] = e;
        if (pins) gpin[k] = pin;
        loss += e * e;
      }
      for (int64_t t = j + 1 + lane; t < n; t += kWarp) wr[t] -= e * h[t];
      __syncwarp();
    }
    if (lane == 0 && a.row_loss != nullptr) a.row_loss[r] += 0.5f * loss;
  }
}

// SparseGPT: one warp per row as block_kernel; lane 0 picks each group's mask when the loop
// reaches the group (the same scan as the CPU) and shares it with the other lanes.
__global__ void prune_block_kernel(PruneBlockArgs a) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  const int64_t n = a.ncols;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
       r < a.rows; r += warps) {
    float* wr = a.w + r * a.ldw + a.col0;
    float* er = a.err + r * n;
    uint8_t* mr = a.mask + r * a.ldw + a.col0;
    float loss = 0.0f;
    uint32_t keep = 0;
    for (int64_t j = 0; j < n; ++j) {
      const float* h = a.hinv + (a.col0 + j) * a.ldh + a.col0;
      const int t = static_cast<int>(j % a.m);
      if (t == 0) {
        if (lane == 0) keep = prune_group_keep(wr + j, h + j, a.ldh, a.m, a.n);
        keep = __shfl_sync(kFullMask, keep, 0);
      }
      const bool kept = (keep >> t) & 1u;
      const float x = wr[j];
      const float y = kept ? x : 0.0f;
      const float e = (x - y) / h[j];
      __syncwarp();  // every lane has read x before lane 0 overwrites it
      if (lane == 0) {
        wr[j] = y;
        er[j] = e;
        mr[j] = kept ? 1 : 0;
        if (!kept) loss += e * e;
      }
      if (!kept) {  // e == 0 for a kept weight: nothing to propagate (as on the CPU)
        for (int64_t u = j + 1 + lane; u < n; u += kWarp) wr[u] -= e * h[u];
      }
      __syncwarp();
    }
    if (lane == 0 && a.row_loss != nullptr) a.row_loss[r] += 0.5f * loss;
  }
}

}  // namespace

void sparsegpt_block_cuda(const PruneBlockArgs& a, cudaStream_t stream) {
  sparsegpt_check(a);
  if (a.rows == 0 || a.ncols == 0) return;
  prune_block_kernel<<<grid_for(a.rows * kWarp), kBlockThreads, 0, stream>>>(a);
  MOPT_CHECK_LAUNCH();
}

void gptq_group_params_cuda(const GroupParamsArgs& a, cudaStream_t stream) {
  MOPT_CHECK(a.ld >= a.cols, "ld ", a.ld, " is smaller than cols ", a.cols);
  MOPT_CHECK(a.groups.group_size > 0 && a.groups.param != nullptr, "invalid groups");
  const int64_t total = a.rows * a.groups.count;
  if (total == 0) return;
  group_params_kernel<<<grid_for(total), kBlockThreads, 0, stream>>>(a, make_element_quant(a.spec));
  MOPT_CHECK_LAUNCH();
}

void gptq_block_cuda(const BlockArgs& a, cudaStream_t stream) {
  gptq_check(a);
  if (a.rows == 0 || a.ncols == 0) return;
  const int64_t warp_threads = a.rows * kWarp;
  block_kernel<<<grid_for(warp_threads), kBlockThreads, 0, stream>>>(a, make_element_quant(a.spec));
  MOPT_CHECK_LAUNCH();
}

}  // namespace mopt::kernels::gptq
