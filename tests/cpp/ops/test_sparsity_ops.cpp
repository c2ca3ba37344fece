// The N:M sparsity ops through the dispatcher from C++: nm_mask against a stable-sort ATen
// formulation, the 2:4 layout on a hand-checked example and round trips, Meta shapes, autograd
// through compress/decompress, and the error messages (type and text).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>

#include <limits>
#include <string>

#include "mopt/sparsity/nm.h"

namespace mopt {
namespace {

using sparsity::compress_2to4;
using sparsity::decompress_2to4;
using sparsity::nm_mask;

// Plain ATen: per group of m columns, sort the fp32 scores descending with a stable sort (equal
// scores keep column order) and keep the first n.
at::Tensor aten_nm_mask(const at::Tensor& w, const c10::optional<at::Tensor>& factor, int64_t n,
                        int64_t m) {
  at::Tensor s = w.to(at::kFloat).abs();
  if (factor) s = s * factor->to(at::kFloat);
  const int64_t rows = w.size(0), groups = w.size(1) / m;
  const at::Tensor order = std::get<1>(
      s.reshape({rows, groups, m}).sort(/*stable=*/true, /*dim=*/-1, /*descending=*/true));
  at::Tensor mask = at::zeros({rows, groups, m}, at::kBool);
  mask.scatter_(-1, order.narrow(-1, 0, n), true);
  return mask.reshape({rows, w.size(1)});
}

// The message of the exception of type E that f throws.
template <typename E, typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what_without_backtrace();
  }
  ADD_FAILURE() << "no exception of the expected type";
  return "";
}

TEST(SparsityOps, NmMaskMatchesAten) {
  at::manual_seed(0);
  for (const auto dtype : {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble}) {
    for (const auto& [n, m] : {std::pair<int64_t, int64_t>{2, 4}, {4, 8}, {1, 4}, {16, 32}}) {
      SCOPED_TRACE(testing::Message() << dtype << " " << n << ":" << m);
      const at::Tensor w = at::randn({48, 4 * m}).to(dtype);
      const at::Tensor f = at::rand({4 * m}) + 0.1;
      const at::Tensor mask = nm_mask(w, c10::nullopt, n, m);
      EXPECT_EQ(mask.scalar_type(), at::kBool);
      EXPECT_EQ(mask.sizes(), w.sizes());
      EXPECT_TRUE(at::equal(mask, aten_nm_mask(w, c10::nullopt, n, m)));
      EXPECT_TRUE(at::equal(nm_mask(w, f, n, m), aten_nm_mask(w, f, n, m)));
      EXPECT_TRUE(at::equal(nm_mask(w, f.to(at::kDouble), n, m), aten_nm_mask(w, f, n, m)));
    }
  }
}

TEST(SparsityOps, NmMaskTiesAndNonContiguousInput) {
  // Rounded to a coarse grid so most groups hold equal magnitudes: ties keep the lower column.
  at::manual_seed(1);
  const at::Tensor w = (at::randn({64, 32}) * 2).round();
  EXPECT_TRUE(at::equal(nm_mask(w, c10::nullopt, 2, 4), aten_nm_mask(w, c10::nullopt, 2, 4)));
  const at::Tensor t = at::randn({32, 64}).t();  // non-contiguous [64, 32]
  EXPECT_TRUE(at::equal(nm_mask(t, c10::nullopt, 2, 4), aten_nm_mask(t, c10::nullopt, 2, 4)));
}

TEST(SparsityOps, NmMaskThroughTheDispatcherByName) {
  const at::Tensor w = at::tensor({0.5f, -3.0f, 2.0f, 0.1f}).reshape({1, 4});
  auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mopt::nm_mask", "");
  const at::Tensor mask = op.typed<at::Tensor(const at::Tensor&, const c10::optional<at::Tensor>&,
                                              int64_t, int64_t, c10::string_view)>()
                              .call(w, c10::nullopt, 2, 4, "");
  EXPECT_TRUE(at::equal(mask, at::tensor({0, 1, 1, 0}).to(at::kBool).reshape({1, 4})));
}

