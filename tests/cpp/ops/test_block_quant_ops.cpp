// The block-format ops (NVFP4, MX, NF4) through the dispatcher from C++: against plain ATen
// formulations, inside the quantizer forward (quantize_tensor), autograd, Meta, argument errors.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "mopt/quant/block_quant.h"
#include "mopt/quant/quantize_tensor.h"

namespace mopt {
namespace {

// E2M1 rounding of a >= 0 with the SPEC thresholds, as a chain of ATen selects.
at::Tensor aten_e2m1(const at::Tensor& a) {
  at::Tensor q = at::zeros_like(a);
  q = at::where(a > 0.25, at::full_like(a, 0.5), q);
  q = at::where(a >= 0.75, at::full_like(a, 1.0), q);
  q = at::where(a > 1.25, at::full_like(a, 1.5), q);
  q = at::where(a >= 1.75, at::full_like(a, 2.0), q);
  q = at::where(a > 2.5, at::full_like(a, 3.0), q);
  q = at::where(a >= 3.5, at::full_like(a, 4.0), q);
  return at::where(a > 5.0, at::full_like(a, 6.0), q);
}

// NVFP4 the way a PyTorch library writes it (ModelOpt's formula): [rows, L], L % block == 0.
at::Tensor aten_nvfp4(const at::Tensor& x, double global_amax, int64_t block) {
  at::Tensor xb = x.to(at::kFloat).reshape({x.size(0), -1, block});
  at::Tensor s2 = at::full({}, static_cast<float>(global_amax)) / 2688.0f;
  at::Tensor bamax = xb.abs().amax({-1}, true);
  at::Tensor r = (bamax / (s2 * 6.0f)).clamp_max(448.0f);
  at::Tensor s1 = r.to(at::kFloat8_e4m3fn).to(at::kFloat) * s2;
  s1 = at::where(bamax == 0, at::ones_like(s1), s1);
  at::Tensor q = aten_e2m1(xb.abs() / s1) * s1;
  return (at::sign(xb) * q).reshape(x.sizes()).to(x.scalar_type());
}

// MXFP8 (E4M3 elements) the plain way: scale 2^ceil(log2(amax / 448)).
at::Tensor aten_mxfp8(const at::Tensor& x, int64_t block) {
  at::Tensor xb = x.to(at::kFloat).reshape({x.size(0), -1, block});
  at::Tensor bamax = xb.abs().amax({-1}, true);
  at::Tensor scale = at::exp2(at::ceil(at::log2(bamax / 448.0f)));
  at::Tensor q = (xb / scale).clamp(-448.0f, 448.0f).to(at::kFloat8_e4m3fn).to(at::kFloat);
  return (q * scale).reshape(x.sizes()).to(x.scalar_type());
}

TEST(BlockQuantOps, NVFP4MatchesAten) {
  at::manual_seed(0);
  at::Tensor x = at::randn({64, 128}) * 2;
  const double g = x.abs().max().item<double>();
  EXPECT_TRUE(at::equal(fake_quant_nvfp4(x), aten_nvfp4(x, g, 16)));
  EXPECT_TRUE(at::equal(fake_quant_nvfp4(x, at::full({}, 1.5)), aten_nvfp4(x, 1.5, 16)));
  EXPECT_TRUE(at::equal(fake_quant_nvfp4(x, c10::nullopt, 32), aten_nvfp4(x, g, 32)));
}

TEST(BlockQuantOps, MXFP8MatchesAten) {
  at::manual_seed(1);
  at::Tensor x = at::randn({32, 256}) * at::logspace(-3, 3, 256);
  EXPECT_TRUE(at::equal(fake_quant_mx(x, 4, 3), aten_mxfp8(x, 32)));
}

TEST(BlockQuantOps, QuantizerForwardUsesTheBlockFormats) {
  at::manual_seed(2);
  at::Tensor x = at::randn({24, 80});
  const std::string nvfp4 =
      R"({"num_bits": [2, 1], "block_sizes": {"-1": 16, "type": "dynamic", "scale_bits": [4, 3]}})";
  at::Tensor amax = at::full({}, 2.0);
  EXPECT_TRUE(
      at::equal(quantize_tensor(x, amax, c10::nullopt, nvfp4), fake_quant_nvfp4(x, amax, 16)));
  EXPECT_TRUE(
      at::equal(quantize_tensor(x, c10::nullopt, c10::nullopt, nvfp4), fake_quant_nvfp4(x)));
  // Blocks along axis 0: the axis is moved last for the kernel and back.
  const std::string mx0 =
      R"({"num_bits": 8, "block_sizes": {"0": 8, "type": "dynamic", "scale_bits": [8, 0]}})";
  EXPECT_TRUE(at::equal(quantize_tensor(x, c10::nullopt, c10::nullopt, mx0),
                        fake_quant_mx(x.t(), 0, 7, 8).t()));
  // NF4 in ModelOpt's convention: double quantization per 256 scales.
  const std::string nf4 =
      R"({"num_bits": 4, "block_sizes": {"-1": 64, "scale_bits": 8, "scale_block_sizes": {"-1": 256}}})";
  EXPECT_TRUE(
      at::equal(quantize_tensor(x, c10::nullopt, c10::nullopt, nf4), fake_quant_nf4(x, 64, 256)));
  // Static NF4: the calibration view holds one amax per block.
  const auto cfg = QuantizerAttributeConfig::from_json(nf4);
  EXPECT_EQ(quantizer_amax_axes(cfg, 2), (std::vector<int64_t>{0, 1}));
  at::Tensor view = quantizer_calib_view(x, c10::nullopt, nf4);
  EXPECT_EQ(view.sizes(), (std::vector<int64_t>{24, 2, 64}));
  at::Tensor block_amax = view.abs().amax({2}, true);
  EXPECT_TRUE(at::equal(quantize_tensor(x, block_amax, c10::nullopt, nf4),
                        fake_quant_nf4(x, 64, 256, block_amax.squeeze(2))));
  // Dynamic NVFP4 calibrates one per-tensor amax.
  EXPECT_TRUE(quantizer_amax_axes(QuantizerAttributeConfig::from_json(nvfp4), 2).empty());
}

TEST(BlockQuantOps, StraightThroughGradientFromCpp) {
  at::Tensor x = (at::randn({4, 32}) * 3).requires_grad_(true);
  fake_quant_nvfp4(x, at::full({}, 1.0)).sum().backward();
  EXPECT_TRUE(at::equal(x.grad(), (x.detach().abs() <= 1.0).to(at::kFloat)));
  at::Tensor x2 = x.detach().clone().requires_grad_(true);
  fake_quant_mx(x2, 2, 1).sum().backward();
  EXPECT_TRUE(at::equal(x2.grad(), at::ones_like(x2)));
}

TEST(BlockQuantOps, MetaShapes) {
  at::Tensor x = at::empty({3, 7, 50}, at::TensorOptions().device(at::kMeta));
  EXPECT_EQ(fake_quant_nvfp4(x).sizes(), x.sizes());
  EXPECT_EQ(fake_quant_mx(x, 2, 1).sizes(), x.sizes());
  EXPECT_EQ(fake_quant_nf4(x, 64, 256).sizes(), x.sizes());
}

TEST(BlockQuantOps, BadArgumentsRaiseValueOrTypeError) {
  at::Tensor x = at::randn({4, 32});
  EXPECT_THROW(fake_quant_nvfp4(x, c10::nullopt, 0), c10::ValueError);
  EXPECT_THROW(fake_quant_nvfp4(x, at::ones({2})), c10::ValueError);
  EXPECT_THROW(fake_quant_mx(x, 2, 1, 32, at::ones({4, 2})), c10::ValueError);
  EXPECT_THROW(fake_quant_mx(x, 7, 1), c10::ValueError);
  EXPECT_THROW(fake_quant_nf4(x, 64, -3), c10::ValueError);
  EXPECT_THROW(fake_quant_nf4(at::ones({4, 64}, at::kInt)), c10::TypeError);
  const std::string two_axes =
      R"({"num_bits": [2, 1], "block_sizes": {"-1": 16, "-2": 16, "scale_bits": [4, 3]}})";
  EXPECT_THROW(quantize_tensor(x, c10::nullopt, c10::nullopt, two_axes), c10::ValueError);
}

}  // namespace
}  // namespace mopt
