// CUDA twins of pack_cpu / dequantize_cpu over pack_math.h: the same encoders and decoders, the
// same scale computations (scale_from_amax per scale, NF4's fixed-chunk fp64 mean), so the
// results are bit-identical to the CPU's.
#include "common/launch.cuh"
#include "pack/pack.h"
#include "pack/pack_math.h"

namespace mopt::kernels::pack {
namespace {

template <typename T>
__device__ __forceinline__ float block_abs_max(const T* x, int64_t n) {
  uint32_t m = 0;
  for (int64_t i = 0; i < n; ++i) m = max(m, block_quant::abs_bits(load_float(x + i)));
  return bits_to_float(m);
}

// The code of element (r, c) for the integer and minifloat formats.
template <typename T>
__device__ __forceinline__ uint32_t elementwise_code(const PackParams& p, int64_t nb, int64_t r,
                                                     int64_t c) {
  const float x = load_float(static_cast<const T*>(p.x) + r * p.row_len + c);
  const int64_t si = scale_index(p.layout, p.block_size, nb, r, p.row_len, c);
  if (p.format == Format::kInt) {
    const fake_quant::IntQuant q =
        fake_quant::make_int_quant(p.num_bits, p.is_unsigned, p.narrow_range, p.full_range);
    const float s = fake_quant::scale_from_amax(p.amax[si], q.max_value());
    if (p.zero_point != nullptr) {
      const float zp = p.zero_point[si];
      const float rc = s == 0.0f ? zp : int_code_zp(q, x, s, zp);
      return static_cast<uint32_t>(static_cast<int32_t>(rc - q.minbound));
    }
    const float rc = s == 0.0f ? 0.0f : int_code(q, x, s);
    return static_cast<uint32_t>(static_cast<int32_t>(rc)) & ((1u << p.code_bits) - 1u);
  }
  const fake_quant::MinifloatQuant q{p.mantissa_bits,
                                     fake_quant::minifloat_min_exponent(p.exponent_bits),
                                     fake_quant::minifloat_max(p.exponent_bits, p.mantissa_bits)};
  const float s = fake_quant::scale_from_amax(p.amax[si], q.max_value());
  const float m = s == 0.0f ? 0.0f : minifloat_rounded(q, x, s);
  return minifloat_encode(m, p.exponent_bits, p.mantissa_bits);
}

// One thread per stored byte (two 4-bit codes or one 8-bit code).
template <typename T>
__global__ void pack_elementwise_kernel(PackParams p) {
  const int64_t nb = p.block_size > 0 ? ceil_div(p.row_len, p.block_size) : 0;
  const int64_t rb = row_bytes(p.row_len, p.code_bits);
  const int64_t total = p.rows * rb;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t r = i / rb, k = i % rb;
    uint32_t byte;
    if (p.code_bits == 8) {
      byte = elementwise_code<T>(p, nb, r, k);
    } else {
      byte = elementwise_code<T>(p, nb, r, 2 * k) & 0xfu;
      if (2 * k + 1 < p.row_len) byte |= (elementwise_code<T>(p, nb, r, 2 * k + 1) & 0xfu) << 4;
    }
    p.data[i] = static_cast<uint8_t>(byte);
  }
}

// Sets the 4- or 8-bit code of column c in a row; a row is written by one thread.
__device__ __forceinline__ void put_code(uint8_t* row, int64_t c, int bits, uint32_t code) {
  if (bits == 8) {
    row[c] = static_cast<uint8_t>(code);
  } else if ((c & 1) == 0) {
    row[c >> 1] = static_cast<uint8_t>(code & 0xfu);
  } else {
    row[c >> 1] = static_cast<uint8_t>(row[c >> 1] | ((code & 0xfu) << 4));
  }
}

// Block formats: one thread per row, its blocks in order (a byte never spans two threads).
// NF4 writes each block's absmax to `absmax` for the double quantization that follows.
template <typename T>
__global__ void pack_blocks_kernel(PackParams p, float* absmax) {
  const int64_t nb = ceil_div(p.row_len, p.block_size);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const float s2 =
      p.format == Format::kNVFP4 ? block_quant::nvfp4_tensor_scale(*p.global_amax) : 0.0f;
  const float emax = p.format == Format::kMX
                         ? block_quant::mx_element_max(p.exponent_bits, p.mantissa_bits)
                         : 0.0f;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < p.rows;
       r += stride) {
    const T* x = static_cast<const T*>(p.x) + r * p.row_len;
    uint8_t* row = p.data + r * row_bytes(p.row_len, p.code_bits);
    for (int64_t j = 0; j < nb; ++j) {
      const int64_t c0 = j * p.block_size;
      const int64_t n = p.row_len - c0 < p.block_size ? p.row_len - c0 : p.block_size;
      const int64_t b = r * nb + j;
      const float amax = p.block_amax != nullptr ? p.block_amax[b] : block_abs_max(x + c0, n);
      if (p.format == Format::kNVFP4) {
        const float e4 = block_quant::nvfp4_block_scale_e4m3(amax, s2);
        const bool stored = block_quant::nvfp4_block_scale_is_e4m3(amax, s2);
        const float s1 = stored ? e4 * s2 : 1.0f;
        p.block_scale[b] = static_cast<uint8_t>(minifloat_encode(e4, 4, 3));
        uint32_t any = 0;
        for (int64_t c = c0; c < c0 + n; ++c) {
          const uint32_t code = nvfp4_code(load_float(x + c), s1);
          any |= code & 0x7u;
          put_code(row, c, 4, code);
        }
        if (!stored && any != 0 && p.unrepresentable != nullptr) *p.unrepresentable = 1;
      } else if (p.format == Format::kMX) {
        const uint32_t sc = mx_scale_code(amax, emax);
        p.block_scale[b] = static_cast<uint8_t>(sc);
        const float inv = block_quant::exp2_int(127 - static_cast<int>(sc));
        for (int64_t c = c0; c < c0 + n; ++c) {
          const float v = load_float(x + c) * inv;
          float e;
          if (p.exponent_bits == 0) {
            e = block_quant::MxIntElement{emax}(v);
          } else {
            e = block_quant::MxFloatElement{p.mantissa_bits,
                                            fake_quant::minifloat_min_exponent(p.exponent_bits),
                                            emax}(v);
          }
          put_code(row, c, p.code_bits, mx_element_code(e, p.exponent_bits, p.mantissa_bits));
        }
      } else {  // kNF4
        absmax[b] = amax;
        const float d = block_quant::nf4_divisor(amax);
        for (int64_t c = c0; c < c0 + n; ++c) put_code(row, c, 4, nf4_code(load_float(x + c), d));
        if (p.scale_block_size == 0) p.block_scale_f32[b] = d;
      }
    }
  }
}

