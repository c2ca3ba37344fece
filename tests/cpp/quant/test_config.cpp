// QuantizerAttributeConfig JSON: defaults, round trip, validation errors.
#include <gtest/gtest.h>

#include <c10/util/Exception.h>

#include "mopt/quant/config.h"

namespace mopt {
namespace {

TEST(QuantizerConfig, DefaultsMatchSchema) {
  const auto c = QuantizerAttributeConfig::from_json("{}");
  EXPECT_TRUE(c.enable);
  EXPECT_EQ(c.num_bits, NumBits::integer(8));
  EXPECT_FALSE(c.axis.has_value());
  EXPECT_FALSE(c.narrow_range);
  EXPECT_EQ(c.type, "static");
  EXPECT_EQ(c.calibrator, "max");
}

TEST(QuantizerConfig, RoundTripsThroughJson) {
  const auto c = QuantizerAttributeConfig::from_json(
      R"({"num_bits": [2, 1], "block_sizes": {"-1": 16, "type": "dynamic", "scale_bits": [4, 3]}})");
  EXPECT_TRUE(c.num_bits.is_float);
  ASSERT_TRUE(c.block_sizes.has_value());
  EXPECT_TRUE(c.block_sizes->dynamic());
  EXPECT_EQ(c.block_sizes->axes.size(), 1u);
  EXPECT_EQ(QuantizerAttributeConfig::from_json(c.to_json()), c);
  const auto d = c.updated(R"({"enable": false})");
  EXPECT_FALSE(d.enable);
  EXPECT_TRUE(d.num_bits.is_float);
}

TEST(QuantizerConfig, RejectsBadInput) {
  EXPECT_THROW(QuantizerAttributeConfig::from_json(R"({"nmu_bits": 8})"), c10::ValueError);
  EXPECT_THROW(QuantizerAttributeConfig::from_json(R"({"axis": 0, "block_sizes": {"-1": 128}})"),
               c10::ValueError);
  EXPECT_THROW(QuantizerAttributeConfig::from_json(R"({"num_bits": [7, 7]})"), c10::ValueError);
  EXPECT_THROW(QuantizerAttributeConfig::from_json(R"({"num_bits": 1})"), c10::ValueError);
  EXPECT_THROW(QuantizerAttributeConfig::from_json(R"({"type": "sometimes"})"), c10::ValueError);
  EXPECT_THROW(QuantizerAttributeConfig::from_json(R"({"block_sizes": {"-1": 0}})"),
               c10::ValueError);
  EXPECT_THROW(QuantizerAttributeConfig::from_json(R"({"learn_amax": true})"), c10::ValueError);
  EXPECT_THROW(QuantizerAttributeConfig::from_json("{not json"), c10::ValueError);
  EXPECT_THROW(QuantizerAttributeConfig::from_json(R"({"bias": {"-1": 1}})"),
               c10::NotImplementedError);
}

TEST(QuantizerConfig, FullRangeIsSignedIntegerOnly) {
  const auto c = QuantizerAttributeConfig::from_json(R"({"num_bits": 4, "full_range": true})");
  EXPECT_TRUE(c.full_range);
  EXPECT_EQ(QuantizerAttributeConfig::from_json(c.to_json()), c);
  EXPECT_FALSE(QuantizerAttributeConfig::from_json("{}").full_range);
  for (const char* bad : {R"({"num_bits": 4, "full_range": true, "narrow_range": true})",
                          R"({"num_bits": 4, "full_range": true, "unsigned": true})",
                          R"({"num_bits": [4, 3], "full_range": true})",
                          R"({"full_range": "yes"})"}) {
    EXPECT_THROW(QuantizerAttributeConfig::from_json(bad), c10::ValueError) << bad;
  }
}

TEST(QuantizerConfig, AsymmetricIsSignedIntegerWithMaxCalibration) {
  const auto c = QuantizerAttributeConfig::from_json(R"({"num_bits": 4, "asymmetric": true})");
  EXPECT_TRUE(c.asymmetric);
  EXPECT_TRUE(c.uses_full_range());  // all 2^b codes
  EXPECT_FALSE(c.full_range);
  EXPECT_EQ(QuantizerAttributeConfig::from_json(c.to_json()), c);
  EXPECT_FALSE(QuantizerAttributeConfig::from_json("{}").asymmetric);
  for (const char* bad : {R"({"num_bits": 4, "asymmetric": true, "narrow_range": true})",
                          R"({"num_bits": 4, "asymmetric": true, "unsigned": true})",
                          R"({"num_bits": [4, 3], "asymmetric": true})",
                          R"({"asymmetric": 1})"}) {
    EXPECT_THROW(QuantizerAttributeConfig::from_json(bad), c10::ValueError) << bad;
  }
  EXPECT_THROW(QuantizerAttributeConfig::from_json(
                   R"({"num_bits": 8, "asymmetric": true, "calibrator": "histogram"})"),
               c10::NotImplementedError);
}

}  // namespace
}  // namespace mopt
