// SmoothQuant and AWQ solvers against naive float64 formulations written here (plain loops over
// std::vector<double>, sharing no code with the library), plus their error paths.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cfenv>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "mopt/algorithms/awq.h"
#include "mopt/algorithms/layer_solver.h"
#include "mopt/algorithms/smoothquant.h"

namespace mopt::algorithms {
namespace {

// A quantizer config from its JSON (the typed C++ API takes configs, not JSON).
QuantizerAttributeConfig cfg_of(const std::string& json) {
  return QuantizerAttributeConfig::from_json(json);
}


using Matrix = std::vector<std::vector<double>>;  // [rows][cols]

Matrix to_matrix(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kDouble).contiguous().reshape({t.size(0), -1});
  Matrix m(c.size(0), std::vector<double>(c.size(1)));
  const double* p = c.data_ptr<double>();
  for (int64_t i = 0; i < c.size(0); ++i) {
    for (int64_t j = 0; j < c.size(1); ++j) m[i][j] = p[i * c.size(1) + j];
  }
  return m;
}

std::vector<double> to_vector(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kDouble).contiguous().reshape({-1});
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// Symmetric signed integer fake quant of one value, round half to even (SPEC §5).
double naive_fake_quant_int(double x, double amax, int bits) {
  const double maxbound = std::pow(2.0, bits - 1) - 1;
  if (amax <= std::ldexp(1.0, -24)) return 0.0;
  const double scale = maxbound / amax;
  const double q = std::clamp(std::nearbyint(x * scale), -maxbound - 1, maxbound);
  return q / scale;
}

// Integer fake quant of a weight matrix in blocks of `block` along each row (zero padding) with
// per-block amax (max |w| of the block, or `amax_of(row, block)` when given).
Matrix naive_block_quant(const Matrix& w, int block, int bits, const Matrix* amax = nullptr) {
  Matrix q = w;
  const size_t in = w[0].size();
  for (size_t r = 0; r < w.size(); ++r) {
    for (size_t b0 = 0, b = 0; b0 < in; b0 += block, ++b) {
      const size_t b1 = std::min(in, b0 + block);
      double m = 0;
      for (size_t j = b0; j < b1; ++j) m = std::max(m, std::fabs(w[r][j]));
      if (amax) m = (*amax)[r][b];
      for (size_t j = b0; j < b1; ++j) q[r][j] = naive_fake_quant_int(w[r][j], m, bits);
    }
  }
  return q;
}

// The AWQ scale of the paper / SPEC §5 in float64.
std::vector<double> naive_awq_scale(const std::vector<double>& act, const std::vector<double>& w,
                                    double alpha) {
  const double tiny = std::numeric_limits<float>::min();
  std::vector<double> s(act.size());
  for (size_t j = 0; j < s.size(); ++j) {
    s[j] = std::clamp(std::pow(act[j], alpha) / (std::pow(w[j], 1 - alpha) + tiny), 1e-4, 1e4);
  }
  const double norm =
      std::sqrt(*std::max_element(s.begin(), s.end()) * *std::min_element(s.begin(), s.end()));
  for (double& v : s) v /= norm;
  return s;
}

std::vector<double> naive_weight_scale(const Matrix& w, int block) {
  const size_t in = w[0].size();
  std::vector<double> mean(in, 0.0);
  for (const auto& row : w) {
    for (size_t b0 = 0; b0 < in; b0 += block) {
      const size_t b1 = std::min(in, b0 + block);
      double m = 0;
      for (size_t j = b0; j < b1; ++j) m = std::max(m, std::fabs(row[j]));
      for (size_t j = b0; j < b1; ++j) mean[j] += std::fabs(row[j]) / m / w.size();
    }
  }
  return mean;
}

// mean over tokens and outputs of (x (Wq / s)^T - x W^T)^2 for inputs x / s and weights W * s.
double naive_awq_loss(const Matrix& x, const Matrix& w, const std::vector<double>& s, int block,
                      int bits) {
  Matrix ws = w;
  for (auto& row : ws) {
    for (size_t j = 0; j < row.size(); ++j) row[j] *= s[j];
  }
  const Matrix q = naive_block_quant(ws, block, bits);
  double sum = 0;
  for (const auto& xt : x) {
    for (size_t r = 0; r < w.size(); ++r) {
      double yq = 0, y = 0;
      for (size_t j = 0; j < xt.size(); ++j) {
        yq += xt[j] / s[j] * q[r][j];
        y += xt[j] * w[r][j];
      }
      sum += (yq - y) * (yq - y);
    }
  }
  return sum / (x.size() * w.size());
}

constexpr char kInt4Block8[] = R"({"num_bits": 4, "block_sizes": {"-1": 8}})";

// Activations with a few outlier channels, as in real transformer inputs.
at::Tensor outlier_activations(at::IntArrayRef shape, int64_t seed) {
  at::manual_seed(seed);
  at::Tensor x = at::randn(shape);
  const int64_t in = shape.back();
  at::Tensor gain = at::ones({in});
  gain.index_put_({at::indexing::Slice(0, in, 7)}, 12.0);
  return x * gain;
}

// ---------------------------------------------------------------------------------------------
// SmoothQuant

TEST(SmoothQuant, ScaleMatchesFormula) {
  at::manual_seed(0);
  at::Tensor act = at::rand({24}) * 5 + 0.01;
  const at::Tensor wmax = at::rand({24}) + 0.05;
  act.index_put_({3}, 0.0);  // a dead channel gets scale 1
  for (const double alpha : {0.0, 0.5, 0.8, 1.0}) {
    const std::vector<double> got = to_vector(smoothquant_scale(act, wmax, alpha));
    const std::vector<double> a = to_vector(act), w = to_vector(wmax);
    for (size_t j = 0; j < a.size(); ++j) {
      const double want =
          a[j] == 0.0 ? 1.0
                      : std::clamp(std::pow(w[j], 1 - alpha) / std::pow(a[j], alpha), 1e-4, 1e4);
      EXPECT_NEAR(got[j], want, 2e-6 * want) << "alpha " << alpha << " channel " << j;
    }
  }
}

TEST(SmoothQuant, LayerStreamsMaxAndFolds) {
  at::manual_seed(1);
  const at::Tensor w = at::randn({12, 16});
  SmoothQuantLayer layer(w, 0.5, "blocks.0.fc");
  std::vector<at::Tensor> batches;
  for (int i = 0; i < 3; ++i) {
    batches.push_back(outlier_activations({2, 5, 16}, 10 + i));
    layer.collect(batches.back());
  }
  layer.collect(at::empty({0, 16}));  // an empty batch changes nothing
  EXPECT_EQ(layer.num_batches(), 3);

  std::vector<double> act(16, 0.0);
  for (const auto& b : batches) {
    const Matrix m = to_matrix(b.reshape({-1, 16}));
    for (const auto& row : m) {
      for (size_t j = 0; j < 16; ++j) act[j] = std::max(act[j], std::fabs(row[j]));
    }
  }
  const Matrix wm = to_matrix(w);
  std::vector<double> s(16);
  for (size_t j = 0; j < 16; ++j) {
    double wmax = 0;
    for (const auto& row : wm) wmax = std::max(wmax, std::fabs(row[j]));
    s[j] = std::clamp(std::sqrt(wmax) / std::sqrt(act[j]), 1e-4, 1e4);
  }
  const at::Tensor prior = at::rand({16}) + 0.5;
  const SmoothedLinear r = layer.compute(prior);
  const std::vector<double> pqs = to_vector(r.pre_quant_scale);
  const std::vector<double> p = to_vector(prior);
  const Matrix folded = to_matrix(r.weight);
  double input_amax = 0;
  for (size_t j = 0; j < 16; ++j) {
    EXPECT_NEAR(pqs[j], p[j] * s[j], 1e-5 * p[j] * s[j]);
    input_amax = std::max(input_amax, act[j] * s[j]);
    for (size_t i = 0; i < wm.size(); ++i) {
      EXPECT_NEAR(folded[i][j], wm[i][j] / s[j], 1e-5 * std::fabs(wm[i][j] / s[j]) + 1e-7);
    }
  }
  EXPECT_NEAR(r.input_amax.item<double>(), input_amax, 1e-5 * input_amax);
  EXPECT_EQ(r.input_amax.dim(), 0);
}

TEST(SmoothQuant, ErrorsNameTheLayer) {
  const at::Tensor w = at::randn({4, 8});
  SmoothQuantLayer layer(w, 1.0, "model.layers.3.mlp.up_proj");
  try {
    layer.compute();
    FAIL() << "expected an error for a layer without data";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.3.mlp.up_proj"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("no input"), std::string::npos);
  }
  EXPECT_THROW(layer.collect(at::randn({3, 7})), c10::ValueError);
  at::Tensor x = at::randn({3, 8});
  x.index_put_({1, 2}, std::numeric_limits<float>::quiet_NaN());
  layer.collect(x);
  try {
    layer.compute();
    FAIL() << "expected an error for NaN activations";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("NaN"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("up_proj"), std::string::npos);
  }
  EXPECT_THROW(SmoothQuantLayer(w, 1.5), c10::ValueError);
  EXPECT_THROW(SmoothQuantLayer(at::randn({4})), c10::ValueError);
  EXPECT_THROW(fold_pre_quant_scale(w, -at::ones({8}), at::ones({8})), c10::ValueError);
}

// The alpha search's loss for one alpha, in float64: the mean over sampled tokens and outputs
// of (Q_in(x s) Q_w(W / s)^T - x W^T)^2, Q_w int8 per output row, Q_in int8 with the per-tensor
// amax max_j act_j s_j (static) or each token's own max (dynamic), summed over batches.
double naive_sq_search_loss(const std::vector<Matrix>& batches, const Matrix& w,
                            const std::vector<double>& act, double alpha, bool dynamic,
                            int64_t max_tokens) {
  const size_t in = w[0].size();
  std::vector<double> s(in);
  double input_amax = 0;
  for (size_t j = 0; j < in; ++j) {
    double wmax = 0;
    for (const auto& row : w) wmax = std::max(wmax, std::fabs(row[j]));
    s[j] = std::clamp(std::pow(wmax, 1 - alpha) / std::pow(act[j], alpha), 1e-4, 1e4);
    input_amax = std::max(input_amax, act[j] * s[j]);
  }
  Matrix ws = w;
  for (auto& row : ws) {
    for (size_t j = 0; j < in; ++j) row[j] /= s[j];
  }
  const Matrix wq = naive_block_quant(ws, static_cast<int>(in), 8);
  double total = 0;
  for (const Matrix& x : batches) {
    const size_t stride = std::max<size_t>(1, x.size() / max_tokens);
    double sum = 0;
    size_t tokens = 0;
    for (size_t t = 0; t < x.size(); t += stride, ++tokens) {
      std::vector<double> xs(in);
      double token_amax = 0;
      for (size_t j = 0; j < in; ++j) {
        xs[j] = x[t][j] * s[j];
        token_amax = std::max(token_amax, std::fabs(xs[j]));
      }
      for (size_t j = 0; j < in; ++j) {
        xs[j] = naive_fake_quant_int(xs[j], dynamic ? token_amax : input_amax, 8);
      }
      for (size_t r = 0; r < w.size(); ++r) {
        double yq = 0, y = 0;
        for (size_t j = 0; j < in; ++j) {
          yq += xs[j] * wq[r][j];
          y += x[t][j] * w[r][j];
        }
        sum += (yq - y) * (yq - y);
      }
    }
    total += sum / static_cast<double>(tokens * w.size());
  }
  return total;
}

class SmoothQuantSearch : public ::testing::TestWithParam<bool> {};

TEST_P(SmoothQuantSearch, LossesAndChoiceMatchNaiveSearch) {
  const bool dynamic = GetParam();
  at::manual_seed(3);
  const at::Tensor w = at::randn({10, 24});
  const QuantizerAttributeConfig input_cfg =
      dynamic ? cfg_of(R"({"num_bits": 8, "type": "dynamic", "block_sizes": {"-1": null}})")
              : cfg_of(R"({"num_bits": 8})");
  SmoothQuantSearchOptions options;
  options.alpha_step = 0.25;
  options.max_tokens_per_batch = 7;
  SmoothQuantLayer layer(w, input_cfg, cfg_of(R"({"num_bits": 8, "axis": 0})"), options,
                         "blocks.1.attn.qkv");
  ASSERT_TRUE(layer.searches());
  EXPECT_EQ(layer.num_passes(), 2);
  std::vector<at::Tensor> batches;
  for (int i = 0; i < 3; ++i) batches.push_back(outlier_activations({2, 11, 24}, 20 + i));
  for (const auto& b : batches) layer.collect(0, b);
  layer.finish_pass(0);
  for (const auto& b : batches) layer.collect(1, b);
  layer.finish_pass(1);
  EXPECT_EQ(layer.num_batches(1), 3);
  EXPECT_EQ(layer.num_search_tokens(), 3 * 8);  // 22 tokens, every 22 / 7 = 3rd one

  std::vector<Matrix> xs;
  std::vector<double> act(24, 0.0);
  for (const auto& b : batches) {
    xs.push_back(to_matrix(b.reshape({-1, 24})));
    for (const auto& row : xs.back()) {
      for (size_t j = 0; j < 24; ++j) act[j] = std::max(act[j], std::fabs(row[j]));
    }
  }
  const std::vector<double> expected_alphas = {0.0, 0.25, 0.5, 0.75, 1.0};
  ASSERT_EQ(layer.alphas(), expected_alphas);
  const std::vector<double> losses = to_vector(layer.losses());
  size_t best = 0;
  std::vector<double> naive;
  for (size_t k = 0; k < expected_alphas.size(); ++k) {
    naive.push_back(naive_sq_search_loss(xs, to_matrix(w), act, expected_alphas[k], dynamic, 7));
    // fp32 rounding may flip a code where x * scale lands within float error of a half step
    EXPECT_NEAR(losses[k], naive[k], 2e-3 * naive[k]) << "alpha " << expected_alphas[k];
    if (naive[k] < naive[best]) best = k;
  }
  EXPECT_EQ(layer.alpha(), expected_alphas[best]);
  // the update smooths with the chosen alpha
  SmoothQuantLayer fixed(w, expected_alphas[best]);
  for (const auto& b : batches) fixed.collect(b);
  EXPECT_TRUE(at::allclose(layer.scale(), fixed.scale()));
}

INSTANTIATE_TEST_SUITE_P(StaticAndDynamicInputs, SmoothQuantSearch, ::testing::Bool());

TEST(SmoothQuantSearchErrors, BadOptionsAndMissingPassesNameTheLayer) {
  const at::Tensor w = at::randn({4, 8});
  const QuantizerAttributeConfig in8 = cfg_of(R"({"num_bits": 8})");
  const QuantizerAttributeConfig w8 = cfg_of(R"({"num_bits": 8, "axis": 0})");
  EXPECT_THROW(SmoothQuantLayer(w, in8, w8, SmoothQuantSearchOptions{0.0, 64}), c10::ValueError);
  EXPECT_THROW(SmoothQuantLayer(w, in8, w8, SmoothQuantSearchOptions{0.1, 0}), c10::ValueError);
  SmoothQuantLayer layer(w, in8, w8, SmoothQuantSearchOptions{}, "model.layers.0.mlp.up_proj");
  EXPECT_THROW(layer.search(at::randn({3, 8})), c10::Error);  // before any statistics
  layer.collect(at::randn({3, 8}));
  layer.finish_pass(0);
  try {
    layer.alpha();
    FAIL() << "expected an error for a search pass without data";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("up_proj"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("search"), std::string::npos);
  }
  SmoothQuantLayer plain(w, 0.5);
  EXPECT_FALSE(plain.searches());
  EXPECT_EQ(plain.num_passes(), 1);
  EXPECT_THROW(plain.search(at::randn({3, 8})), c10::Error);
}

// ---------------------------------------------------------------------------------------------
// AWQ helpers

TEST(Awq, GridsAndBlockSize) {
  const std::vector<double> alphas = awq_alpha_grid(0.1);
  ASSERT_EQ(alphas.size(), 11u);
  EXPECT_DOUBLE_EQ(alphas.front(), 0.0);
  EXPECT_NEAR(alphas[3], 0.3, 1e-12);
  EXPECT_DOUBLE_EQ(alphas.back(), 1.0);
  EXPECT_EQ(awq_alpha_grid(0.3).size(), 4u);  // 0, 0.3, 0.6, 0.9: never above 1
  EXPECT_THROW(awq_alpha_grid(0.0), c10::ValueError);
  const std::vector<double> ratios = awq_clip_ratios(0.5, 0.05);
  ASSERT_EQ(ratios.size(), 11u);
  EXPECT_DOUBLE_EQ(ratios[2], 0.6);
  EXPECT_DOUBLE_EQ(ratios.back(), 1.0);
  EXPECT_THROW(awq_clip_ratios(0.0, 0.05), c10::ValueError);
  EXPECT_THROW(awq_clip_ratios(0.5, 0.0), c10::ValueError);
  EXPECT_EQ(awq_block_size(cfg_of(kInt4Block8), 20), 8);
  EXPECT_EQ(awq_block_size(cfg_of(R"({"num_bits": 4, "block_sizes": {"-1": 128}})"), 64), 64);
  EXPECT_EQ(awq_block_size(cfg_of(R"({"num_bits": 8, "axis": 0})"), 20), 20);
  EXPECT_THROW(awq_block_size(cfg_of(R"({"num_bits": 4, "block_sizes": {"0": 8}})"), 20), c10::ValueError);
}

TEST(Awq, WeightScaleAndScaleMatchFormulas) {
  at::manual_seed(3);
  const at::Tensor w = at::randn({6, 20});  // 20 = two blocks of 8 and a padded block of 4
  const std::vector<double> got = to_vector(awq_weight_scale(w, 8));
  const std::vector<double> want = naive_weight_scale(to_matrix(w), 8);
  for (size_t j = 0; j < want.size(); ++j) EXPECT_NEAR(got[j], want[j], 1e-6) << j;

  const at::Tensor act = at::rand({20}) * 3 + 0.1;
  for (const double alpha : {0.0, 0.3, 1.0}) {
    const std::vector<double> s = to_vector(awq_scale(act, awq_weight_scale(w, 8), alpha));
    const std::vector<double> ref = naive_awq_scale(to_vector(act), want, alpha);
    for (size_t j = 0; j < ref.size(); ++j) EXPECT_NEAR(s[j], ref[j], 1e-5 * ref[j]) << j;
  }
}

// ---------------------------------------------------------------------------------------------
// AWQ lite

// Batches of 2 x `seq` tokens: few tokens take the direct output error, many take x^T x.
void check_awq_lite_against_naive(int64_t seq) {
  std::fesetround(FE_TONEAREST);
  at::manual_seed(4);
  const int64_t out = 10, in = 20;
  const at::Tensor w = at::randn({out, in});
  AwqLiteLayer layer(w, cfg_of(kInt4Block8), 0.25, "h.0.attn");
  std::vector<at::Tensor> batches;
  for (int i = 0; i < 3; ++i) batches.push_back(outlier_activations({2, seq, in}, 20 + i));
  for (const auto& b : batches) layer.collect(b);
  layer.finish_collect();
  for (const auto& b : batches) layer.search(b);
  EXPECT_EQ(layer.num_collect_steps(), 3);
  EXPECT_EQ(layer.num_search_steps(), 3);
  EXPECT_EQ(layer.num_tokens(), 3 * 2 * seq);

  // act_scale: mean over batches of the per-batch mean |x|.
  std::vector<double> act(in, 0.0);
  std::vector<Matrix> xs;
  for (const auto& b : batches) {
    xs.push_back(to_matrix(b.reshape({-1, in})));
    for (const auto& row : xs.back()) {
      for (int64_t j = 0; j < in; ++j) act[j] += std::fabs(row[j]) / xs.back().size() / 3;
    }
  }
  const std::vector<double> got_act = to_vector(layer.act_scale());
  for (int64_t j = 0; j < in; ++j) EXPECT_NEAR(got_act[j], act[j], 1e-5 * act[j]);

  const Matrix wm = to_matrix(w);
  const std::vector<double> wscale = naive_weight_scale(wm, 8);
  const std::vector<double> alphas{0.0, 0.25, 0.5, 0.75, 1.0};
  ASSERT_EQ(layer.alphas(), alphas);
  const std::vector<double> losses = to_vector(layer.losses());
  std::vector<double> ref(alphas.size(), 0.0);
  for (size_t k = 0; k < alphas.size(); ++k) {
    const std::vector<double> s = naive_awq_scale(act, wscale, alphas[k]);
    for (const auto& x : xs) ref[k] += naive_awq_loss(x, wm, s, 8, 4);
    EXPECT_NEAR(losses[k], ref[k], 2e-3 * ref[k]) << "alpha " << alphas[k];
  }
  const size_t best = std::min_element(ref.begin(), ref.end()) - ref.begin();
  const AwqLiteResult r = layer.compute();
  // The chosen alpha is the oracle's or one whose oracle loss is within the tolerance.
  const size_t chosen = std::find(alphas.begin(), alphas.end(), r.alpha) - alphas.begin();
  ASSERT_LT(chosen, alphas.size());
  EXPECT_LE(ref[chosen], ref[best] * (1 + 4e-3));
  // Folding: W * s, pre_quant_scale 1 / s, input amax max(act_amax / s).
  const std::vector<double> s = naive_awq_scale(act, wscale, r.alpha);
  const Matrix folded = to_matrix(r.folded.weight);
  const std::vector<double> pqs = to_vector(r.folded.pre_quant_scale);
  const std::vector<double> amax = to_vector(layer.act_amax());
  double input_amax = 0;
  for (int64_t j = 0; j < in; ++j) {
    EXPECT_NEAR(pqs[j], 1 / s[j], 1e-4 / s[j]);
    input_amax = std::max(input_amax, amax[j] / s[j]);
    for (int64_t i = 0; i < out; ++i) {
      EXPECT_NEAR(folded[i][j], wm[i][j] * s[j], 1e-4 * std::fabs(wm[i][j] * s[j]) + 1e-7);
    }
  }
  EXPECT_NEAR(r.folded.input_amax.item<double>(), input_amax, 1e-4 * input_amax);
}

TEST(AwqLite, LossesAndChoiceMatchNaiveSearchFewTokens) { check_awq_lite_against_naive(6); }

TEST(AwqLite, LossesAndChoiceMatchNaiveSearchManyTokens) { check_awq_lite_against_naive(100); }

TEST(AwqLite, ErrorsNameTheLayer) {
  const at::Tensor w = at::randn({4, 16});
  AwqLiteLayer layer(w, cfg_of(kInt4Block8), 0.1, "decoder.fc1");
  EXPECT_THROW(layer.search(at::randn({2, 16})), c10::Error);  // before finish_collect
  EXPECT_THROW(layer.finish_collect(), c10::Error);            // no batch
  EXPECT_THROW(layer.collect(at::randn({2, 15})), c10::ValueError);
  at::Tensor x = at::randn({2, 16});
  x.index_put_({0, 0}, std::numeric_limits<float>::infinity());
  layer.collect(x);
  try {
    layer.finish_collect();
    FAIL() << "expected an error for Inf activations";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("decoder.fc1"), std::string::npos);
  }
  AwqLiteLayer unsearched(w, cfg_of(kInt4Block8), 0.1, "decoder.fc2");
  unsearched.collect(at::randn({2, 16}));
  unsearched.finish_collect();
  EXPECT_THROW(unsearched.compute(), c10::Error);
  EXPECT_THROW(AwqLiteLayer(w, cfg_of(kInt4Block8), 1.5), c10::ValueError);
  EXPECT_THROW(AwqLiteLayer(w, cfg_of(R"({"num_bits": 4, "block_sizes": {"0": 4}})")), c10::ValueError);
}

