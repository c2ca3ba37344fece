// amax = max |x| reduced over every dim the layout does not keep (keepdims result),
// plus NaN/Inf detection for calibration.
#pragma once

#include <cstdint>

#include "common/cuda_stream.h"
#include "common/dtype.h"
#include "common/layout.h"

namespace mopt::kernels::reduce {

/// Arguments of amax_cpu / amax_cuda: x contiguous with layout.numel elements of dtype;
/// out receives layout.out_numel fp32 values (overwritten). A NaN input yields NaN in its slot,
/// an infinite input yields inf.
struct AmaxParams {
  const void* x = nullptr;
  DType dtype = DType::kFloat32;
  ReduceLayout layout;
  float* out = nullptr;
};

/// CPU implementation, parallel over the outermost kept dim or over chunks with partial results.
void amax_cpu(const AmaxParams& p);

/// CUDA implementation on `stream` (device pointers); out is zeroed asynchronously first.
void amax_cuda(const AmaxParams& p, cudaStream_t stream);

}  // namespace mopt::kernels::reduce