TEST(SparsityOps, NmMaskErrorsNameTheLayer) {
  const at::Tensor w = at::randn({4, 6});
  std::string msg = error_of<c10::ValueError>([&] { nm_mask(w, c10::nullopt, 2, 4, "fc1"); });
  EXPECT_NE(msg.find("layer 'fc1': 2:4 sparsity needs the input dimension (6 cols) to be a "
                     "multiple of 4"),
            std::string::npos)
      << msg;
  msg = error_of<c10::ValueError>([] { nm_mask(at::randn({4, 8}), c10::nullopt, 5, 4, "fc1"); });
  EXPECT_NE(msg.find("layer 'fc1': N:M sparsity needs 1 <= N <= M <= 32, got 5:4"),
            std::string::npos)
      << msg;
  EXPECT_THROW(nm_mask(at::randn({4, 64}), c10::nullopt, 2, 64), c10::ValueError);
  EXPECT_THROW(nm_mask(at::randn({4, 8}), c10::nullopt, 0, 4), c10::ValueError);
  EXPECT_THROW(nm_mask(at::randn({2, 4, 8}), c10::nullopt, 2, 4), c10::ValueError);
  EXPECT_THROW(nm_mask(at::ones({4, 8}, at::kInt), c10::nullopt, 2, 4), c10::TypeError);
  msg = error_of<c10::ValueError>([] { nm_mask(at::randn({4, 8}), at::ones({4}), 2, 4, "fc1"); });
  EXPECT_NE(msg.find("layer 'fc1': column_factor has shape [4]"), std::string::npos) << msg;
  EXPECT_THROW(nm_mask(at::randn({4, 8}), at::ones({1, 8}), 2, 4), c10::ValueError);
  EXPECT_THROW(nm_mask(at::randn({4, 8}), at::ones({8}, at::kInt), 2, 4), c10::TypeError);

  // NaN / Inf data and a negative factor are RuntimeErrors naming the layer.
  at::Tensor bad = at::randn({4, 8});
  bad[2][5] = std::numeric_limits<float>::quiet_NaN();
  msg = error_of<c10::Error>([&] { nm_mask(bad, c10::nullopt, 2, 4, "blocks.3.mlp"); });
  EXPECT_NE(msg.find("layer 'blocks.3.mlp': the weight holds NaN or Inf"), std::string::npos)
      << msg;
  EXPECT_THROW(nm_mask(bad.to(at::kBFloat16), c10::nullopt, 2, 4), c10::Error);
  bad[2][5] = -std::numeric_limits<float>::infinity();
  EXPECT_THROW(nm_mask(bad, c10::nullopt, 1, 8), c10::Error);
  at::Tensor f = at::ones({8});
  f[3] = -1.0f;
  msg = error_of<c10::Error>([&] { nm_mask(at::randn({4, 8}), f, 2, 4, "fc2"); });
  EXPECT_NE(msg.find("layer 'fc2': column_factor must be non-negative"), std::string::npos) << msg;
  f[3] = std::numeric_limits<float>::infinity();
  msg = error_of<c10::Error>([&] { nm_mask(at::randn({4, 8}), f, 2, 4, "fc2"); });
  EXPECT_NE(msg.find("layer 'fc2': column_factor holds NaN or Inf"), std::string::npos) << msg;
}

// One row of 16 columns: groups [a 0 b 0], [0 c 0 d], [0 0 0 0], [0 e 0 0] have codes 0x8, 0xD,
// 0xE, 0x9 (idx0 | idx1 << 2), group g at bits 4g of the int16 word.
TEST(SparsityOps, Compress2to4HandChecked) {
  const at::Tensor dense = at::tensor({1.5f, 0.f, -2.f, 0.f, 0.f, 3.f, 0.f, 4.f, 0.f, 0.f, 0.f, 0.f,
                                       0.f, -5.f, 0.f, 0.f})
                               .reshape({1, 16})
                               .to(at::kHalf);
  const auto [values, meta] = compress_2to4(dense);
  EXPECT_EQ(values.scalar_type(), at::kHalf);
  EXPECT_EQ(meta.scalar_type(), at::kShort);
  EXPECT_TRUE(at::equal(
      values,
      at::tensor({1.5f, -2.f, 3.f, 4.f, 0.f, 0.f, -5.f, 0.f}).reshape({1, 8}).to(at::kHalf)));
  EXPECT_EQ(static_cast<uint16_t>(meta.item<int16_t>()), 0x9ED8u);
  EXPECT_TRUE(at::equal(decompress_2to4(values, meta), dense));
}

