// Device buffers and the skip rule for the CUDA-vs-CPU kernel tests.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "common/macros.h"

namespace mopt::test {

/// True when a CUDA device can run kernels here.
inline bool cuda_device_available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define MOPT_SKIP_WITHOUT_CUDA()                                           \
  do {                                                                     \
    if (!::mopt::test::cuda_device_available()) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

/// Owning device allocation with host copies in and out.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n, size_t pad = 0) : n_(n) {
    MOPT_CHECK_CUDA(cudaMalloc(&base_, (n + pad) * sizeof(T) + 16));
    ptr_ = reinterpret_cast<T*>(base_) + pad;
  }
  DeviceBuffer(const std::vector<T>& host, size_t pad = 0) : DeviceBuffer(host.size(), pad) {
    MOPT_CHECK_CUDA(cudaMemcpy(ptr_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~DeviceBuffer() { cudaFree(base_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() { return ptr_; }
  std::vector<T> to_host() const {
    std::vector<T> h(n_);
    MOPT_CHECK_CUDA(cudaDeviceSynchronize());
    MOPT_CHECK_CUDA(cudaMemcpy(h.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }

 private:
  void* base_ = nullptr;
  T* ptr_ = nullptr;
  size_t n_;
};

/// Bitwise equality of two host arrays (NaN payloads included).
template <typename T>
::testing::AssertionResult bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << "size differs";
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) {
      return ::testing::AssertionFailure() << "first difference at element " << i;
    }
  }
  return ::testing::AssertionSuccess();
}

}  // namespace mopt::test
