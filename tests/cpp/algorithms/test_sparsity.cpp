// The sparsity solvers of include/mopt/sparsity/solvers.h: pattern parsing, weight layouts, the
// magnitude / Wanda / SparseGPT masks against plain ATen references written here (sorting, a
// float64 OBS loop), convolution patches, the distributed-free statistics and the error paths.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "mopt/sparsity/solvers.h"

namespace mopt::sparsity {
namespace {

at::Tensor randn(std::vector<int64_t> shape, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn(shape, gen, at::TensorOptions().dtype(at::kFloat));
}

// Keep the n largest scores of each group of m along the last dim (float64 sort).
at::Tensor ref_mask(const at::Tensor& score, int64_t n, int64_t m) {
  const int64_t rows = score.size(0), cols = score.size(1);
  const at::Tensor g = score.to(at::kDouble).reshape({rows, cols / m, m});
  const at::Tensor idx = std::get<1>(g.sort(/*stable=*/true, /*dim=*/2, /*descending=*/true));
  return at::zeros_like(g, g.options().dtype(at::kBool))
      .scatter_(2, idx.narrow(2, 0, n), true)
      .reshape({rows, cols});
}

// Float64 SparseGPT on [rows, cols] (no blocking), as the published algorithm states it.
std::pair<at::Tensor, at::Tensor> ref_sparsegpt(const at::Tensor& w0, const at::Tensor& h0,
                                                int64_t n, int64_t m, double damp) {
  at::Tensor w = w0.to(at::kDouble).clone();
  at::Tensor h = h0.to(at::kDouble).clone();
  h.diagonal().add_(damp * h.diagonal().mean().item<double>());
  const at::Tensor u = at::linalg_cholesky(at::cholesky_inverse(at::linalg_cholesky(h)),
                                           /*upper=*/true);
  const int64_t cols = w.size(1);
  at::Tensor mask = at::zeros(w.sizes(), at::kBool);
  for (int64_t j = 0; j < cols; ++j) {
    if (j % m == 0) {
      const at::Tensor d = u.diagonal().narrow(0, j, m);
      mask.narrow(1, j, m).copy_(ref_mask(w.narrow(1, j, m).abs() / d, n, m));
    }
    const at::Tensor x = w.select(1, j).clone();
    const at::Tensor q = x * mask.select(1, j);
    const at::Tensor e = (x - q) / u[j][j];
    w.narrow(1, j, cols - j).sub_(e.unsqueeze(1) * u[j].narrow(0, j, cols - j).unsqueeze(0));
    w.select(1, j).copy_(q);
  }
  return {mask, w};
}

TEST(SparsityPattern, Parses) {
  EXPECT_EQ(parse_pattern("2:4 sparsity").n, 2);
  EXPECT_EQ(parse_pattern("2:4 sparsity").m, 4);
  EXPECT_EQ(parse_pattern("4:8").m, 8);
  EXPECT_EQ(parse_pattern("16:32 sparsity").str(), "16:32 sparsity");
  for (const char* bad : {"", "2:4 sparse", "2-4 sparsity", "5:4 sparsity", "0:4", "2:64",
                          "x:4", "2:4 sparsity extra", "99999999999:4"}) {
    EXPECT_THROW(parse_pattern(bad), c10::ValueError) << bad;
  }
}

TEST(SparsityLayout, MatrixRoundTrips) {
  const at::Tensor lin = randn({6, 8}, 1), conv1 = randn({5, 8, 3}, 2);
  const at::Tensor conv2 = randn({4, 8, 3, 2}, 3);
  EXPECT_TRUE(at::equal(weight_from_matrix(weight_matrix(lin, WeightLayout::kLinear), lin,
                                           WeightLayout::kLinear), lin));
  EXPECT_TRUE(at::equal(weight_from_matrix(weight_matrix(lin, WeightLayout::kTransposed), lin,
                                           WeightLayout::kTransposed), lin));
  for (const at::Tensor& w : {conv1, conv2}) {
    const at::Tensor m = weight_matrix(w, WeightLayout::kConv);
    EXPECT_EQ(m.size(1), w.numel() / w.size(0));
    EXPECT_TRUE(at::equal(weight_from_matrix(m, w, WeightLayout::kConv), w));
  }
  // columns: kernel position first, input channel fastest
  const at::Tensor m2 = weight_matrix(conv2, WeightLayout::kConv);
  EXPECT_EQ(m2[1][(1 * 2 + 1) * 8 + 5].item<float>(), conv2[1][5][1][1].item<float>());
}

TEST(SparsityMagnitude, MatchesSortReferenceForEveryLayout) {
  const at::Tensor w = randn({16, 32}, 4);
  EXPECT_TRUE(at::equal(magnitude_mask(w, WeightLayout::kLinear, {2, 4}),
                        ref_mask(w.abs(), 2, 4)));
  EXPECT_TRUE(at::equal(magnitude_mask(w, WeightLayout::kLinear, {4, 8}),
                        ref_mask(w.abs(), 4, 8)));
  const at::Tensor t = randn({32, 12}, 5);  // GPT-2 Conv1D [in, out]
  EXPECT_TRUE(at::equal(magnitude_mask(t, WeightLayout::kTransposed, {2, 4}),
                        ref_mask(t.t().abs(), 2, 4).t()));
  const at::Tensor c = randn({6, 8, 3, 3}, 6);
  const at::Tensor mc = magnitude_mask(c, WeightLayout::kConv, {2, 4});
  EXPECT_EQ(mc.sizes(), c.sizes());
  // every group of 4 consecutive input channels at one kernel position keeps 2
  EXPECT_TRUE(mc.to(at::kInt).reshape({6, 2, 4, 3, 3}).sum(2).eq(2).all().item<bool>());
}

TEST(SparsityMagnitude, RejectsIncompatibleLayers) {
  try {
    magnitude_mask(randn({8, 6}, 7), WeightLayout::kLinear, {2, 4}, "blocks.3.fc");
    FAIL() << "expected an error";
  } catch (const c10::ValueError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("layer 'blocks.3.fc'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("multiple of 4"), std::string::npos) << msg;
  }
  EXPECT_FALSE(layer_supported(randn({4, 6, 3}, 8), WeightLayout::kConv, {2, 4}));
  EXPECT_THROW(magnitude_mask(randn({2, 8, 1, 1, 1}, 9), WeightLayout::kConv, {2, 4}),
               c10::ValueError);
}

TEST(SparseGpt, MatchesFloat64Reference) {
  const at::Tensor w = randn({12, 48}, 10);
  const at::Tensor x = randn({300, 48}, 11);
  const at::Tensor h = x.t().mm(x).mul(2.0 / 300);
  SparseGptOptions o;
  o.col_block_size = 16;
  o.hessian_damp = 0.05;
  const SparsityUpdate got = sparsegpt_prune(w, h, {2, 4}, o, "fc");
  const auto [mask, weight] = ref_sparsegpt(w, h, 2, 4, 0.05);
  EXPECT_TRUE(at::equal(got.mask, mask));
  EXPECT_TRUE(at::allclose(got.weight->to(at::kDouble), weight, 1e-4, 1e-4));
  EXPECT_GT(got.loss, 0.0);
  o.update_weights = false;
  const SparsityUpdate only = sparsegpt_prune(w, h, {2, 4}, o, "fc");
  EXPECT_TRUE(at::equal(only.mask, mask));
  EXPECT_TRUE(at::equal(*only.weight, w * mask));
}

TEST(SparseGpt, OutlierChannelHessianMatchesFloat64Reference) {
  // An LLM-like outlier input channel: the condition bound sends the factorization to fp64; the
  // left-looking blocks (8 columns) must still give the reference's masks and weights.
  const at::Tensor w = randn({16, 64}, 14);
  at::Tensor x = randn({400, 64}, 15);
  x.select(1, 5).mul_(300.0);
  const at::Tensor h = x.t().mm(x).mul(2.0 / 400);
  SparseGptOptions o;
  o.col_block_size = 8;
  o.hessian_damp = 0.01;
  const SparsityUpdate got = sparsegpt_prune(w, h, {2, 4}, o, "fc");
  const auto [mask, weight] = ref_sparsegpt(w, h, 2, 4, 0.01);
  EXPECT_TRUE(at::equal(got.mask, mask));
  EXPECT_TRUE(at::allclose(got.weight->to(at::kDouble), weight, 1e-4, 1e-4));
}

TEST(SparseGpt, BlockSizeDoesNotChangeTheResult) {
  const at::Tensor w = randn({8, 64}, 12);
  const at::Tensor x = randn({200, 64}, 13);
  const at::Tensor h = x.t().mm(x).mul(2.0 / 200);
  SparseGptOptions a, b;
  a.col_block_size = 8;
  b.col_block_size = 128;
  const SparsityUpdate ra = sparsegpt_prune(w, h, {2, 4}, a), rb = sparsegpt_prune(w, h, {2, 4}, b);
  EXPECT_TRUE(at::equal(ra.mask, rb.mask));
  EXPECT_TRUE(at::allclose(*ra.weight, *rb.weight, 1e-5, 1e-5));
}

TEST(SparseGpt, Errors) {
  const at::Tensor w = randn({4, 8}, 14);
  const at::Tensor h = at::eye(8);
  EXPECT_THROW(sparsegpt_prune(w, at::eye(6), {2, 4}, {}), c10::ValueError);
  SparseGptOptions o;
  o.hessian_damp = 2.0;
  EXPECT_THROW(sparsegpt_prune(w, h, {2, 4}, o), c10::ValueError);
  at::Tensor bad = w.clone();
  bad[0][0] = std::nanf("");
  EXPECT_THROW(sparsegpt_prune(bad, h, {2, 4}, {}, "x"), c10::Error);
  SparseGptLayer layer(w, WeightLayout::kLinear, {}, {2, 4}, {}, "fc1");
  try {
    layer.solve();
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer 'fc1'"), std::string::npos);
  }
  at::Tensor nan_input = randn({3, 8}, 15);
  nan_input[1][2] = std::nanf("");
  try {
    layer.collect(nan_input);
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("NaN"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("layer 'fc1'"), std::string::npos);
  }
}

TEST(Wanda, ScoresByWeightTimesInputNorm) {
  const at::Tensor w = randn({10, 16}, 16);
  WandaLayer layer(w, WeightLayout::kLinear, {}, {2, 4}, "fc");
  const at::Tensor x1 = randn({5, 7, 16}, 17), x2 = randn({9, 16}, 18);
  layer.collect(x1);
  layer.collect(x2);
  layer.finish();
  EXPECT_EQ(layer.num_tokens(), 44);
  const at::Tensor all = at::cat({x1.reshape({-1, 16}), x2}).to(at::kDouble);
  const at::Tensor norms = all.pow(2).sum(0).sqrt();
  EXPECT_TRUE(at::allclose(layer.column_norms().to(at::kDouble), norms, 1e-6, 1e-6));
  EXPECT_TRUE(at::equal(layer.solve().mask, ref_mask(w.abs().to(at::kDouble) * norms, 2, 4)));
}

TEST(Wanda, ConvolutionPatchesMatchUnfold) {
  // Conv2d [out 6, in 8, 3x3], stride 2, padding 1: columns of the patch matrix in
  // (kernel position, channel) order, so the column norms match an explicit unfold.
  const at::Tensor w = randn({6, 8, 3, 3}, 19);
  ConvGeometry g{{3, 3}, {2, 2}, {1, 1}, {1, 1}, 1};
  WandaLayer layer(w, WeightLayout::kConv, g, {2, 4}, "conv");
  const at::Tensor x = randn({2, 8, 7, 5}, 20);
  layer.collect(x);
  layer.collect(x[0]);  // unbatched input
  layer.finish();
  const at::Tensor patches = at::im2col(x, {3, 3}, {1, 1}, {1, 1}, {2, 2});  // [2, 72, L]
  const int64_t l = patches.size(2);
  const at::Tensor cols = patches.reshape({2, 8, 9, l}).permute({0, 3, 2, 1}).reshape({-1, 72});
  const at::Tensor cols0 = cols.narrow(0, 0, l);
  const at::Tensor norms = (cols.pow(2).sum(0) + cols0.pow(2).sum(0)).to(at::kDouble).sqrt();
  EXPECT_TRUE(at::allclose(layer.column_norms().to(at::kDouble), norms, 1e-5, 1e-5));
  const at::Tensor mask = layer.solve().mask;
  EXPECT_EQ(mask.sizes(), w.sizes());
  EXPECT_TRUE(at::equal(weight_matrix(mask, WeightLayout::kConv),
                        ref_mask(weight_matrix(w, WeightLayout::kConv).abs().to(at::kDouble) *
                                     norms, 2, 4)));
  EXPECT_THROW(layer.collect(randn({2, 6, 7, 5}, 21)), c10::ValueError);
  ConvGeometry grouped = g;
  grouped.groups = 2;
  EXPECT_THROW(WandaLayer(randn({6, 4, 3, 3}, 22), WeightLayout::kConv, grouped, {2, 4}),
               c10::NotImplementedError);
}

TEST(Wanda, Conv1dPatches) {
  const at::Tensor w = randn({4, 8, 3}, 23);
  ConvGeometry g{{3}, {1}, {1}, {2}, 1};
  SparseGptLayer layer(w, WeightLayout::kConv, g, {2, 4}, {}, "c1");
  layer.collect(randn({3, 8, 11}, 24));
  layer.finish();
  EXPECT_EQ(layer.num_tokens(), 3 * 9);  // L_out = 11 + 2 - 2 * 2 = 9
  const SparsityUpdate u = layer.solve();
  EXPECT_EQ(u.mask.sizes(), w.sizes());
  EXPECT_TRUE(u.mask.to(at::kInt).reshape({4, 2, 4, 3}).sum(2).eq(2).all().item<bool>());
  EXPECT_TRUE(u.weight->masked_select(u.mask.logical_not()).eq(0).all().item<bool>());
}

}  // namespace
}  // namespace mopt::sparsity
