// The fake-quant ops through the dispatcher: argument checks, layouts, autograd, and the
// quantizer forward (blocks, padding, dynamic amax) against plain ATen formulations.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/variable.h>

#include "mopt/calib/max_calibrator.h"
#include "mopt/quant/fake_quant.h"
#include "mopt/quant/quantize_tensor.h"

namespace mopt {
namespace {

// Plain ATen per-channel integer fake quant (the formulation a Python library writes).
at::Tensor aten_fake_quant_int(const at::Tensor& x, const at::Tensor& amax, int bits) {
  const double maxbound = (1 << (bits - 1)) - 1;
  at::Tensor scale = maxbound / amax.to(at::kFloat);
  return (at::round(x.to(at::kFloat) * scale).clamp(-maxbound - 1, maxbound) / scale)
      .to(x.scalar_type());
}

TEST(FakeQuantOps, PerChannelMatchesAten) {
  at::manual_seed(0);
  at::Tensor x = at::randn({16, 33});
  at::Tensor amax = x.abs().amax({1}, true);
  EXPECT_TRUE(at::equal(fake_quant_int(x, amax, 8), aten_fake_quant_int(x, amax, 8)));
  at::Tensor amax_last = x.abs().amax({0}, true);
  EXPECT_TRUE(at::equal(fake_quant_int(x, amax_last, 4), aten_fake_quant_int(x, amax_last, 4)));
}

TEST(FakeQuantOps, NonContiguousInput) {
  at::manual_seed(1);
  at::Tensor x = at::randn({32, 24}).t();
  at::Tensor amax = at::full({}, 2.0);
  EXPECT_TRUE(at::equal(fake_quant_int(x, amax, 8), aten_fake_quant_int(x.contiguous(), amax, 8)));
}

TEST(FakeQuantOps, AmaxMatchesAten) {
  at::manual_seed(2);
  at::Tensor x = at::randn({7, 9, 11});
  EXPECT_TRUE(at::equal(compute_amax(x, {1}), x.abs().amax({0, 2}, true)));
  EXPECT_TRUE(at::equal(compute_amax(x, {}), x.abs().amax({0, 1, 2}, true)));
  EXPECT_TRUE(at::equal(compute_amax(x, {-1, 0}), x.abs().amax({1}, true)));
}

TEST(FakeQuantOps, BadArgumentsRaiseValueOrTypeError) {
  at::Tensor x = at::randn({4, 5});
  EXPECT_THROW(fake_quant_int(x, at::ones({3, 1}), 8), c10::ValueError);
  EXPECT_THROW(fake_quant_int(x, at::ones({}), 17), c10::ValueError);
  EXPECT_THROW(fake_quant_int(at::ones({4}, at::kInt), at::ones({}), 8), c10::TypeError);
  EXPECT_THROW(fake_quant_int(x, at::ones({}), 8, /*is_unsigned=*/true), c10::ValueError);
  EXPECT_THROW(compute_amax(x, {2}), c10::ValueError);
}

TEST(FakeQuantOps, ClippedStraightThroughGradient) {
  at::Tensor x = at::tensor({-3.0f, -0.5f, 0.25f, 1.0f, 2.5f}).requires_grad_(true);
  at::Tensor y = fake_quant_int(x, at::full({}, 1.0f), 8);
  y.sum().backward();
  EXPECT_TRUE(at::equal(x.grad(), at::tensor({0.0f, 1.0f, 1.0f, 1.0f, 0.0f})));
  at::Tensor x2 = x.detach().clone().requires_grad_(true);
  fake_quant_int(x2, at::full({}, 1.0f), 8, false, false, /*pass_through_bwd=*/true).sum().backward();
  EXPECT_TRUE(at::equal(x2.grad(), at::ones({5})));
}

TEST(QuantizeTensor, StaticBlocksWithPaddingEqualManualBlocks) {
  at::manual_seed(3);
  at::Tensor x = at::randn({6, 20});
  const std::string cfg = R"({"num_bits": 4, "block_sizes": {"-1": 8}})";
  // Manual: pad to 24, blocks of 8, per-block amax, int4, crop.
  at::Tensor padded = at::constant_pad_nd(x, {0, 4}).reshape({6, 3, 8});
  at::Tensor expect = aten_fake_quant_int(padded, padded.abs().amax({2}, true), 4)
                          .reshape({6, 24}).narrow(1, 0, 20);
  EXPECT_TRUE(at::equal(quantize_tensor(x, c10::nullopt, c10::nullopt, cfg), expect));
  // The calibration view and its kept axes describe the same blocks.
  at::Tensor view = quantizer_calib_view(x, c10::nullopt, cfg);
  EXPECT_EQ(view.sizes(), at::IntArrayRef({6, 3, 8}));
  const auto axes = quantizer_amax_axes(QuantizerAttributeConfig::from_json(cfg), 2);
  EXPECT_EQ(axes, (std::vector<int64_t>{0, 1}));
}

TEST(QuantizeTensor, PreQuantScaleAndStaticAmax) {
  at::manual_seed(4);
  at::Tensor x = at::randn({5, 8});
  at::Tensor pqs = at::rand({8}) + 0.5;
  at::Tensor amax = at::full({5, 1}, 1.5f);
  const std::string cfg = R"({"num_bits": 8, "axis": 0})";
  EXPECT_TRUE(at::equal(quantize_tensor(x, amax, pqs, cfg), aten_fake_quant_int(x * pqs, amax, 8)));
}

TEST(QuantizeTensor, DynamicPerTokenFp8) {
  at::manual_seed(5);
  at::Tensor x = at::randn({2, 3, 16});
  const std::string cfg =
      R"({"num_bits": [4, 3], "block_sizes": {"-1": null, "type": "dynamic"}})";
  at::Tensor y = quantize_tensor(x, c10::nullopt, c10::nullopt, cfg);
  EXPECT_TRUE(at::equal(y, fake_quant_fp(x, x.abs().amax({2}, true), 4, 3)));
}

TEST(MaxCalibratorTest, RunningMaxAndShapeChange) {
  MaxCalibrator calib(8, std::vector<int64_t>{0});
  at::Tensor a = at::randn({4, 10}), b = at::randn({4, 10}) * 3;
  calib.collect(a);
  calib.collect(b);
  EXPECT_TRUE(at::equal(*calib.compute_amax(), at::maximum(a.abs(), b.abs()).amax({1}, true)));
  EXPECT_THROW(calib.collect(at::randn({5, 10})), c10::Error);
  calib.reset();
  EXPECT_FALSE(calib.compute_amax().has_value());
}

}  // namespace
}  // namespace mopt
