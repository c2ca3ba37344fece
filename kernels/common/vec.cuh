// 16-byte vector loads and stores for element types of 2 and 4 bytes.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace mopt::kernels {

/// N elements of T moved as one aligned access.
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

/// Elements of T per 16-byte access.
template <typename T>
constexpr int vec_width() {
  return static_cast<int>(16 / sizeof(T));
}

/// True when p is aligned for 16-byte vector accesses.
inline bool is_vec_aligned(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace mopt::kernels
