#include "common/cpu_isa.h"

#include <atomic>

namespace mopt::kernels {
namespace {

std::atomic<bool> g_avx2_allowed{true};

}  // namespace

bool cpu_has_avx2() {
#if MOPT_CPU_DISPATCH_AVX2
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return has && g_avx2_allowed.load(std::memory_order_relaxed);
#else
  return false;
#endif
}

void set_cpu_avx2_allowed(bool allowed) { g_avx2_allowed.store(allowed); }

}  // namespace mopt::kernels
