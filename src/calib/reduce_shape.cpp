#include "calib/reduce_shape.h"

#include <ATen/ops/full.h>
#include <ATen/ops/tensor.h>

#include <limits>

#include "mopt/core/error.h"

namespace mopt::calib {

namespace {
constexpr int64_t kMaxDims = 16;
}

std::optional<std::vector<int64_t>> agree_on_shape(const ProcessGroup& group,
                                                   const std::optional<std::vector<int64_t>>& mine) {
  // [has, ndim, dims...] max-reduced, and the same with dims negated, so that the max and the
  // min of every entry over the ranks holding statistics are known: they must agree.
  // A rank without statistics contributes the lowest value everywhere, so it never wins.
  at::Tensor v = at::full({2 * (kMaxDims + 2)}, std::numeric_limits<int64_t>::min(), at::kLong);
  if (mine) {
    MOPT_CHECK_VALUE(static_cast<int64_t>(mine->size()) <= kMaxDims, "calibration across "
                     "processes supports up to ", kMaxDims, " dims, got ", mine->size());
    auto* p = v.data_ptr<int64_t>();
    p[0] = 1;
    p[1] = static_cast<int64_t>(mine->size());
    p[kMaxDims + 2] = 1;
    p[kMaxDims + 3] = -p[1];
    for (size_t d = 0; d < mine->size(); ++d) {
      p[2 + d] = (*mine)[d];
      p[kMaxDims + 4 + d] = -(*mine)[d];
    }
  }
  const at::Tensor r = group.all_reduce(v, ReduceOp::kMax);
  const auto* q = r.const_data_ptr<int64_t>();
  if (q[0] != 1) return std::nullopt;
  const int64_t ndim = q[1];
  MOPT_CHECK_STATE(-q[kMaxDims + 3] == ndim, "amax shape changed! (the processes "
                   "collected statistics of different ranks)");
  std::vector<int64_t> shape(ndim);
  for (int64_t d = 0; d < ndim; ++d) {
    shape[d] = q[2 + d];
    MOPT_CHECK_STATE(-q[kMaxDims + 4 + d] == shape[d], "amax shape changed! (the processes "
                     "collected statistics of different shapes)");
  }
  return shape;
}

}  // namespace mopt::calib