// ---------------------------------------------------------------------------------------------
// AWQ clip

TEST(AwqClip, BlockwiseLossesMatchNaiveSearch) {
  std::fesetround(FE_TONEAREST);
  at::manual_seed(5);
  const int64_t out = 6, in = 20, block = 8, nb = 3;
  const at::Tensor w = at::randn({out, in});
  // The weight quantizer's max amax: [out, n_blocks, 1], as the quantizer calibrates it.
  const at::Tensor amax =
      at::constant_pad_nd(w.abs(), {0, 4}, 0).reshape({out, nb, block}).amax(-1, /*keepdim=*/true);
  AwqClipOptions options;
  options.max_tokens_per_batch = 5;
  options.max_co_batch_size = 4;  // two output-channel chunks
  AwqClipLayer layer(w, amax, cfg_of(kInt4Block8), options, "fc");
  std::vector<at::Tensor> batches{outlier_activations({23, in}, 30),
                                  outlier_activations({3, 4, in}, 31)};
  for (const auto& b : batches) layer.collect(b);
  EXPECT_FALSE(layer.per_tensor());
  // 23 tokens, stride 4 -> 6 sampled; 12 tokens, stride 2 -> 6 sampled
  EXPECT_EQ(layer.num_tokens(), 12);
  const AwqClipResult r = layer.compute();
  ASSERT_EQ(r.losses.sizes(), at::IntArrayRef({11, out, nb, 1}));

  const Matrix wm = to_matrix(w);
  const Matrix am = to_matrix(amax.reshape({out, nb}));
  const std::vector<double> ratios = layer.ratios();
  const Matrix got_ratio = to_matrix(r.ratio.reshape({out, nb}));
  const at::Tensor got_losses = r.losses.reshape({11, out, nb});
  for (size_t k = 0; k < ratios.size(); ++k) {
    Matrix clipped = am;
    for (auto& row : clipped) {
      for (double& v : row) v = static_cast<float>(v) * static_cast<float>(ratios[k]);
    }
    const Matrix q = naive_block_quant(wm, block, 4, &clipped);
    const Matrix lk = to_matrix(got_losses[k]);
    for (int64_t c = 0; c < out; ++c) {
      for (int64_t b = 0; b < nb; ++b) {
        double loss = 0;
        for (const auto& x : batches) {
          const Matrix xm = to_matrix(x.reshape({-1, in}));
          const size_t stride = std::max<size_t>(1, xm.size() / 5);
          double sum = 0;
          size_t n = 0;
          for (size_t t = 0; t < xm.size(); t += stride, ++n) {
            double d = 0;
            for (int64_t j = b * block; j < std::min(in, (b + 1) * block); ++j) {
              d += xm[t][j] * (q[c][j] - wm[c][j]);
            }
            sum += d * d;
          }
          loss += sum / n;
        }
        EXPECT_NEAR(lk[c][b], loss, 1e-3 * loss + 1e-6)
            << "ratio " << ratios[k] << " row " << c << " block " << b;
      }
    }
  }
  // The chosen ratio is the first minimum of the losses, and amax = max amax * ratio.
  for (int64_t c = 0; c < out; ++c) {
    for (int64_t b = 0; b < nb; ++b) {
      const std::vector<double> l = to_vector(got_losses.index({at::indexing::Slice(), c, b}));
      const size_t best = std::min_element(l.begin(), l.end()) - l.begin();
      EXPECT_DOUBLE_EQ(got_ratio[c][b], static_cast<float>(ratios[best]));
    }
  }
  EXPECT_TRUE(at::allclose(r.amax, amax * r.ratio));
}

