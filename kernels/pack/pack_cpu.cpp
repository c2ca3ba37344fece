#include <algorithm>
#include <atomic>
#include <vector>

#include "block_quant/block_quant_math.h"
#include "common/parallel.h"
#include "pack/pack.h"
#include "pack/pack_math.h"

namespace mopt::kernels::pack {

int64_t pack_blocks_per_row(const PackParams& p) {
  return p.block_size > 0 ? ceil_div(p.row_len, p.block_size) : 0;
}

int64_t pack_num_blocks(const PackParams& p) { return p.rows * pack_blocks_per_row(p); }

int64_t pack_num_scale_groups(const PackParams& p) {
  if (p.format != Format::kNF4 || p.scale_block_size == 0) return 0;
  const int64_t blocks = pack_num_blocks(p);
  if (blocks == 0) return 0;
  return p.scale_block_size > 0 ? ceil_div(blocks, p.scale_block_size) : 1;
}

void pack_check(const PackParams& p, bool for_pack) {
  MOPT_CHECK(p.rows >= 0 && p.row_len >= 0, "packing a [", p.rows, ", ", p.row_len,
             "] weight: sizes must be non-negative");
  MOPT_CHECK(p.code_bits == 4 || p.code_bits == 8, "codes are stored in 4 or 8 bits, got ",
             p.code_bits);
  const bool empty = p.rows * p.row_len == 0;
  MOPT_CHECK(empty || (p.data != nullptr && (for_pack ? p.x != nullptr : p.y != nullptr)),
             "null data pointer");
  switch (p.format) {
    case Format::kInt:
      MOPT_CHECK(p.num_bits >= 2 && p.num_bits <= 8, "packed integer codes have 2 to 8 bits, got ",
                 p.num_bits);
      MOPT_CHECK(p.code_bits >= p.num_bits, p.num_bits, "-bit codes do not fit ", p.code_bits,
                 "-bit storage");
      MOPT_CHECK(p.amax != nullptr, "integer packing needs the amax");
      MOPT_CHECK(p.zero_point == nullptr || p.full_range,
                 "a zero point needs the full-range scaling of asymmetric formats");
      break;
    case Format::kMinifloat:
      MOPT_CHECK(p.exponent_bits >= 1 && p.exponent_bits <= 5 && p.mantissa_bits >= 0 &&
                     1 + p.exponent_bits + p.mantissa_bits <= p.code_bits,
                 "minifloat E", p.exponent_bits, "M", p.mantissa_bits, " does not fit ",
                 p.code_bits, "-bit codes");
      MOPT_CHECK(p.amax != nullptr, "minifloat packing needs the amax");
      break;
    case Format::kNVFP4:
      MOPT_CHECK(p.block_size >= 1 && p.code_bits == 4, "NVFP4 packs blocks into 4-bit codes");
      MOPT_CHECK(p.block_scale != nullptr && p.tensor_scale != nullptr,
                 "NVFP4 needs block_scale and tensor_scale");
      MOPT_CHECK(!for_pack || p.global_amax != nullptr, "NVFP4 packing needs the tensor amax");
      break;
    case Format::kMX:
      MOPT_CHECK(p.block_size >= 1 && p.block_scale != nullptr, "MX needs blocks and block_scale");
      MOPT_CHECK((p.exponent_bits == 0 && p.mantissa_bits >= 1 && p.mantissa_bits <= 7) ||
                     (p.exponent_bits >= 1 && p.exponent_bits <= 5 &&
                      1 + p.exponent_bits + p.mantissa_bits <= p.code_bits),
                 "MX element E", p.exponent_bits, "M", p.mantissa_bits, " does not fit ",
                 p.code_bits, "-bit codes");
      MOPT_CHECK(p.exponent_bits != 0 || p.code_bits == 8, "MX integers are stored in bytes");
      break;
    case Format::kNF4:
      MOPT_CHECK(p.block_size >= 1 && p.code_bits == 4, "NF4 packs blocks into 4-bit codes");
      MOPT_CHECK(p.scale_block_size >= -1, "NF4 scale_block_size must be 0, -1 or positive, got ",
                 p.scale_block_size);
      if (p.scale_block_size == 0) {
        MOPT_CHECK(p.block_scale_f32 != nullptr, "NF4 needs block_scale_f32");
      } else {
        MOPT_CHECK(p.block_scale != nullptr && p.group_amax != nullptr &&
                       p.scale_mean != nullptr,
                   "NF4 double quantization needs block_scale, group_amax and scale_mean");
      }
      break;
  }
}

namespace {

constexpr int64_t kGrain = 1 << 14;  // elements per parallel task

// Writes the codes of one row in order (a nibble pair is completed by its odd column).
struct RowWriter {
  uint8_t* row;
  int bits;
  void put(int64_t col, uint32_t code) const {
    if (bits == 8) {
      row[col] = static_cast<uint8_t>(code);
    } else if ((col & 1) == 0) {
      row[col >> 1] = static_cast<uint8_t>(code & 0xfu);
    } else {
      row[col >> 1] = static_cast<uint8_t>(row[col >> 1] | ((code & 0xfu) << 4));
    }
  }
};

template <typename T>
float block_abs_max(const T* x, int64_t n) {
  uint32_t m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, block_quant::abs_bits(load_float(x + i)));
  return bits_to_float(m);
}

// Rows [begin, end) in parallel chunks of about kGrain elements.
template <typename F>
void for_rows(const PackParams& p, F&& f) {
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, p.row_len));
  parallel_for(0, p.rows, grain, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) f(r);
  });
}

