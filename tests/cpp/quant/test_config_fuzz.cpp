// Bounded, seeded fuzz of the config parsers (QuantizerAttributeConfig, QuantizeConfig, the
// calibration algorithm): random JSON documents, mutations of valid configs and of their text.
// Each input must parse to a config that round-trips, or raise ValueError / TypeError /
// NotImplementedError (c10); any other exception, a crash or a sanitizer report is a failure.
// `make test-sanitize` runs it under ASan + UBSan. A few thousand cases per parser, well under a
// second each outside the sanitizers.
#include <gtest/gtest.h>

#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "mopt/algorithms/calibration.h"
#include "mopt/quant/config.h"
#include "mopt/quant/formats.h"
#include "mopt/quant/quantize_tensor.h"
#include "mopt/torch/configs.h"

namespace mopt {
namespace {

using json = nlohmann::ordered_json;

constexpr uint64_t kSeed = 20240909;
constexpr int kCases = 3000;

// Valid configs the mutations start from.
const std::vector<std::string>& attribute_seeds() {
  static const std::vector<std::string> seeds = {
      R"({})",
      R"({"num_bits": 8, "axis": 0})",
      R"({"num_bits": 8, "axis": null, "enable": false})",
      R"({"num_bits": [4, 3], "axis": null})",
      R"({"num_bits": 4, "block_sizes": {"-1": 128, "type": "static"}, "enable": true})",
      R"({"num_bits": [2, 1], "block_sizes": {"-1": 16, "type": "dynamic", "scale_bits": [4, 3]},
          "axis": null, "enable": true})",
      R"({"num_bits": [2, 1], "block_sizes": {"-1": 32, "type": "dynamic", "scale_bits": [8, 0]}})",
      R"({"num_bits": 4,
          "block_sizes": {"-1": 64, "scale_bits": 8, "scale_block_sizes": {"-1": 256}}})",
      R"({"num_bits": [4, 3], "type": "dynamic", "block_sizes": {"-1": null}})",
      R"({"num_bits": [4, 3], "block_sizes": {"-1": 128, "-2": 128}})",
      R"({"num_bits": 8, "axis": [0, 1], "unsigned": true, "narrow_range": true,
          "calibrator": "histogram", "pass_through_bwd": true,
          "trt_high_precision_dtype": "Half"})",
  };
  return seeds;
}

const std::vector<std::string>& algorithm_seeds() {
  static const std::vector<std::string> seeds = {
      R"("max")",
      R"(null)",
      R"({"method": "smoothquant", "alpha": 0.5})",
      R"({"method": "smoothquant", "alpha": "auto", "alpha_step": 0.25})",
      R"({"method": "awq_lite", "alpha_step": 0.1})",
      R"({"method": "awq_clip", "max_co_batch_size": 1024, "max_tokens_per_batch": 64,
          "min_clip_ratio": 0.5, "shrink_step": 0.05})",
      R"({"method": "awq_full", "alpha_step": 0.25, "debug": false})",
      R"({"method": "gptq", "block_size": 128, "percdamp": 0.01, "act_order": false})",
      R"({"method": "mse", "num_steps": 10, "start_multiplier": 0.25, "stop_multiplier": 4.0})",
      R"({"method": "mse", "step_size": 0.5})",
      R"({"method": "entropy", "num_bins": 2048, "stride": 1, "start_bin": 128})",
      R"({"method": "percentile", "percentile": 99.9, "skip_zeros": true})",
      R"(["max", {"method": "histogram_mse", "num_bins": 256}])",
      R"({"method": "lsq", "scale_algorithm": {"method": "max"}, "learnable_amax": ["pre", "post"],
          "tied_amax": true, "quantize_pre_scale": false})",
      R"({"method": "lsq", "learnable_amax": "pre"})",
  };
  return seeds;
}

// The values a hostile or careless user writes where a small int, a bool or a name goes.
json interesting_scalar(std::mt19937_64& rng) {
  static const std::vector<json> values = {
      json(0),
      json(-1),
      json(1),
      json(2),
      json(4),
      json(8),
      json(16),
      json(17),
      json(128),
      json(int64_t{2147483647}),
      json(int64_t{2147483648}),
      json(int64_t{4294967300}),  // 2**32 + 4: an int cast to 32 bits reads 4
      json(int64_t{4294967296}),
      json(std::numeric_limits<int64_t>::max()),
      json(std::numeric_limits<int64_t>::min()),
      json(uint64_t{9223372036854775808ull}),        // 2**63: wraps to INT64_MIN as int64
      json(std::numeric_limits<uint64_t>::max()),    // wraps to -1 as int64
      json(uint64_t{18446744073709551615ull - 126}),  // wraps to -127
      json(0.5),
      json(4.0),
      json(-0.0),
      json(1e300),
      json(-1e300),
      json(1e-300),
      json(5e-324),
      json(std::numeric_limits<double>::max()),
      json(true),
      json(false),
      json(nullptr),
      json(""),
      json("max"),
      json("dynamic"),
      json("static"),
      json("-1"),
      json("\xc3\xbc\xe4\xb8\xad\xf0\x9f\x98\x80"),  // u-umlaut, a CJK character, an emoji
      json(std::string(1, '\0')),
      json(std::string(3000, 'x')),
  };
  return values[rng() % values.size()];
}

