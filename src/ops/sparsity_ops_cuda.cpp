// CUDA implementations of the N:M sparsity ops (compiled only when torch has CUDA). Kernels run
// on the caller's current stream; each op then reads back one flag or counter (a device sync),
// because NaN weights, groups with more than 2 nonzeros and foreign metadata must raise.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "core/tensor_utils.h"
#include "ops/sparsity_common.h"

namespace mopt::ops {
namespace {

namespace ks = kernels::sparsity;

// One int32 device counter, zeroed.
at::Tensor device_counter(const at::Tensor& like) {
  return at::zeros({1}, like.options().dtype(at::kInt));
}

at::Tensor nm_mask_cuda(const at::Tensor& weight, const c10::optional<at::Tensor>& column_factor,
                        int64_t n, int64_t m, c10::string_view name) {
  const c10::cuda::CUDAGuard guard(weight.device());
  NmMaskCall c = prepare_nm_mask(weight, column_factor, n, m, name);
  const at::Tensor flag = device_counter(weight);
  c.params.nonfinite_found = flag.mutable_data_ptr<int32_t>();
  core::call_kernel([&] { ks::nm_mask_cuda(c.params, at::cuda::getCurrentCUDAStream()); });
  if (flag.item<int32_t>() != 0) throw_nonfinite_weight(name);
  return c.mask;
}

std::tuple<at::Tensor, at::Tensor> compress_2to4_cuda(const at::Tensor& weight) {
  const c10::cuda::CUDAGuard guard(weight.device());
  Compress2to4Call c = prepare_compress_2to4(weight);
  const at::Tensor invalid = device_counter(weight);
  c.params.invalid_groups = invalid.mutable_data_ptr<int32_t>();
  core::call_kernel([&] { ks::compress_2to4_cuda(c.params, at::cuda::getCurrentCUDAStream()); });
  if (const int32_t count = invalid.item<int32_t>(); count != 0) throw_not_2to4(count);
  return {c.values, c.meta};
}

at::Tensor decompress_2to4_cuda(const at::Tensor& values, const at::Tensor& meta) {
  const c10::cuda::CUDAGuard guard(values.device());
  Decompress2to4Call c = prepare_decompress_2to4(values, meta);
  const at::Tensor invalid = device_counter(values);
  c.params.invalid_groups = invalid.mutable_data_ptr<int32_t>();
  core::call_kernel([&] { ks::decompress_2to4_cuda(c.params, at::cuda::getCurrentCUDAStream()); });
  if (const int32_t count = invalid.item<int32_t>(); count != 0) throw_bad_2to4_meta(count);
  return c.dense;
}

}  // namespace

TORCH_LIBRARY_IMPL(mopt, CUDA, m) {
  m.impl("nm_mask", &nm_mask_cuda);
  m.impl("compress_2to4", &compress_2to4_cuda);
  m.impl("decompress_2to4", &decompress_2to4_cuda);
}

}  // namespace mopt::ops
