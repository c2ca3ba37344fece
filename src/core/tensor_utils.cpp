#include "core/tensor_utils.h"

#include <memory>
#include <sstream>

namespace mopt::core {

kernels::DType kernel_dtype(const at::Tensor& t, const char* what) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return kernels::DType::kFloat32;
    case at::kHalf:
      return kernels::DType::kFloat16;
    case at::kBFloat16:
      return kernels::DType::kBFloat16;
    default:
      MOPT_CHECK_TYPE(false, what, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
  return kernels::DType::kFloat32;
}

std::string shape_str(at::IntArrayRef shape) {
  std::ostringstream os;
  os << shape;
  return os.str();
}

std::vector<bool> amax_keep_mask(const at::Tensor& x, const at::Tensor& amax) {
  const int64_t nd = x.dim();
  std::vector<bool> keep(nd, false);
  if (amax.numel() == 1) return keep;
  MOPT_CHECK_VALUE(amax.dim() <= nd, "amax of shape ", shape_str(amax.sizes()),
                   " has more dims than the input of shape ", shape_str(x.sizes()));
  const int64_t off = nd - amax.dim();
  for (int64_t d = 0; d < amax.dim(); ++d) {
    const int64_t a = amax.size(d), s = x.size(off + d);
    MOPT_CHECK_VALUE(a == 1 || a == s, "amax of shape ", shape_str(amax.sizes()),
                     " does not broadcast over the input of shape ", shape_str(x.sizes()),
                     " (dim ", off + d, ": amax has ", a, ", input has ", s,
                     "); expected a keepdims reduction of the input");
    keep[off + d] = a == s && s != 1;
  }
  return keep;
}

kernels::ReduceLayout reduce_layout(const at::Tensor& x, const std::vector<bool>& keep) {
  std::unique_ptr<bool[]> k(new bool[keep.size() + 1]);
  for (size_t i = 0; i < keep.size(); ++i) k[i] = keep[i];
  kernels::ReduceLayout layout;
  call_kernel([&] {
    layout = kernels::make_reduce_layout(x.sizes().data(), static_cast<int>(x.dim()), k.get());
  });
  return layout;
}

std::vector<int64_t> normalize_axes(at::IntArrayRef axes, int64_t ndim, const char* what) {
  std::vector<int64_t> out;
  for (int64_t a : axes) {
    const int64_t n = a < 0 ? a + ndim : a;
    MOPT_CHECK_VALUE(n >= 0 && n < std::max<int64_t>(ndim, 1), what, " ", a,
                     " is out of range for a tensor of ", ndim, " dims");
    for (int64_t o : out) MOPT_CHECK_VALUE(o != n, what, " ", a, " is given twice");
    out.push_back(n);
  }
  return out;
}

std::vector<bool> keep_mask_from_axes(const std::vector<int64_t>& axes, int64_t ndim) {
  std::vector<bool> keep(ndim, false);
  for (int64_t a : axes) {
    if (a < ndim) keep[a] = true;
  }
  return keep;
}

}  // namespace mopt::core