std::string random_key(std::mt19937_64& rng) {
  static const std::vector<std::string> keys = {
      "enable", "num_bits", "axis", "fake_quant", "unsigned", "narrow_range", "type",
      "block_sizes", "bias", "calibrator", "pass_through_bwd", "trt_high_precision_dtype",
      "rotate", "learn_amax", "scale_bits", "scale_block_sizes", "-1", "-2", "0", "1",
      "99999999999999999999", "-9223372036854775808", "1e3", " 1", "method", "alpha",
      "alpha_step", "num_steps", "step_size", "block_size", "num_bins", "start_bin", "stride",
      "percentile", "quant_cfg", "algorithm", "*weight_quantizer", "default", "nn.Linear",
      "\xc3\xbc", ""};
  return keys[rng() % keys.size()];
}

json random_value(std::mt19937_64& rng, int depth) {
  const unsigned pick = rng() % 10;
  if (depth <= 0 || pick < 6) return interesting_scalar(rng);
  if (pick < 8) {
    json a = json::array();
    const size_t n = rng() % 20 == 0 ? 5000 : rng() % 4;  // now and then a huge list
    for (size_t i = 0; i < n; ++i) {
      a.push_back(n > 100 ? json(static_cast<int64_t>(i)) : random_value(rng, depth - 1));
    }
    return a;
  }
  json o = json::object();
  const size_t n = rng() % 4;
  for (size_t i = 0; i < n; ++i) o[random_key(rng)] = random_value(rng, depth - 1);
  return o;
}

json nested(int depth) {
  json v = json(8);
  for (int i = 0; i < depth; ++i) v = json::array({v});
  return v;
}

// Replaces, deletes or adds one value somewhere in `doc`.
void mutate(json& doc, std::mt19937_64& rng) {
  json* node = &doc;
  while ((node->is_object() || node->is_array()) && !node->empty() && rng() % 3 != 0) {
    const size_t i = rng() % node->size();
    auto it = node->begin();
    std::advance(it, static_cast<std::ptrdiff_t>(i));
    node = &*it;
  }
  const unsigned op = rng() % 6;
  if (node->is_object() && op == 0) {
    (*node)[random_key(rng)] = random_value(rng, 3);
  } else if (node->is_object() && op == 1 && !node->empty()) {
    node->erase(node->begin().key());
  } else if (op == 2) {
    *node = json::array({*node, *node});
  } else if (op == 3) {
    *node = nested(static_cast<int>(rng() % 64));
  } else {
    *node = random_value(rng, 3);
  }
}

// Text-level damage: truncation, a stray byte, a number that JSON cannot hold as an integer.
std::string mutate_text(std::string text, std::mt19937_64& rng) {
  switch (rng() % 5) {
    case 0:
      return text.substr(0, rng() % (text.size() + 1));
    case 1: {
      static const char bytes[] = {'{', '}', '[', ']', ',', ':', '"', '\\', '\xff', '\x00', '9',
                                   '-', 'e', 'N'};
      text.insert(text.begin() + static_cast<std::ptrdiff_t>(rng() % (text.size() + 1)),
                  bytes[rng() % sizeof(bytes)]);
      return text;
    }
    case 2: {
      const auto pos = text.find_first_of("0123456789");
      if (pos != std::string::npos) text.insert(pos, "99999999999999999999999");
      return text;
    }
    case 3: {
      const auto pos = text.find(':');
      if (pos != std::string::npos) text.insert(pos + 1, " NaN, \"x\":");
      return text;
    }
    default:
      return text + text;
  }
}

bool is_clear_error(const std::exception& e) {
  return dynamic_cast<const c10::ValueError*>(&e) || dynamic_cast<const c10::TypeError*>(&e) ||
         dynamic_cast<const c10::NotImplementedError*>(&e);
}

// Runs `parse` on `input`; any exception other than a clear error fails the test.
void expect_clean(const std::string& what, const std::string& input,
                  const std::function<void(const std::string&)>& parse) {
  try {
    parse(input);
  } catch (const std::exception& e) {
    if (!is_clear_error(e)) {
      ADD_FAILURE() << what << ": unexpected exception " << typeid(e).name() << ": " << e.what()
                    << "\ninput: " << input.substr(0, 400);
    } else {
      // a clear error names what is wrong: never an empty message
      EXPECT_GT(std::string(e.what()).size(), 10u) << input.substr(0, 400);
    }
  }
}

