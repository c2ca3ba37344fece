// Routes the kernel layer's parallel_for through ATen's thread pool, so CPU kernels use the
// threads torch.set_num_threads allows and never oversubscribe next to torch's own ops.
// CMakeLists.txt compiles this file with OpenMP: under ATen's OpenMP backend at::parallel_for is a
// header template that runs its body serially in code compiled without it.
#include <ATen/Parallel.h>

#include "common/parallel.h"

namespace mopt::core {
namespace {

void aten_parallel(int64_t begin, int64_t end, int64_t grain, void* ctx,
                   kernels::RangeBody body) {
  at::parallel_for(begin, end, grain, [&](int64_t b, int64_t e) { body(ctx, b, e); });
}

int aten_threads() { return at::get_num_threads(); }

const bool kInstalled = [] {
  kernels::set_parallel_backend(aten_parallel, aten_threads);
  return true;
}();

}  // namespace
}  // namespace mopt::core
