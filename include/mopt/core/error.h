// Error checks of the LibTorch layer. Each maps to the Python exception a user expects
// (ValueError, TypeError, RuntimeError, NotImplementedError) when it crosses into Python, with
// the message naming the argument, its value and what was expected.
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>

/// Invalid argument value -> ValueError.
#define MOPT_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, "mopt: ", __VA_ARGS__)
/// Wrong argument type or dtype -> TypeError.
#define MOPT_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, "mopt: ", __VA_ARGS__)
/// Invalid state or data (NaN statistics, missing calibration) -> RuntimeError.
#define MOPT_CHECK_STATE(cond, ...) TORCH_CHECK(cond, "mopt: ", __VA_ARGS__)
/// A warning whose message is shown as is (mopt._C turns it into a Python UserWarning of the
/// calling Python code).
#define MOPT_WARN(...)                                                                     \
  ::c10::warn(::c10::Warning(::c10::UserWarning(),                                         \
                             {__func__, __FILE__, static_cast<uint32_t>(__LINE__)},        \
                             ::c10::str(__VA_ARGS__), /*verbatim=*/true))
/// A documented capability that this build or format does not provide -> NotImplementedError.
#define MOPT_CHECK_IMPLEMENTED(cond, ...) TORCH_CHECK_NOT_IMPLEMENTED(cond, "mopt: ", __VA_ARGS__)
