// Macros shared by every kernel family: host/device qualifiers and error checks.
// Torch-free: kernels report errors by throwing mopt::kernels::KernelError.
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define MOPT_HOST_DEVICE __host__ __device__ __forceinline__
#define MOPT_DEVICE __device__ __forceinline__
#else
#define MOPT_HOST_DEVICE inline
#define MOPT_DEVICE inline
#endif

namespace mopt::kernels {

/// ceil(n / d) for n >= 0, d >= 1 without the overflow of (n + d - 1) / d when d is near
/// INT64_MAX (a block size of 2**63 - 1 must mean one block, not a negative count).
MOPT_HOST_DEVICE int64_t ceil_div(int64_t n, int64_t d) { return n / d + (n % d != 0); }

/// Error thrown by the kernel layer when a caller breaks a precondition.
class KernelError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {

template <typename... Args>
[[noreturn]] void throw_kernel_error(const char* file, int line, const char* cond,
                                     const Args&... args) {
  std::ostringstream os;
  os << "mopt: ";
  (os << ... << args);
  os << " [check '" << cond << "' failed at " << file << ":" << line << "]";
  throw KernelError(os.str());
}

}  // namespace detail
}  // namespace mopt::kernels

/// Throws KernelError naming the failed condition, file and line, with a message built from the
/// remaining arguments (streamed). Host code only.
#define MOPT_CHECK(cond, ...)                                                          \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      ::mopt::kernels::detail::throw_kernel_error(__FILE__, __LINE__, #cond, __VA_ARGS__); \
    }                                                                                  \
  } while (0)

#if defined(__CUDACC__) || defined(MOPT_WITH_CUDA_RUNTIME)
#include <cuda_runtime.h>
/// Throws KernelError with the CUDA error string when a runtime call fails.
#define MOPT_CHECK_CUDA(expr)                                                          \
  do {                                                                                 \
    cudaError_t mopt_err_ = (expr);                                                    \
    if (mopt_err_ != cudaSuccess) {                                                    \
      ::mopt::kernels::detail::throw_kernel_error(__FILE__, __LINE__, #expr,           \
                                                  "CUDA error: ", cudaGetErrorString(mopt_err_)); \
    }                                                                                  \
  } while (0)
/// Checks the last kernel launch without synchronizing the device.
#define MOPT_CHECK_LAUNCH() MOPT_CHECK_CUDA(cudaGetLastError())
#endif