// The kernels' multipliers per scale entry (scale_from_amax), as fake_quant_cpu computes them.
std::vector<float> multipliers(const PackParams& p, int64_t n, float bound) {
  std::vector<float> s(n);
  for (int64_t i = 0; i < n; ++i) s[i] = fake_quant::scale_from_amax(p.amax[i], bound);
  return s;
}

int64_t scale_count(const PackParams& p) {
  return p.block_size > 0 ? pack_num_blocks(p) : p.layout.out_numel;
}

template <typename T>
void pack_int(const PackParams& p) {
  const fake_quant::IntQuant q =
      fake_quant::make_int_quant(p.num_bits, p.is_unsigned, p.narrow_range, p.full_range);
  const std::vector<float> s = multipliers(p, scale_count(p), q.max_value());
  const int64_t nb = pack_blocks_per_row(p);
  const float qmin = q.minbound;
  const bool asym = p.zero_point != nullptr;
  const uint32_t mask = (1u << p.code_bits) - 1u;
  for_rows(p, [&](int64_t r) {
    const T* x = static_cast<const T*>(p.x) + r * p.row_len;
    const RowWriter w{p.data + r * row_bytes(p.row_len, p.code_bits), p.code_bits};
    for (int64_t c = 0; c < p.row_len; ++c) {
      const int64_t si = scale_index(p.layout, p.block_size, nb, r, p.row_len, c);
      const float xv = load_float(x + c);
      uint32_t code;
      if (asym) {  // unsigned storage: the code minus qmin
        const float zp = p.zero_point[si];
        const float rc = s[si] == 0.0f ? zp : int_code_zp(q, xv, s[si], zp);
        code = static_cast<uint32_t>(static_cast<int32_t>(rc - qmin));
      } else {
        const float rc = s[si] == 0.0f ? 0.0f : int_code(q, xv, s[si]);
        code = static_cast<uint32_t>(static_cast<int32_t>(rc)) & mask;
      }
      w.put(c, code);
    }
  });
}

template <typename T>
void pack_minifloat(const PackParams& p) {
  const fake_quant::MinifloatQuant q{p.mantissa_bits,
                                     fake_quant::minifloat_min_exponent(p.exponent_bits),
                                     fake_quant::minifloat_max(p.exponent_bits, p.mantissa_bits)};
  const std::vector<float> s = multipliers(p, scale_count(p), q.max_value());
  const int64_t nb = pack_blocks_per_row(p);
  for_rows(p, [&](int64_t r) {
    const T* x = static_cast<const T*>(p.x) + r * p.row_len;
    const RowWriter w{p.data + r * row_bytes(p.row_len, p.code_bits), p.code_bits};
    for (int64_t c = 0; c < p.row_len; ++c) {
      const int64_t si = scale_index(p.layout, p.block_size, nb, r, p.row_len, c);
      const float m = s[si] == 0.0f ? 0.0f : minifloat_rounded(q, load_float(x + c), s[si]);
      w.put(c, minifloat_encode(m, p.exponent_bits, p.mantissa_bits));
    }
  });
}