// NF4 double quantization, the CPU's steps: per-chunk fp64 sums, their sum in chunk order, then
// per group the max deviation and the int8 codes.
__global__ void nf4_chunk_sums_kernel(const float* absmax, int64_t blocks, double* partial,
                                      int64_t chunks) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < chunks;
       c += stride) {
    const int64_t end = (c + 1) * block_quant::kNf4SumChunk;
    partial[c] = block_quant::nf4_scale_sum(absmax, c * block_quant::kNf4SumChunk,
                                            end < blocks ? end : blocks);
  }
}

__global__ void nf4_mean_kernel(const double* partial, int64_t chunks, int64_t blocks,
                                float* mean) {
  double total = 0.0;
  for (int64_t c = 0; c < chunks; ++c) total += partial[c];
  *mean = static_cast<float>(total / static_cast<double>(blocks));
}

__global__ void nf4_scale_codes_kernel(PackParams p, const float* absmax, int64_t blocks,
                                       int64_t group, int64_t groups) {
  const float mean = *p.scale_mean;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups;
       g += stride) {
    const int64_t b0 = g * group, b1 = b0 + group < blocks ? b0 + group : blocks;
    uint32_t m = 0;
    for (int64_t i = b0; i < b1; ++i) {
      m = max(m, block_quant::abs_bits(block_quant::nf4_stat_scale(absmax[i]) - mean));
    }
    const float dq_amax = bits_to_float(m);
    p.group_amax[g] = dq_amax;
    for (int64_t i = b0; i < b1; ++i) {
      const float code =
          block_quant::nf4_scale_code(block_quant::nf4_stat_scale(absmax[i]), mean, dq_amax);
      p.block_scale[i] = static_cast<uint8_t>(static_cast<int32_t>(code) & 0xff);
    }
  }
}

