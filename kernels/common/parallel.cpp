#include "common/parallel.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <thread>
#include <vector>

namespace mopt::kernels {
namespace {

std::atomic<ParallelBackend> g_backend{nullptr};
std::atomic<MaxThreadsFn> g_max_threads{nullptr};

int hardware_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

void thread_backend(int64_t begin, int64_t end, int64_t grain, void* ctx, RangeBody body) {
  const int64_t n = end - begin;
  const int64_t chunks = std::min<int64_t>(parallel_max_threads(), (n + grain - 1) / grain);
  if (chunks <= 1) {
    body(ctx, begin, end);
    return;
  }
  const int64_t step = (n + chunks - 1) / chunks;
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(chunks);
  threads.reserve(chunks - 1);
  for (int64_t c = 1; c < chunks; ++c) {
    const int64_t b = begin + c * step;
    const int64_t e = std::min(end, b + step);
    if (b >= e) break;
    threads.emplace_back([=, &errors] {
      try {
        body(ctx, b, e);
      } catch (...) {
        errors[c] = std::current_exception();
      }
    });
  }
  try {
    body(ctx, begin, std::min(end, begin + step));
  } catch (...) {
    errors[0] = std::current_exception();
  }
  for (auto& t : threads) t.join();
  for (auto& err : errors) {
    if (err) std::rethrow_exception(err);
  }
}

}  // namespace

void set_parallel_backend(ParallelBackend backend, MaxThreadsFn max_threads) {
  g_backend.store(backend);
  g_max_threads.store(max_threads);
}

int parallel_max_threads() {
  MaxThreadsFn fn = g_max_threads.load();
  const int n = fn ? fn() : hardware_threads();
  return n > 0 ? n : 1;
}

namespace detail {
void parallel_run(int64_t begin, int64_t end, int64_t grain, void* ctx, RangeBody body) {
  ParallelBackend backend = g_backend.load();
  (backend ? backend : thread_backend)(begin, end, grain, ctx, body);
}
}  // namespace detail

}  // namespace mopt::kernels
