// The mode registry and its chaining rules, the state document, the quantize mode's per-quantizer
// properties (mopt's and nvidia-modelopt's layouts) and the checks a restore runs first.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "mopt/opt/state.h"

namespace mopt::opt {
namespace {

using json = nlohmann::ordered_json;

// The message of the exception `fn` throws as E (fails when it throws nothing or another type).
template <typename E, typename Fn>
std::string error_of(Fn fn) {
  try {
    fn();
  } catch (const E& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an exception";
  return "";
}

TEST(OptModes, RegistryKnowsEveryKind) {
  EXPECT_EQ(mode_info("quantize").kind, ModeKind::kQuantize);
  EXPECT_EQ(mode_info("awq_lite_calibrate").kind, ModeKind::kCalibrate);
  EXPECT_EQ(mode_info("sparsegpt").kind, ModeKind::kSparsity);
  const std::string msg = error_of<c10::ValueError>([] { mode_info("autonas"); });
  EXPECT_NE(msg.find("unknown mode 'autonas'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("quantize"), std::string::npos) << msg;
  EXPECT_THROW(register_mode({"quantize", ModeKind::kQuantize, ""}), c10::ValueError);
}

TEST(OptModes, ChainingRules) {
  EXPECT_NO_THROW(check_next_mode({}, "quantize"));
  EXPECT_NO_THROW(check_next_mode({"sparse_magnitude"}, "quantize"));
  EXPECT_NO_THROW(check_next_mode({"quantize"}, "quantize"));
  EXPECT_NO_THROW(check_next_mode({"quantize"}, "max_calibrate"));
  std::string msg = error_of<c10::ValueError>([] { check_next_mode({"quantize"}, "sparsegpt"); });
  EXPECT_NE(msg.find("sparsify first, then quantize"), std::string::npos) << msg;
  msg = error_of<c10::ValueError>([] { check_next_mode({"sparsegpt"}, "wanda"); });
  EXPECT_NE(msg.find("already sparsified with 'sparsegpt'"), std::string::npos) << msg;
  msg = error_of<c10::ValueError>([] { check_next_mode({}, "gptq_calibrate"); });
  EXPECT_NE(msg.find("needs 'quantize'"), std::string::npos) << msg;
}

TEST(OptState, DocumentRoundTrip) {
  ModeState state;
  state.version = kMoptVersion;
  state.modes.push_back({"sparse_magnitude", R"({"pattern":"2:4 sparsity"})", "{}"});
  state.modes.push_back({"quantize", R"({"algorithm":"max"})", R"({"quantizer_state":{}})"});
  const ModeState back = state_from_json(state_to_json(state), "test");
  ASSERT_EQ(back.modes.size(), 2u);
  EXPECT_EQ(back.modes[1].mode, "quantize");
  EXPECT_EQ(json::parse(back.modes[1].config_json)["algorithm"], "max");
  EXPECT_EQ(back.format_version, kStateFormatVersion);
  EXPECT_EQ(back.version, kMoptVersion);
}

TEST(OptState, RefusesBadDocuments) {
  auto doc = [](const std::string& body) {
    return R"({"format":"mopt.state","format_version":1,"modelopt_version":"0.1.0",)" + body +
           "}";
  };
  std::string msg = error_of<c10::ValueError>([] {
    state_from_json(R"({"format":"mopt.state","format_version":99,"modelopt_version":"9",)"
                    R"("modelopt_state_dict":[]})", "f.safetensors");
  });
  EXPECT_NE(msg.find("f.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("newer mopt"), std::string::npos) << msg;
  msg = error_of<c10::ValueError>([&] {
    state_from_json(doc(R"("modelopt_state_dict":[["fastnas",{"config":{},"metadata":{}}]])"),
                    "f");
  });
  EXPECT_NE(msg.find("unknown mode 'fastnas'"), std::string::npos) << msg;
  msg = error_of<c10::ValueError>([&] {
    state_from_json(doc(R"("modelopt_state_dict":[["quantize",{"config":{},"metadata":{}}],)"
                        R"(["sparsegpt",{"config":{},"metadata":{}}]])"), "f");
  });
  EXPECT_NE(msg.find("modelopt_state_dict[1]"), std::string::npos) << msg;
  EXPECT_THROW(state_from_json(doc(R"("modelopt_state_dict":[["quantize",{}]])"), "f"),
               c10::ValueError);
  EXPECT_THROW(state_from_json(doc(R"("modelopt_state_dict":{})"), "f"), c10::ValueError);
  EXPECT_THROW(state_from_json("[1, 2]", "f"), c10::ValueError);
  EXPECT_THROW(state_from_json("{\"modelopt_state_dict\": [", "f"), c10::ValueError);
  // Without "format" it is nvidia-modelopt's state: version 0.
  const ModeState mo = state_from_json(
      R"({"modelopt_version":"0.47.0","modelopt_state_dict":[["quantize",)"
      R"({"config":{},"metadata":{}}],["max_calibrate",{"config":{},"metadata":{}}]]})",
      "mo.pth");
  EXPECT_EQ(mo.format_version, 0);
  EXPECT_EQ(mo.modes.size(), 2u);
}

TEST(OptQuantizerState, RoundTripsAttributesFlagsAndBuffers) {
  QuantizerCore core(QuantizerAttributeConfig::from_json(
      R"({"num_bits": [2, 1], "block_sizes": {"-1": 16, "type": "dynamic", "scale_bits": [4, 3]}})"));
  core.disable_quant();
  std::map<std::string, at::Tensor> buffers = {{"_amax", torch::ones({})},
                                               {"_pre_quant_scale", torch::ones({64})}};
  const QuantizerState s = parse_quantizer_state("fc.weight_quantizer",
                                                 quantizer_state_json(core, buffers));
  EXPECT_FALSE(s.sequential);
  EXPECT_EQ(s.attributes.to_json(), core.attributes_json());
  EXPECT_FALSE(s.flags.quant);
  EXPECT_FALSE(s.flags.disabled);
  ASSERT_EQ(s.buffers.count("_amax"), 1u);
  EXPECT_TRUE(s.buffers.at("_amax").shape.empty());
  EXPECT_EQ(s.buffers.at("_pre_quant_scale").shape, std::vector<int64_t>{64});
  const QuantizerState seq = parse_quantizer_state("w", sequential_quantizer_state_json(2));
  EXPECT_TRUE(seq.sequential);
  EXPECT_EQ(seq.num_quantizers, 2);
}

// nvidia-modelopt 0.47's state of an INT4 block weight quantizer after calibration.
const char* kModeloptInt4 = R"({"_num_bits": 4, "_axis": [0],
  "_block_sizes": {"-1": 128, "type": "static"}, "_disabled": false, "_if_quant": true,
  "_if_calib": false, "_unsigned": false, "_narrow_range": false, "_fake_quant": true,
  "_dynamic": false, "_bias": null, "_constant_amax": null, "_use_constant_amax": false,
  "_dequantize": false, "_effective_bits": null, "_enable_pre_quant_scale": true,
  "_input_dtype": null, "_learn_amax": false, "_pass_through_bwd": true, "_rotate": false,
  "_trt_high_precision_dtype": "Float", "backend": null, "backend_extra_args": {},
  "_is_static_block_scale_quantizer": true, "_amax_shape_for_export": [256, -1],
  "_quant_max_bound": 7.0,
  "_pytorch_state_metadata": {"params": {}, "buffers": {"_amax":
    {"dtype": "float32", "shape": [512, 1]}}}})";

TEST(OptQuantizerState, ReadsModeloptStaticBlockLayout) {
  const QuantizerState s = parse_quantizer_state("fc1.weight_quantizer", kModeloptInt4);
  EXPECT_FALSE(s.attributes.axis.has_value());  // ModelOpt's internal per-row axis is dropped
  ASSERT_TRUE(s.attributes.block_sizes.has_value());
  EXPECT_EQ(s.attributes.num_bits, NumBits::integer(4));
  EXPECT_EQ(s.buffers.at("_amax").shape, (std::vector<int64_t>{256, 2, 1}));
  ASSERT_TRUE(s.file_amax_shape.has_value());
  EXPECT_EQ(*s.file_amax_shape, (std::vector<int64_t>{512, 1}));
}

TEST(OptQuantizerState, RefusesWhatMoptCannotRun) {
  auto with = [](const std::string& key, const std::string& value) {
    json j = json::parse(kModeloptInt4);
    j[key] = json::parse(value);
    return j.dump();
  };
  std::string msg = error_of<c10::NotImplementedError>(
      [&] { parse_quantizer_state("q", with("_rotate", "true")); });
  EXPECT_NE(msg.find("quantizer state of 'q'"), std::string::npos) << msg;
  msg = error_of<c10::NotImplementedError>(
      [&] { parse_quantizer_state("q", with("_use_constant_amax", "true")); });
  EXPECT_NE(msg.find("_use_constant_amax"), std::string::npos) << msg;
  msg = error_of<c10::NotImplementedError>(
      [&] { parse_quantizer_state("q", with("_some_future_key", "1")); });
  EXPECT_NE(msg.find("_some_future_key"), std::string::npos) << msg;
  msg = error_of<c10::NotImplementedError>(
      [&] { parse_quantizer_state("q", with("_quant_max_bound", "6.0")); });
  EXPECT_NE(msg.find("_quant_max_bound"), std::string::npos) << msg;
  json j = json::parse(kModeloptInt4);
  j["_pytorch_state_metadata"]["buffers"]["_amax"]["dtype"] = "int8";
  msg = error_of<c10::ValueError>([&] { parse_quantizer_state("q", j.dump()); });
  EXPECT_NE(msg.find("not a floating type"), std::string::npos) << msg;
  j = json::parse(kModeloptInt4);
  j["_pytorch_state_metadata"]["buffers"]["_amax"]["shape"] = {511, 1};
  EXPECT_THROW(parse_quantizer_state("q", j.dump()), c10::ValueError);
  EXPECT_THROW(parse_quantizer_state("q", with("_disabled", "\"no\"")), c10::ValueError);
  EXPECT_THROW(parse_quantizer_state("q", with("_num_bits", "3.5")), c10::ValueError);
  EXPECT_THROW(parse_quantizer_state("q", "[]"), c10::ValueError);
  // a message quoting hostile bytes stays ASCII
  j = json::parse(kModeloptInt4);
  j["_odd"] = std::string(300, 'x') + "\xc3\xa9";
  msg = error_of<c10::NotImplementedError>([&] { parse_quantizer_state("q", j.dump()); });
  for (char c : msg) EXPECT_LT(static_cast<unsigned char>(c), 0x80);
}

// A whole quantizer_state parses each distinct property set once and copies it: every
// quantizer still gets its own buffers and flags, and the same result as parsed alone.
TEST(OptQuantizerState, StatesSharingPropertiesKeepTheirOwnBuffers) {
  json states = json::object();
  for (int i = 0; i < 4; ++i) {
    json j = json::parse(kModeloptInt4);
    j["_pytorch_state_metadata"]["buffers"]["_amax"]["shape"] = {128 * (i + 1), 1};
    j["_amax_shape_for_export"] = {64 * (i + 1), -1};
    states["layer" + std::to_string(i) + ".weight_quantizer"] = j;
  }
  json other = json::parse(kModeloptInt4);
  other["_disabled"] = true;  // another property set, between equal ones
  states["x.input_quantizer"] = other;
  states["y.weight_quantizer"] = states["layer0.weight_quantizer"];
  states["z"] = json::parse(sequential_quantizer_state_json(2));
  const auto parsed = parse_quantizer_states(states.dump());
  ASSERT_EQ(parsed.size(), 7u);
  for (const auto& [name, s] : parsed) {
    const QuantizerState alone = parse_quantizer_state(name, states[name].dump());
    EXPECT_EQ(s.sequential, alone.sequential) << name;
    EXPECT_EQ(s.attributes.to_json(), alone.attributes.to_json()) << name;
    EXPECT_EQ(s.attributes_json, alone.attributes_json) << name;
    EXPECT_EQ(s.flags.disabled, alone.flags.disabled) << name;
    EXPECT_EQ(s.file_amax_shape, alone.file_amax_shape) << name;
    ASSERT_EQ(s.buffers.size(), alone.buffers.size()) << name;
    for (const auto& [buf, spec] : alone.buffers) EXPECT_EQ(s.buffers.at(buf).shape, spec.shape);
  }
  EXPECT_EQ(parsed[2].second.buffers.at("_amax").shape, (std::vector<int64_t>{192, 2, 1}));
  EXPECT_TRUE(parsed[4].second.flags.disabled);
  EXPECT_TRUE(parsed[6].second.sequential);
  // a buffer error in a quantizer that shares its properties names that quantizer
  states["layer3.weight_quantizer"]["_pytorch_state_metadata"]["buffers"]["_amax"]["shape"] = {
      7, 1};
  const std::string msg =
      error_of<c10::ValueError>([&] { parse_quantizer_states(states.dump()); });
  EXPECT_NE(msg.find("layer3.weight_quantizer"), std::string::npos) << msg;
}

// A restore's prototype core hands its attributes to a quantizer: the same attributes, JSON,
// format and calibrator kind as set_attributes gives, while the quantizer keeps its own name
// and quant/calib flags.
TEST(OptQuantizerState, CopyAttributesFromMatchesSetAttributes) {
  const auto hist = QuantizerAttributeConfig::from_json(
      R"({"num_bits": 8, "axis": null, "calibrator": "histogram"})");
  const auto block = QuantizerAttributeConfig::from_json(
      R"({"num_bits": 4, "block_sizes": {"-1": 32}, "enable": false})");
  for (const auto& attributes : {hist, block}) {
    const QuantizerCore prototype(attributes);
    QuantizerCore expected, copied;
    expected.set_name("q");
    copied.set_name("q");
    copied.disable_quant();
    expected.disable_quant();
    expected.set_attributes(attributes);
    copied.copy_attributes_from(prototype);
    EXPECT_EQ(copied.attributes_json(), expected.attributes_json());
    EXPECT_EQ(copied.format().name, expected.format().name);
    EXPECT_EQ(copied.flags().disabled, expected.flags().disabled);
    EXPECT_EQ(copied.flags().quant, expected.flags().quant);
    EXPECT_EQ(copied.name(), "q");
    ASSERT_EQ(copied.calibrator() == nullptr, expected.calibrator() == nullptr);
    if (copied.calibrator()) {
      EXPECT_EQ(typeid(*copied.calibrator()), typeid(*expected.calibrator()));
      EXPECT_NE(copied.calibrator().get(), prototype.calibrator().get());  // its own
    }
  }
}

TEST(OptChecks, TensorMismatchesAreListed) {
  const TensorShapes model = {{"0.weight", {8, 4}}, {"0.bias", {8}}, {"1.weight", {2, 8}}};
  const TensorShapes file = {{"0.weight", {8, 6}}, {"0.bias", {8}}, {"2.weight", {2, 8}}};
  EXPECT_NO_THROW(check_tensors_match(model, model, "same"));
  const std::string msg =
      error_of<c10::ValueError>([&] { check_tensors_match(model, file, "other.safetensors"); });
  EXPECT_NE(msg.find("other.safetensors is not a checkpoint of this model"), std::string::npos);
  EXPECT_NE(msg.find("missing from the file: 1.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not in the model: 2.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("0.weight (model [8, 4], file [8, 6])"), std::string::npos) << msg;
}

TEST(OptChecks, AmaxMustBeFiniteAndNonNegative) {
  EXPECT_NO_THROW(check_quantizer_tensors({{"a._amax", torch::ones({3})},
                                           {"w", torch::full({2}, -1.0)}}, "f"));
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::string msg = error_of<c10::ValueError>(
      [&] { check_quantizer_tensors({{"fc.input_quantizer._amax", torch::full({2}, nan)}}, "f"); });
  EXPECT_NE(msg.find("fc.input_quantizer._amax holds NaN"), std::string::npos) << msg;
  EXPECT_THROW(check_quantizer_tensors({{"a._amax", torch::full({1}, -2.0)}}, "f"),
               c10::ValueError);
  EXPECT_THROW(check_quantizer_tensors({{"a._amax", torch::ones({1}, torch::kInt)}}, "f"),
               c10::ValueError);
}

}  // namespace
}  // namespace mopt::opt