// Calls f(row, block, first column, length, amax of the block) for every block, rows in
// parallel; the amax is the static one when given, else the block's own.
template <typename T, typename F>
void for_blocks(const PackParams& p, const float* static_amax, F&& f) {
  const int64_t nb = pack_blocks_per_row(p);
  for_rows(p, [&](int64_t r) {
    const T* x = static_cast<const T*>(p.x) + r * p.row_len;
    for (int64_t j = 0; j < nb; ++j) {
      const int64_t c0 = j * p.block_size, n = std::min(p.block_size, p.row_len - c0);
      const int64_t b = r * nb + j;
      f(r, b, c0, n, static_amax != nullptr ? static_amax[b] : block_abs_max(x + c0, n));
    }
  });
}

template <typename T>
void pack_nvfp4(const PackParams& p) {
  const float s2 = block_quant::nvfp4_tensor_scale(*p.global_amax);
  *p.tensor_scale = s2;
  std::atomic<bool> bad{false};
  for_blocks<T>(p, p.block_amax, [&](int64_t r, int64_t b, int64_t c0, int64_t n, float amax) {
    const T* x = static_cast<const T*>(p.x) + r * p.row_len;
    const RowWriter w{p.data + r * row_bytes(p.row_len, 4), 4};
    const float e4 = block_quant::nvfp4_block_scale_e4m3(amax, s2);
    const bool stored = block_quant::nvfp4_block_scale_is_e4m3(amax, s2);
    const float s1 = stored ? e4 * s2 : 1.0f;
    p.block_scale[b] = static_cast<uint8_t>(minifloat_encode(e4, 4, 3));
    uint32_t any = 0;
    for (int64_t c = c0; c < c0 + n; ++c) {
      const uint32_t code = nvfp4_code(load_float(x + c), s1);
      any |= code & 0x7u;
      w.put(c, code);
    }
    if (!stored && any != 0) bad.store(true, std::memory_order_relaxed);
  });
  if (bad.load() && p.unrepresentable != nullptr) *p.unrepresentable = 1;
}

template <typename T, typename Elem>
void pack_mx_with(const PackParams& p, const Elem& elem, float elem_max) {
  for_blocks<T>(p, p.block_amax, [&](int64_t r, int64_t b, int64_t c0, int64_t n, float amax) {
    const T* x = static_cast<const T*>(p.x) + r * p.row_len;
    const RowWriter w{p.data + r * row_bytes(p.row_len, p.code_bits), p.code_bits};
    const uint32_t sc = mx_scale_code(amax, elem_max);
    p.block_scale[b] = static_cast<uint8_t>(sc);
    const float inv = block_quant::exp2_int(127 - static_cast<int>(sc));
    for (int64_t c = c0; c < c0 + n; ++c) {
      w.put(c, mx_element_code(elem(load_float(x + c) * inv), p.exponent_bits, p.mantissa_bits));
    }
  });
}

template <typename T>
void pack_mx(const PackParams& p) {
  const float emax = block_quant::mx_element_max(p.exponent_bits, p.mantissa_bits);
  if (p.exponent_bits == 0) {
    pack_mx_with<T>(p, block_quant::MxIntElement{emax}, emax);
  } else {
    const block_quant::MxFloatElement elem{
        p.mantissa_bits, fake_quant::minifloat_min_exponent(p.exponent_bits), emax};
    pack_mx_with<T>(p, elem, emax);
  }
}