class AwqClipPerTensor : public ::testing::TestWithParam<int64_t> {};

// Few tokens take the direct output error, many take x^T x.
TEST_P(AwqClipPerTensor, SearchesOneRatio) {
  at::manual_seed(6);
  at::Tensor w = at::randn({8, 16});
  w.index_put_({0, 0}, 9.0);  // an outlier weight makes clipping pay off
  const at::Tensor amax = w.abs().amax();
  const std::string cfg = R"({"num_bits": 4})";
  AwqClipLayer layer(w, amax, cfg_of(cfg), {}, "proj");
  const at::Tensor x = outlier_activations({GetParam(), 16}, 40);
  layer.collect(x);
  EXPECT_TRUE(layer.per_tensor());
  const AwqClipResult r = layer.compute();
  const Matrix xm = to_matrix(x), wm = to_matrix(w);
  std::vector<double> ref;
  for (const double ratio : layer.ratios()) {
    const double a = static_cast<float>(amax.item<double>()) * static_cast<float>(ratio);
    double sum = 0;
    for (const auto& xt : xm) {
      for (const auto& row : wm) {
        double d = 0;
        for (size_t j = 0; j < row.size(); ++j) {
          d += xt[j] * (naive_fake_quant_int(row[j], a, 4) - row[j]);
        }
        sum += d * d;
      }
    }
    ref.push_back(sum / (xm.size() * wm.size()));
  }
  const std::vector<double> got = to_vector(r.losses);
  for (size_t k = 0; k < ref.size(); ++k) EXPECT_NEAR(got[k], ref[k], 1e-3 * ref[k]);
  const size_t best = std::min_element(ref.begin(), ref.end()) - ref.begin();
  EXPECT_NEAR(r.ratio.item<double>(), layer.ratios()[best], 1e-6);
  EXPECT_LT(r.ratio.item<double>(), 1.0);
}