void check_attributes(const std::string& text) {
  const auto c = QuantizerAttributeConfig::from_json(text);
  // What the parser accepts is in range and reads back the same.
  if (c.num_bits.is_float) {
    EXPECT_TRUE(c.num_bits.exponent >= 1 && c.num_bits.exponent <= 8) << text;
    EXPECT_TRUE(c.num_bits.mantissa >= 0 && c.num_bits.mantissa <= 3) << text;
  } else {
    EXPECT_TRUE(c.num_bits.bits >= 2 && c.num_bits.bits <= 16) << text;
  }
  if (c.block_sizes) {
    for (const auto& [axis, size] : c.block_sizes->axes) {
      if (size) EXPECT_GT(*size, 0) << text;
    }
  }
  EXPECT_EQ(QuantizerAttributeConfig::from_json(c.to_json()), c) << text;
  // The format table and the amax axes either accept the config or raise a clear error.
  try {
    resolve_format(c);
  } catch (const std::exception& e) {
    EXPECT_TRUE(is_clear_error(e)) << text << ": " << e.what();
  }
  try {
    quantizer_amax_axes(c, 3);
  } catch (const c10::IndexError&) {
    // an axis beyond the tensor: IndexError, as torch gives
  } catch (const std::exception& e) {
    EXPECT_TRUE(is_clear_error(e)) << text << ": " << e.what();
  }
}

void check_quantize_config(const std::string& text) {
  const auto c = QuantizeConfig::from_json(text);
  EXPECT_EQ(QuantizeConfig::from_json(c.to_json()).to_json(), c.to_json()) << text;
}

void check_algorithm(const std::string& text) {
  for (const auto& step : algorithms::parse_calibration_steps(text)) {
    (void)json::parse(step.options_json());
    if (const auto* m = std::get_if<algorithms::MseCalibration>(&step.options)) {
      EXPECT_GE(m->num_steps, 1) << text;
    }
    if (const auto* h = std::get_if<algorithms::HistogramCalibration>(&step.options)) {
      EXPECT_GE(h->num_bins, 1) << text;
    }
    if (const auto* g = std::get_if<algorithms::GptqCalibration>(&step.options)) {
      EXPECT_GT(g->solver.block_size, 0) << text;
    }
  }
}

std::string pick(const std::vector<std::string>& v, std::mt19937_64& rng) {
  return v[rng() % v.size()];
}

TEST(ConfigFuzz, QuantizerAttributeConfig) {
  std::mt19937_64 rng(kSeed);
  for (int i = 0; i < kCases; ++i) {
    std::string input;
    switch (i % 4) {
      case 0:
        input = random_value(rng, 4).dump();
        break;
      case 3:
        input = mutate_text(pick(attribute_seeds(), rng), rng);
        break;
      default: {
        json doc = json::parse(pick(attribute_seeds(), rng));
        for (unsigned m = 0, n = 1 + rng() % 3; m < n; ++m) mutate(doc, rng);
        input = doc.dump();
      }
    }
    expect_clean("QuantizerAttributeConfig", input, check_attributes);
    if (HasFailure()) return;  // one reproducer is enough
  }
}

TEST(ConfigFuzz, QuantizeConfig) {
  std::mt19937_64 rng(kSeed + 1);
  for (int i = 0; i < kCases; ++i) {
    json doc = json::object();
    json& q = doc["quant_cfg"];
    q = json::object();
    for (unsigned k = 0, n = 1 + rng() % 3; k < n; ++k) {
      static const char* patterns[] = {"*weight_quantizer", "*input_quantizer", "default",
                                       "nn.Linear", "nn.Conv2d", "*lm_head*"};
      const std::string pattern = patterns[rng() % 6];
      json attrs = json::parse(pick(attribute_seeds(), rng));
      q[pattern] = pattern.rfind("nn.", 0) == 0 ? json{{"*input_quantizer", attrs}} : attrs;
    }
    doc["algorithm"] = json::parse(pick(algorithm_seeds(), rng));
    for (unsigned m = 0, n = rng() % 4; m < n; ++m) mutate(doc, rng);
    std::string input = doc.dump();
    if (i % 5 == 4) input = mutate_text(input, rng);
    expect_clean("QuantizeConfig", input, check_quantize_config);
    if (HasFailure()) return;
  }
}

