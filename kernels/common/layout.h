// How a reduced tensor (amax, keepdims) broadcasts over a contiguous input.
// Adjacent dimensions that are both kept or both reduced are merged, so per-tensor, per-channel
// on any axis, several kept axes and 2-D blocks all become a short list of alternating runs.
#pragma once

#include <cstdint>

#include "common/macros.h"

namespace mopt::kernels {

/// Coalesced broadcast of a keepdims reduction over a contiguous tensor.
struct ReduceLayout {
  static constexpr int kMaxDims = 8;
  int ndim = 1;                      // coalesced dims, outermost first (>= 1)
  int64_t sizes[kMaxDims] = {1};     // size of each coalesced dim
  int64_t out_strides[kMaxDims] = {0};  // stride into the reduced tensor; 0 for reduced dims
  int64_t numel = 1;                 // elements of the input
  int64_t out_numel = 1;             // elements of the reduced tensor

  /// Size of the innermost (contiguous) coalesced dim.
  MOPT_HOST_DEVICE int64_t inner() const { return sizes[ndim - 1]; }
  /// True when the innermost dim is kept (the reduced index changes along it).
  MOPT_HOST_DEVICE bool inner_kept() const { return out_strides[ndim - 1] != 0; }

  /// Offset into the reduced tensor of the first element of row `row` (a row is one run of the
  /// innermost dim).
  MOPT_HOST_DEVICE int64_t row_offset(int64_t row) const {
    int64_t off = 0;
    for (int d = ndim - 2; d >= 0; --d) {
      const int64_t i = row % sizes[d];
      row /= sizes[d];
      off += i * out_strides[d];
    }
    return off;
  }

  /// Offset into the reduced tensor of flat input element `index`.
  MOPT_HOST_DEVICE int64_t offset(int64_t index) const {
    const int64_t in = inner();
    return row_offset(index / in) + (index % in) * out_strides[ndim - 1];
  }
};

/// Builds the layout for an input of `shape` (ndim dims, contiguous) whose reduction keeps the
/// dims where keep[d] is true. A 0-dim input is treated as shape [1].
inline ReduceLayout make_reduce_layout(const int64_t* shape, int ndim, const bool* keep) {
  ReduceLayout l;
  int64_t sizes[64];
  bool kept[64];
  int n = 0;
  l.numel = 1;
  l.out_numel = 1;
  MOPT_CHECK(ndim <= 64, "tensors of more than 64 dims are not supported (got ", ndim, ")");
  for (int d = 0; d < ndim; ++d) {
    MOPT_CHECK(shape[d] >= 0, "negative size ", shape[d], " in dim ", d);
    l.numel *= shape[d];
    if (keep[d]) l.out_numel *= shape[d];
    if (shape[d] == 1) continue;  // size-1 dims do not change any index
    if (n > 0 && kept[n - 1] == keep[d]) {
      sizes[n - 1] *= shape[d];
    } else {
      sizes[n] = shape[d];
      kept[n] = keep[d];
      ++n;
    }
  }
  if (n == 0) {
    sizes[0] = 1;
    kept[0] = false;
    n = 1;
  }
  MOPT_CHECK(n <= ReduceLayout::kMaxDims, "the kept axes alternate with reduced axes ", n,
             " times; at most ", ReduceLayout::kMaxDims, " runs are supported");
  l.ndim = n;
  int64_t stride = 1;
  for (int d = n - 1; d >= 0; --d) {
    l.sizes[d] = sizes[d];
    l.out_strides[d] = kept[d] ? stride : 0;
    if (kept[d]) stride *= sizes[d];
  }
  return l;
}

}  // namespace mopt::kernels