INSTANTIATE_TEST_SUITE_P(Tokens, AwqClipPerTensor, ::testing::Values(4, 40));

TEST(AwqClip, UnsupportedAmaxAndErrors) {
  const at::Tensor w = at::randn({8, 16});
  // one amax per row: neither per tensor nor per (row, block)
  EXPECT_THROW(AwqClipLayer(w, at::ones({8, 1}), cfg_of(kInt4Block8)), c10::NotImplementedError);
  const at::Tensor amax = at::ones({8, 2, 1});
  AwqClipLayer layer(w, amax, cfg_of(kInt4Block8), {}, "mlp.down");
  try {
    layer.compute();
    FAIL() << "expected an error for a layer without data";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("mlp.down"), std::string::npos);
  }
  at::Tensor x = at::randn({4, 16});
  x.index_put_({2, 3}, std::numeric_limits<float>::quiet_NaN());
  layer.collect(x);
  EXPECT_THROW(layer.compute(), c10::Error);
  AwqClipOptions bad;
  bad.max_tokens_per_batch = 0;
  EXPECT_THROW(AwqClipLayer(w, amax, cfg_of(kInt4Block8), bad), c10::ValueError);
  EXPECT_THROW(AwqClipLayer(w, at::full({8, 2, 1}, NAN), cfg_of(kInt4Block8)), c10::Error);
}