TEST(ConfigFuzz, CalibrationAlgorithm) {
  std::mt19937_64 rng(kSeed + 2);
  for (int i = 0; i < kCases; ++i) {
    std::string input;
    if (i % 4 == 0) {
      input = random_value(rng, 3).dump();
    } else {
      json doc = json::parse(pick(algorithm_seeds(), rng));
      if (doc.is_object() && rng() % 2 == 0) {
        // an option set to a hostile value: the common case of a bad recipe
        auto it = doc.begin();
        std::advance(it, static_cast<std::ptrdiff_t>(rng() % doc.size()));
        if (it.key() != "method") it.value() = interesting_scalar(rng);
      } else {
        mutate(doc, rng);
      }
      input = doc.dump();
      if (i % 7 == 6) input = mutate_text(input, rng);
    }
    expect_clean("parse_calibration_steps", input, check_algorithm);
    if (HasFailure()) return;
  }
}

// Nesting far deeper than any config: a clear ValueError, not a stack overflow in the parser,
// in the error message (which prints the value) or in the destructor.
TEST(ConfigFuzz, DeepNesting) {
  for (const int depth : {1000, 100000}) {
    const std::string arrays = std::string(depth, '[') + "8" + std::string(depth, ']');
    const std::string objects = [&] {
      std::string s;
      for (int i = 0; i < depth; ++i) s += R"({"a":)";
      return s + "8" + std::string(depth, '}');
    }();
    for (const auto& value : {arrays, objects}) {
      expect_clean("QuantizerAttributeConfig", R"({"num_bits": )" + value + "}", check_attributes);
      expect_clean("QuantizerAttributeConfig", R"({"axis": )" + value + "}", check_attributes);
      expect_clean("QuantizerAttributeConfig", value, check_attributes);
      expect_clean("QuantizeConfig", R"({"quant_cfg": {"*": )" + value + "}}",
                   check_quantize_config);
      expect_clean("QuantizeConfig", R"({"algorithm": )" + value + "}", check_quantize_config);
      expect_clean("parse_calibration_steps", value, check_algorithm);
    }
  }
}

// A number beyond double's range is invalid JSON to nlohmann (out_of_range, not parse_error).
TEST(ConfigFuzz, NumbersBeyondDoubleAreValueErrors) {
  EXPECT_THROW(QuantizerAttributeConfig::from_json(R"({"num_bits": 1e400})"), c10::ValueError);
  EXPECT_THROW(
      QuantizeConfig::from_json(R"({"algorithm": {"method": "mse", "step_size": -1e999}})"),
      c10::ValueError);
  EXPECT_THROW(algorithms::parse_calibration_steps(R"({"method": "smoothquant", "alpha": 1e400})"),
               c10::ValueError);
}

// Integers beyond 32 (or 64) bits must not wrap into a valid value.
TEST(ConfigFuzz, HugeIntegersAreRejected) {
  for (const char* text : {
           R"({"num_bits": 4294967300})",          // 2**32 + 4 -> 4 through int
           R"({"num_bits": 4294967304})",          // 2**32 + 8
           R"({"num_bits": -4294967288})",         // -(2**32) + 8
           R"({"num_bits": [4294967300, 3]})",     // E = 2**32 + 4
           R"({"num_bits": [4, 4294967299]})",     // M = 2**32 + 3
           R"({"num_bits": 18446744073709551615})",
           R"({"axis": 18446744073709551615})",    // 2**64 - 1 -> axis -1 through int64
           R"({"axis": [0, 9223372036854775808]})",
           R"({"block_sizes": {"-1": 18446744073709551615}})",
           R"({"block_sizes": {"-1": 16, "type": "dynamic", "scale_bits": [4294967300, 3]}})",
       }) {
    EXPECT_THROW(QuantizerAttributeConfig::from_json(text), c10::ValueError) << text;
  }
  for (const char* text : {
           R"({"method": "gptq", "block_size": 18446744073709551615})",
           R"({"method": "entropy", "num_bins": 18446744073709551615})",
           R"({"method": "entropy", "start_bin": 9223372036854775808})",
           R"({"method": "mse", "num_steps": 18446744073709551615})",
           R"({"method": "awq_clip", "max_co_batch_size": 18446744073709551615})",
       }) {
    EXPECT_THROW(algorithms::parse_calibration_steps(text), c10::ValueError) << text;
  }
}

// Steps so small that the grid has more points than an int64 holds (UB in the cast) or than any
// search could run.
TEST(ConfigFuzz, TinyStepsAreRejected) {
  for (const char* text : {
           R"({"method": "mse", "step_size": 1e-300})",
           R"({"method": "mse", "step_size": 5e-324})",
           R"({"method": "mse", "start_multiplier": 0, "stop_multiplier": 1e300, "step_size": 1})",
       }) {
    EXPECT_THROW(algorithms::parse_calibration_steps(text), c10::ValueError) << text;
  }
}

}  // namespace
}  // namespace mopt
