// Host-side parallel loop used by every CPU kernel.
// The kernel layer has no thread pool of its own to fight with: libmopt installs
// at::parallel_for as the backend, so CPU kernels follow torch.set_num_threads. Without a
// backend (the torch-free kernel tests) a std::thread fallback splits the range.
#pragma once

#include <cstdint>

namespace mopt::kernels {

/// Body called on [begin, end) sub-ranges; `ctx` carries the caller's closure.
using RangeBody = void (*)(void* ctx, int64_t begin, int64_t end);
/// Runs body over [begin, end) in chunks of at least `grain` iterations, possibly in parallel.
using ParallelBackend = void (*)(int64_t begin, int64_t end, int64_t grain, void* ctx,
                                 RangeBody body);

/// Reports how many threads the backend may use.
using MaxThreadsFn = int (*)();

/// Installs the backend used by parallel_for and its thread count (nullptr restores the
/// std::thread fallback over the hardware threads).
void set_parallel_backend(ParallelBackend backend, MaxThreadsFn max_threads);

/// Number of threads the current backend may use (for splitting reductions into
/// per-chunk partial results).
int parallel_max_threads();

namespace detail {
void parallel_run(int64_t begin, int64_t end, int64_t grain, void* ctx, RangeBody body);
}  // namespace detail

/// Calls f(sub_begin, sub_end) over disjoint sub-ranges covering [begin, end).
template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  if (end <= begin) return;
  if (end - begin <= grain) {
    f(begin, end);
    return;
  }
  detail::parallel_run(begin, end, grain, const_cast<F*>(&f), [](void* ctx, int64_t b, int64_t e) {
    (*static_cast<const F*>(ctx))(b, e);
  });
}

}  // namespace mopt::kernels