TEST(TiedWeights, EveryLayerOfATieGroupIsSkippedAndNamed) {
  const at::Tensor w = at::randn({4, 4});
  const at::Tensor other = at::randn({4, 4});
  // 'a' and 'c' share one tensor; 'd' is a view of it (same storage); 'b' stands alone
  const auto reasons = tied_weight_skip_reasons("smoothquant", {"a", "b", "c", "d"},
                                                {w, other, w, w.view({16})});
  ASSERT_EQ(reasons.size(), 4u);
  EXPECT_FALSE(reasons[1].has_value());
  for (const size_t i : {0u, 2u, 3u}) {
    ASSERT_TRUE(reasons[i].has_value()) << i;
    EXPECT_NE(reasons[i]->find("smoothquant"), std::string::npos);
    EXPECT_NE(reasons[i]->find("'a', 'c', 'd'"), std::string::npos) << *reasons[i];
  }
  EXPECT_THROW(tied_weight_skip_reasons("gptq", {"a"}, {}), c10::ValueError);
}

// SmoothQuant smooths in front of a static per-tensor or a dynamic (per-token) INT8 input
// quantizer; static per-channel inputs and other formats keep max calibration.
TEST(SmoothQuantSkip, StaticPerTensorOrDynamicInputs) {
  auto core = [](const char* json) {
    return QuantizerCore(QuantizerAttributeConfig::from_json(json));
  };
  const QuantizerCore weight = core(R"({"num_bits": 8, "axis": 0})");
  const QuantizerCore per_tensor = core(R"({"num_bits": 8})");
  const QuantizerCore per_token =
      core(R"({"num_bits": 8, "type": "dynamic", "block_sizes": {"-1": null}})");
  const QuantizerCore per_channel = core(R"({"num_bits": 8, "axis": -1})");
  const QuantizerCore fp8 = core(R"({"num_bits": [4, 3]})");
  EXPECT_FALSE(smoothquant_skip_reason("l", &per_tensor, &weight).has_value());
  EXPECT_FALSE(smoothquant_skip_reason("l", &per_token, &weight).has_value());
  const auto static_channel = smoothquant_skip_reason("l", &per_channel, &weight);
  ASSERT_TRUE(static_channel.has_value());
  EXPECT_NE(static_channel->find("static per-tensor or a dynamic"), std::string::npos);
  const auto other_format = smoothquant_skip_reason("l", &fp8, &weight);
  ASSERT_TRUE(other_format.has_value());
  EXPECT_NE(other_format->find("8-bit integer"), std::string::npos);
  const QuantizerCore asym = core(R"({"num_bits": 8, "asymmetric": true})");
  const auto static_asym = smoothquant_skip_reason("l", &asym, &weight);
  ASSERT_TRUE(static_asym.has_value());
  EXPECT_NE(static_asym->find("zero point"), std::string::npos);
}

}  // namespace
}  // namespace mopt::algorithms
