// Runs the pack kernels on the device of the tensors (internal to libmopt).
#pragma once

#include <c10/core/Device.h>

#include "pack/pack.h"

namespace mopt {

/// pack_cpu / pack_cuda for tensors on `device`; kernel errors become ValueError.
void run_pack(const kernels::pack::PackParams& p, const c10::Device& device);
/// dequantize_cpu / dequantize_cuda for tensors on `device`.
void run_dequantize(const kernels::pack::PackParams& p, const c10::Device& device);

#if defined(MOPT_WITH_CUDA_OPS)
/// The CUDA launches on the current stream (src/quant/pack_cuda.cpp).
void run_pack_cuda(const kernels::pack::PackParams& p, const c10::Device& device);
void run_dequantize_cuda(const kernels::pack::PackParams& p, const c10::Device& device);
#endif

}  // namespace mopt
