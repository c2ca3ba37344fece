// CUDA implementations of the fake_quant family (compiled only when torch has CUDA). Kernels run
// on the caller's current stream; only an unsigned quantizer reads back its negative-input flag.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <ATen/ops/zeros.h>

#include "core/tensor_utils.h"
#include "ops/fake_quant_common.h"

namespace mopt::ops {
namespace {

at::Tensor fake_quant_int_cuda(const at::Tensor& x, const at::Tensor& amax, int64_t num_bits,
                               bool is_unsigned, bool narrow_range, bool, bool full_range) {
  const c10::cuda::CUDAGuard guard(x.device());
  FakeQuantCall c =
      prepare_fake_quant_int(x, amax, num_bits, is_unsigned, narrow_range, full_range);
  at::Tensor flag;
  if (is_unsigned) {
    flag = at::zeros({1}, x.options().dtype(at::kInt));
    c.params.negative_found = flag.mutable_data_ptr<int32_t>();
  }
  core::call_kernel([&] {
    kernels::fake_quant::fake_quant_cuda(c.params, at::cuda::getCurrentCUDAStream());
  });
  if (is_unsigned && flag.item<int32_t>() != 0) throw_negative_unsigned();
  return c.y;
}

at::Tensor fake_quant_int_asym_cuda(const at::Tensor& x, const at::Tensor& amax,
                                    const at::Tensor& zero_point, int64_t num_bits, bool) {
  const c10::cuda::CUDAGuard guard(x.device());
  FakeQuantCall c = prepare_fake_quant_int(x, amax, num_bits, false, false, true, zero_point);
  core::call_kernel([&] {
    kernels::fake_quant::fake_quant_cuda(c.params, at::cuda::getCurrentCUDAStream());
  });
  return c.y;
}

std::tuple<at::Tensor, at::Tensor> int_asym_range_cuda(const at::Tensor& lo, const at::Tensor& hi,
                                                       int64_t num_bits) {
  const c10::cuda::CUDAGuard guard(lo.device());
  AsymRangeCall c = prepare_int_asym_range(lo, hi, num_bits);
  core::call_kernel([&] {
    kernels::fake_quant::int_asym_range_cuda(c.params, at::cuda::getCurrentCUDAStream());
  });
  return {c.amax, c.zero_point};
}

at::Tensor fake_quant_fp_cuda(const at::Tensor& x, const c10::optional<at::Tensor>& amax,
                              int64_t exponent_bits, int64_t mantissa_bits, bool) {
  const c10::cuda::CUDAGuard guard(x.device());
  FakeQuantCall c = prepare_fake_quant_fp(x, amax, exponent_bits, mantissa_bits);
  core::call_kernel([&] {
    kernels::fake_quant::fake_quant_cuda(c.params, at::cuda::getCurrentCUDAStream());
  });
  return c.y;
}

at::Tensor amax_cuda(const at::Tensor& x, at::IntArrayRef keep_axes) {
  const c10::cuda::CUDAGuard guard(x.device());
  AmaxCall c = prepare_amax(x, keep_axes);
  core::call_kernel(
      [&] { kernels::reduce::amax_cuda(c.params, at::cuda::getCurrentCUDAStream()); });
  return c.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mopt, CUDA, m) {
  m.impl("fake_quant_int", &fake_quant_int_cuda);
  m.impl("fake_quant_int_asym", &fake_quant_int_asym_cuda);
  m.impl("int_asym_range", &int_asym_range_cuda);
  m.impl("fake_quant_fp", &fake_quant_fp_cuda);
  m.impl("amax", &amax_cuda);
}

}  // namespace mopt::ops
