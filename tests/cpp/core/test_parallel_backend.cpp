// The kernel layer's parallel_for as libmopt installs it: on torch's intra-op threads.
// at::parallel_for is a header template, and under ATen's OpenMP backend it runs its body
// serially in code compiled without OpenMP, so a build that drops the flag would silently put
// every CPU kernel on one thread; this test notices (by thread identity, not by timing).
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <mutex>
#include <set>
#include <thread>

#include "common/parallel.h"

namespace mopt {
namespace {

TEST(ParallelBackend, KernelChunksRunOnTorchThreads) {
#if defined(MOPT_NO_OPENMP)
  GTEST_SKIP() << "built without OpenMP: the CPU kernels run on one thread";
#endif
  const int saved = at::get_num_threads();
  at::set_num_threads(2);
  std::mutex mutex;
  std::set<std::thread::id> threads;
  int64_t covered = 0;
  kernels::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
    const std::lock_guard<std::mutex> lock(mutex);
    threads.insert(std::this_thread::get_id());
    covered += end - begin;
  });
  at::set_num_threads(saved);
  EXPECT_EQ(covered, 2);
  EXPECT_EQ(threads.size(), 2u) << "two chunks with two torch threads ran on one thread";
  EXPECT_EQ(kernels::parallel_max_threads(), saved);
}

}  // namespace
}  // namespace mopt