TEST(SparsityOps, Compress2to4RoundTrip) {
  at::manual_seed(2);
  for (const auto dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
    const at::Tensor w = at::randn({64, 128}).to(dtype);
    const at::Tensor pruned = w * nm_mask(w, c10::nullopt, 2, 4);
    const auto [values, meta] = compress_2to4(pruned);
    EXPECT_EQ(values.sizes(), (at::IntArrayRef{64, 64}));
    EXPECT_EQ(meta.sizes(), (at::IntArrayRef{64, 8}));
    EXPECT_TRUE(at::equal(decompress_2to4(values, meta), pruned));
    // The stored values are the kept weights in column order.
    EXPECT_TRUE(
        at::equal(values, w.masked_select(nm_mask(w, c10::nullopt, 2, 4)).reshape({64, 64})));
  }
}

TEST(SparsityOps, Compress2to4Errors) {
  std::string msg = error_of<c10::ValueError>([] { compress_2to4(at::zeros({4, 24})); });
  EXPECT_NE(msg.find("number of columns (24) to be a multiple of 16"), std::string::npos) << msg;
  at::Tensor dense = at::zeros({4, 32});
  dense[1].narrow(0, 8, 3).fill_(1.0f);  // three nonzeros in row 1, columns [8, 12)
  msg = error_of<c10::ValueError>([&] { compress_2to4(dense); });
  EXPECT_NE(msg.find("row 1, columns [8, 12) with 3 nonzeros"), std::string::npos) << msg;
  EXPECT_THROW(compress_2to4(at::zeros({32})), c10::ValueError);
  EXPECT_THROW(compress_2to4(at::zeros({4, 32}, at::kDouble)), c10::TypeError);

  const auto [values, meta] = compress_2to4(at::zeros({4, 32}));
  EXPECT_THROW(decompress_2to4(values, meta.to(at::kInt)), c10::TypeError);
  EXPECT_THROW(decompress_2to4(values, meta.narrow(1, 0, 1)), c10::ValueError);
  EXPECT_THROW(decompress_2to4(values.narrow(0, 0, 2), meta), c10::ValueError);
  const at::Tensor foreign = at::full({4, 2}, static_cast<int16_t>(0x0505), at::kShort);
  msg = error_of<c10::ValueError>([&] { decompress_2to4(values, foreign); });
  EXPECT_NE(msg.find("not increasing"), std::string::npos) << msg;
}

TEST(SparsityOps, MetaShapes) {
  const at::Tensor w = at::empty({64, 128}, at::TensorOptions().device(at::kMeta).dtype(at::kHalf));
  const at::Tensor mask = nm_mask(w, c10::nullopt, 2, 4);
  EXPECT_EQ(mask.device(), at::kMeta);
  EXPECT_EQ(mask.scalar_type(), at::kBool);
  EXPECT_EQ(mask.sizes(), w.sizes());
  const auto [values, meta] = compress_2to4(w);
  EXPECT_EQ(values.sizes(), (at::IntArrayRef{64, 64}));
  EXPECT_EQ(values.scalar_type(), at::kHalf);
  EXPECT_EQ(meta.sizes(), (at::IntArrayRef{64, 8}));
  EXPECT_EQ(meta.scalar_type(), at::kShort);
  EXPECT_EQ(decompress_2to4(values, meta).sizes(), w.sizes());
  EXPECT_THROW(nm_mask(w.narrow(1, 0, 6), c10::nullopt, 2, 4), c10::ValueError);
  EXPECT_THROW(compress_2to4(w.narrow(1, 0, 24)), c10::ValueError);
}

// compress moves the kept elements into values, so their gradient flows back to exactly those
// positions; decompress is the inverse movement.
TEST(SparsityOps, GradientsFollowTheStoredPositions) {
  at::manual_seed(3);
  const at::Tensor w = at::randn({32, 64});
  const at::Tensor mask = nm_mask(w, c10::nullopt, 2, 4);
  const at::Tensor pruned = (w * mask).detach().requires_grad_(true);
  auto [values, meta] = compress_2to4(pruned);
  EXPECT_FALSE(meta.requires_grad());
  const at::Tensor g = at::randn(values.sizes());
  (values * g).sum().backward();
  EXPECT_TRUE(at::equal(pruned.grad(), decompress_2to4(g, meta)));

  const at::Tensor v = values.detach().requires_grad_(true);
  const at::Tensor gd = at::randn({32, 64});
  (decompress_2to4(v, meta) * gd).sum().backward();
  EXPECT_TRUE(at::equal(v.grad(), gd.masked_select(mask).reshape({32, 32})));

  // The mask carries no gradient.
  EXPECT_FALSE(nm_mask(w.clone().requires_grad_(true), c10::nullopt, 2, 4).requires_grad());
}

}  // namespace
}  // namespace mopt