template <typename T>
void pack_nf4(const PackParams& p) {
  const int64_t blocks = pack_num_blocks(p);
  std::vector<float> absmax(blocks);
  for_blocks<T>(p, p.block_amax, [&](int64_t r, int64_t b, int64_t c0, int64_t n, float amax) {
    const T* x = static_cast<const T*>(p.x) + r * p.row_len;
    const RowWriter w{p.data + r * row_bytes(p.row_len, 4), 4};
    absmax[b] = amax;
    const float d = block_quant::nf4_divisor(amax);
    for (int64_t c = c0; c < c0 + n; ++c) w.put(c, nf4_code(load_float(x + c), d));
  });
  if (p.scale_block_size == 0) {
    for (int64_t b = 0; b < blocks; ++b) p.block_scale_f32[b] = block_quant::nf4_divisor(absmax[b]);
    return;
  }
  // Double quantization: the steps and summation order of block_quant_cpu.
  const int64_t chunks = ceil_div(blocks, block_quant::kNf4SumChunk);
  double total = 0.0;
  for (int64_t c = 0; c < chunks; ++c) {
    total += block_quant::nf4_scale_sum(absmax.data(), c * block_quant::kNf4SumChunk,
                                        std::min(blocks, (c + 1) * block_quant::kNf4SumChunk));
  }
  const float mean = static_cast<float>(total / static_cast<double>(blocks));
  *p.scale_mean = mean;
  const int64_t group = p.scale_block_size > 0 ? p.scale_block_size : blocks;
  for (int64_t g = 0; g * group < blocks; ++g) {
    const int64_t b0 = g * group, b1 = std::min(blocks, b0 + group);
    uint32_t m = 0;
    for (int64_t i = b0; i < b1; ++i) {
      m = std::max(m, block_quant::abs_bits(block_quant::nf4_stat_scale(absmax[i]) - mean));
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

// The value of element (r, c) from its code.
struct Decoder {
  const PackParams& p;
  int64_t nb;
  std::vector<float> s;  // kInt / kMinifloat multipliers
  fake_quant::IntQuant iq{};
  int64_t group = 1;

  explicit Decoder(const PackParams& params) : p(params), nb(pack_blocks_per_row(params)) {
    if (p.format == Format::kInt) {
      iq = fake_quant::make_int_quant(p.num_bits, p.is_unsigned, p.narrow_range, p.full_range);
      s = multipliers(p, scale_count(p), iq.max_value());
    } else if (p.format == Format::kMinifloat) {
      s = multipliers(p, scale_count(p),
                      fake_quant::minifloat_max(p.exponent_bits, p.mantissa_bits));
    } else if (p.format == Format::kNF4 && p.scale_block_size != 0) {
      group = p.scale_block_size > 0 ? p.scale_block_size : std::max<int64_t>(1, nb * p.rows);
    }
  }

  float operator()(int64_t r, int64_t c, uint32_t code) const {
    const int64_t si = scale_index(p.layout, p.block_size, nb, r, p.row_len, c);
    switch (p.format) {
      case Format::kInt:
        if (p.zero_point != nullptr) {
          return int_value(static_cast<float>(code) + iq.minbound, p.zero_point[si], s[si]);
        }
        return int_value_sym(
            static_cast<float>(p.is_unsigned ? static_cast<int32_t>(code)
                                             : sign_extend(code, p.code_bits)),
            s[si]);
      case Format::kMinifloat:
        return minifloat_value(minifloat_decode(code, p.exponent_bits, p.mantissa_bits), s[si]);
      case Format::kNVFP4:
        return nvfp4_value(code, minifloat_decode(p.block_scale[si], 4, 3) * *p.tensor_scale);
      case Format::kMX:
        return mx_value(code, p.block_scale[si], p.exponent_bits, p.mantissa_bits);
      case Format::kNF4: {
        if (p.scale_block_size == 0) return nf4_value(code, p.block_scale_f32[si]);
        const float sc = static_cast<float>(sign_extend(p.block_scale[si], 8));
        return nf4_value(code, block_quant::nf4_scale_from_code(sc, *p.scale_mean,
                                                                p.group_amax[si / group]));
      }
    }
    return 0.0f;
  }
};

template <typename T>
void dequantize_rows(const PackParams& p) {
  const Decoder dec(p);
  for_rows(p, [&](int64_t r) {
    const uint8_t* row = p.data + r * row_bytes(p.row_len, p.code_bits);
    T* y = static_cast<T*>(p.y) + r * p.row_len;
    for (int64_t c = 0; c < p.row_len; ++c) store_float(y + c, dec(r, c, load_code(row, c,
                                                                                   p.code_bits)));
  });
}

}  // namespace

void pack_cpu(const PackParams& p) {
  pack_check(p, true);
  if (p.rows * p.row_len == 0) return;
  MOPT_DTYPE_SWITCH(p.dtype, T, [&] {
    switch (p.format) {
      case Format::kInt: pack_int<T>(p); break;
      case Format::kMinifloat: pack_minifloat<T>(p); break;
      case Format::kNVFP4: pack_nvfp4<T>(p); break;
      case Format::kMX: pack_mx<T>(p); break;
      case Format::kNF4: pack_nf4<T>(p); break;
    }
  });
}

void dequantize_cpu(const PackParams& p) {
  pack_check(p, false);
  if (p.rows * p.row_len == 0) return;
  MOPT_DTYPE_SWITCH(p.dtype, T, [&] { dequantize_rows<T>(p); });
}

}  // namespace mopt::kernels::pack
