// Error checks of the LibTorch layer. Each maps to the Python exception a user expects
// (ValueError, TypeError, RuntimeError, NotImplementedError) when it crosses into Python, with
// the message naming the argument, its value and what was expected.
#pragma once

#include <c10/util/Exception.h>

/// Invalid argument value -> ValueError.
#define MOPT_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, "mopt: ", __VA_ARGS__)
/// Wrong argument type or dtype -> TypeError.
#define MOPT_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, "mopt: ", __VA_ARGS__)
/// Invalid state or data (NaN statistics, missing calibration) -> RuntimeError.
#define MOPT_CHECK_STATE(cond, ...) TORCH_CHECK(cond, "mopt: ", __VA_ARGS__)
/// A documented capability that this build or format does not provide -> NotImplementedError.
#define MOPT_CHECK_IMPLEMENTED(cond, ...) TORCH_CHECK_NOT_IMPLEMENTED(cond, "mopt: ", __VA_ARGS__)
