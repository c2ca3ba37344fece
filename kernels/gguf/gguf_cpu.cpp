#include <algorithm>
#include <cstring>
#include <string>

#include "common/parallel.h"
#include "gguf/gguf.h"
#include "gguf/gguf_math.h"

namespace mopt::kernels::gguf {

const char* gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::kF32: return "f32";
    case GgufType::kQ8_0: return "q8_0";
    case GgufType::kQ4_0: return "q4_0";
    case GgufType::kQ5_0: return "q5_0";
    case GgufType::kQ4_K: return "q4_k";
  }
  return "unknown";
}

GgufType gguf_type_from_name(const char* name) {
  const std::string n = name != nullptr ? name : "";
  for (GgufType t : {GgufType::kQ8_0, GgufType::kQ4_0, GgufType::kQ5_0, GgufType::kQ4_K}) {
    if (n == gguf_type_name(t)) return t;
  }
  MOPT_CHECK(false, "unknown GGUF type '", n, "'; expected q8_0, q4_0, q5_0 or q4_k");
  return GgufType::kF32;
}

GgufType gguf_row_type(GgufType requested, int64_t row_len) {
  if (requested == GgufType::kF32) return requested;
  if (row_len > 0 && row_len % block_elements(requested) == 0) return requested;
  if (requested == GgufType::kQ4_K && row_len > 0 && row_len % kQK == 0) return GgufType::kQ5_0;
  return GgufType::kF32;
}

int64_t gguf_packed_bytes(GgufType type, int64_t rows, int64_t row_len) {
  return rows * (row_len / block_elements(type)) * block_bytes(type);
}

void gguf_check(const GgufParams& p) {
  MOPT_CHECK(p.rows >= 0 && p.row_len >= 0, "GGUF quantization of a [", p.rows, ", ", p.row_len,
             "] tensor: sizes must be non-negative");
  MOPT_CHECK(p.type == GgufType::kQ8_0 || p.type == GgufType::kQ4_0 ||
                 p.type == GgufType::kQ5_0 || p.type == GgufType::kQ4_K,
             "GGUF type id ", static_cast<int>(p.type), " is not one mopt quantizes to");
  const int bs = block_elements(p.type);
  MOPT_CHECK(p.row_len % bs == 0, "GGUF ", gguf_type_name(p.type), " quantizes rows that are a ",
             "multiple of ", bs, " elements, got rows of ", p.row_len);
  MOPT_CHECK(p.rows * p.row_len == 0 || (p.x != nullptr && (p.y != nullptr || p.packed != nullptr)),
             "null data pointer");
}

void gguf_quant_cpu(const GgufParams& p) {
  gguf_check(p);
  if (p.rows * p.row_len == 0) return;
  const int bs = block_elements(p.type), nbytes = block_bytes(p.type);
  const int64_t blocks = p.rows * p.row_len / bs;
  MOPT_DTYPE_SWITCH(p.dtype, T, [&] {
    const T* x = static_cast<const T*>(p.x);
    T* y = static_cast<T*>(p.y);
    parallel_for(0, blocks, std::max<int64_t>(1, 4096 / bs), [&](int64_t b, int64_t e) {
      float v[kQKK];
      uint8_t bytes[kQ4_KBytes];
      for (int64_t k = b; k < e; ++k) {
        for (int i = 0; i < bs; ++i) v[i] = load_float(x + k * bs + i);
        quantize_block(p.type, v, bytes);
        if (p.packed != nullptr) std::memcpy(p.packed + k * nbytes, bytes, nbytes);
        if (y != nullptr) {
          dequantize_block(p.type, bytes, v);
          for (int i = 0; i < bs; ++i) store_float(y + k * bs + i, v[i]);
        }
      }
    });
  });
}

}  // namespace mopt::kernels::gguf