// The value of element (r, c), as the CPU's Decoder computes it.
__device__ __forceinline__ float decode(const PackParams& p, int64_t nb, int64_t group, int64_t r,
                                        int64_t c, uint32_t code) {
  const int64_t si = scale_index(p.layout, p.block_size, nb, r, p.row_len, c);
  switch (p.format) {
    case Format::kInt: {
      const fake_quant::IntQuant q =
          fake_quant::make_int_quant(p.num_bits, p.is_unsigned, p.narrow_range, p.full_range);
      const float s = fake_quant::scale_from_amax(p.amax[si], q.max_value());
      if (p.zero_point != nullptr) {
        return int_value(static_cast<float>(code) + q.minbound, p.zero_point[si], s);
      }
      return int_value_sym(static_cast<float>(p.is_unsigned ? static_cast<int32_t>(code)
                                                            : sign_extend(code, p.code_bits)),
                           s);
    }
    case Format::kMinifloat: {
      const float s = fake_quant::scale_from_amax(
          p.amax[si], fake_quant::minifloat_max(p.exponent_bits, p.mantissa_bits));
      return minifloat_value(minifloat_decode(code, p.exponent_bits, p.mantissa_bits), s);
    }
    case Format::kNVFP4:
      return nvfp4_value(code, minifloat_decode(p.block_scale[si], 4, 3) * *p.tensor_scale);
    case Format::kMX:
      return mx_value(code, p.block_scale[si], p.exponent_bits, p.mantissa_bits);
    case Format::kNF4: {
      if (p.scale_block_size == 0) return nf4_value(code, p.block_scale_f32[si]);
      const float sc = static_cast<float>(sign_extend(p.block_scale[si], 8));
      const float scale =
          block_quant::nf4_scale_from_code(sc, *p.scale_mean, p.group_amax[si / group]);
      return nf4_value(code, scale);
    }
  }
  return 0.0f;
}

template <typename T>
__global__ void dequantize_kernel(PackParams p, int64_t group) {
  const int64_t nb = p.block_size > 0 ? ceil_div(p.row_len, p.block_size) : 0;
  const int64_t total = p.rows * p.row_len;
  const int64_t rb = row_bytes(p.row_len, p.code_bits);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t r = i / p.row_len, c = i % p.row_len;
    const uint32_t code = load_code(p.data + r * rb, c, p.code_bits);
    store_float(static_cast<T*>(p.y) + i, decode(p, nb, group, r, c, code));
  }
}

size_t round16(int64_t bytes) { return static_cast<size_t>((bytes + 15) / 16 * 16); }

}  // namespace

size_t pack_workspace_bytes(const PackParams& p) {
  if (p.format != Format::kNF4) return 0;
  const int64_t blocks = pack_num_blocks(p);
  const int64_t chunks = ceil_div(blocks, block_quant::kNf4SumChunk);
  return round16(blocks * 4) + round16(chunks * 8);
}

void pack_cuda(const PackParams& p, void* workspace, cudaStream_t stream) {
  pack_check(p, true);
  if (p.rows * p.row_len == 0) return;
  MOPT_DTYPE_SWITCH(p.dtype, T, [&] {
    if (p.format == Format::kInt || p.format == Format::kMinifloat) {
      const int64_t bytes = p.rows * row_bytes(p.row_len, p.code_bits);
      pack_elementwise_kernel<T><<<grid_for(bytes), kBlockThreads, 0, stream>>>(p);
      MOPT_CHECK_LAUNCH();
      return;
    }
    float* absmax = nullptr;
    if (p.format == Format::kNF4) {
      MOPT_CHECK(workspace != nullptr, "NF4 packing on CUDA needs pack_workspace_bytes of scratch");
      absmax = static_cast<float*>(workspace);
    }
    pack_blocks_kernel<T><<<grid_for(p.rows, 64), 64, 0, stream>>>(p, absmax);
    MOPT_CHECK_LAUNCH();
    if (p.format != Format::kNF4 || p.scale_block_size == 0) return;
    const int64_t blocks = pack_num_blocks(p);
    const int64_t chunks = ceil_div(blocks, block_quant::kNf4SumChunk);
    double* partial =
        reinterpret_cast<double*>(static_cast<char*>(workspace) + round16(blocks * 4));
    nf4_chunk_sums_kernel<<<grid_for(chunks), kBlockThreads, 0, stream>>>(absmax, blocks, partial,
                                                                           chunks);
    MOPT_CHECK_LAUNCH();
    nf4_mean_kernel<<<1, 1, 0, stream>>>(partial, chunks, blocks, p.scale_mean);
    MOPT_CHECK_LAUNCH();
    const int64_t group = p.scale_block_size > 0 ? p.scale_block_size : blocks;
    const int64_t groups = ceil_div(blocks, group);
    nf4_scale_codes_kernel<<<grid_for(groups, 64), 64, 0, stream>>>(p, absmax, blocks, group,
                                                                   groups);
    MOPT_CHECK_LAUNCH();
  });
}

void dequantize_cuda(const PackParams& p, cudaStream_t stream) {
  pack_check(p, false);
  if (p.rows * p.row_len == 0) return;
  const int64_t blocks = pack_num_blocks(p);
  const int64_t group = p.scale_block_size > 0 ? p.scale_block_size : (blocks > 0 ? blocks : 1);
  MOPT_DTYPE_SWITCH(p.dtype, T, [&] {
    dequantize_kernel<T><<<grid_for(p.rows * p.row_len), kBlockThreads, 0, stream>>>(p, group);
    MOPT_CHECK_LAUNCH();
  });
}

}  // namespace mopt::kernels::pack
