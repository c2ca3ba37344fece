#include "mopt/torch/configs.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <set>

#include "core/json_parse.h"
#include "mopt/core/error.h"
#include "mopt/quant/config.h"

namespace mopt {

using json = nlohmann::ordered_json;

namespace {

using core::parse_json;

// "mopt: msg" -> "msg", so a re-raised error carries one prefix.
std::string strip_prefix(const char* what) {
  std::string s(what);
  const std::string prefix = "mopt: ";
  return s.rfind(prefix, 0) == 0 ? s.substr(prefix.size()) : s;
}

// Re-raises a validation error with the pattern in front, keeping its Python exception type.
void validate_attributes(const std::string& pattern, const std::string& attributes) {
  try {
    const json j = parse_json(attributes, "a quantizer attribute config");
    MOPT_CHECK_VALUE(j.is_object(), "must be a dict of attributes, got ", j.dump());
    QuantizerAttributeConfig::from_json(attributes);
  } catch (const c10::NotImplementedError& e) {
    MOPT_CHECK_IMPLEMENTED(false, "quant_cfg['", pattern, "']: ",
                           strip_prefix(e.what_without_backtrace()));
  } catch (const c10::TypeError& e) {
    MOPT_CHECK_TYPE(false, "quant_cfg['", pattern, "']: ",
                    strip_prefix(e.what_without_backtrace()));
  } catch (const c10::Error& e) {
    MOPT_CHECK_VALUE(false, "quant_cfg['", pattern, "']: ",
                     strip_prefix(e.what_without_backtrace()));
  }
}

bool is_bare_name(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
  }) && s != "null" && s != "true" && s != "false";
}

json algorithm_json(const std::string& text) {
  if (is_bare_name(text) && !std::isdigit(static_cast<unsigned char>(text[0]))) return json(text);
  return parse_json(text, "the quantize config's 'algorithm'");
}

void check_algorithm_form(const json& a) {
  if (a.is_null() || a.is_string()) return;
  if (a.is_object()) {
    MOPT_CHECK_VALUE(a.contains("method"), "algorithm dict needs a 'method' key, got ", a.dump());
    MOPT_CHECK_TYPE(a["method"].is_string() || a["method"].is_null(),
                    "algorithm 'method' must be a str or None, got ", a["method"].dump());
    return;
  }
  if (a.is_array()) {
    for (const auto& step : a) check_algorithm_form(step);
    return;
  }
  MOPT_CHECK_TYPE(false, "algorithm must be a str, dict, list or None, got ", a.dump());
}

QuantCfgEntry parse_value(const std::string& pattern, const json& v) {
  if (v.is_object()) return QuantCfgEntry::make(pattern, v.dump());
  MOPT_CHECK_VALUE(v.is_array(), "quant_cfg['", pattern, "'] must be a dict of attributes or a "
                   "list of them, got ", v.dump());
  std::vector<std::string> attrs;
  for (const auto& one : v) {
    MOPT_CHECK_VALUE(one.is_object(), "quant_cfg['", pattern,
                     "'] must be a dict of attributes, got ", one.dump());
    attrs.push_back(one.dump());
  }
  return QuantCfgEntry::sequential(pattern, std::move(attrs));
}

json value_json(const QuantCfgEntry& e) {
  switch (e.kind) {
    case QuantCfgKind::kAttributes:
      MOPT_CHECK_VALUE(e.attributes.size() == 1, "quant_cfg['", e.pattern,
                       "'] holds ", e.attributes.size(), " attribute dicts; expected one");
      return parse_json(e.attributes[0], "a quantizer attribute config");
    case QuantCfgKind::kSequential: {
      json list = json::array();
      for (const auto& a : e.attributes) {
        list.push_back(parse_json(a, "a quantizer attribute config"));
      }
      return list;
    }
    case QuantCfgKind::kClassScoped: {
      json obj = json::object();
      for (const auto& sub : e.entries) obj[sub.pattern] = value_json(sub);
      return obj;
    }
  }
  return json();
}

void validate_entry(const QuantCfgEntry& e, bool inside_class) {
  switch (e.kind) {
    case QuantCfgKind::kAttributes:
      MOPT_CHECK_VALUE(e.attributes.size() == 1, "quant_cfg['", e.pattern, "'] holds ",
                       e.attributes.size(), " attribute dicts; expected one");
      validate_attributes(e.pattern, e.attributes[0]);
      break;
    case QuantCfgKind::kSequential:
      MOPT_CHECK_VALUE(!e.attributes.empty(), "quant_cfg['", e.pattern,
                       "'] is an empty list; a SequentialQuantizer needs at least one quantizer");
      for (const auto& a : e.attributes) validate_attributes(e.pattern, a);
      break;
    case QuantCfgKind::kClassScoped: {
      MOPT_CHECK_VALUE(!inside_class, "quant_cfg: class-scoped entry '", e.pattern,
                       "' cannot be nested in another class-scoped entry");
      MOPT_CHECK_VALUE(is_quant_class_pattern(e.pattern), "quant_cfg['", e.pattern,
                       "'] is class-scoped but '", e.pattern, "' is not a quantizable module "
                       "class name such as nn.Linear or nn.Conv2d");
      std::set<std::string> seen;
      for (const auto& sub : e.entries) {
        MOPT_CHECK_VALUE(seen.insert(sub.pattern).second, "quant_cfg['", e.pattern,
                         "'] names sub-pattern '", sub.pattern, "' twice");
        validate_entry(sub, true);
      }
      break;
    }
  }
}

// The JSON of the predefined configs, written the way python/mopt/quantization/config.py
// writes the dicts (same keys, same order), so both sides serialize identically.
const char* kDefaultDisabled =
    R"("nn.BatchNorm1d": {"*": {"enable": false}},
       "nn.BatchNorm2d": {"*": {"enable": false}},
       "nn.BatchNorm3d": {"*": {"enable": false}},
       "nn.LeakyReLU": {"*": {"enable": false}},
       "*lm_head*": {"enable": false},
       "*proj_out.*": {"enable": false},
       "*block_sparse_moe.gate*": {"enable": false},
       "*router*": {"enable": false},
       "*mlp.gate.*": {"enable": false},
       "*mlp.shared_expert_gate.*": {"enable": false},
       "*output_layer*": {"enable": false},
       "output.*": {"enable": false},
       "default": {"enable": false})";

const std::string kFp8PerTensor = R"({"num_bits": [4, 3], "axis": null})";
const std::string kFp8PerTensorOn = R"({"num_bits": [4, 3], "axis": null, "enable": true})";
const std::string kOff = R"({"enable": false})";
// INT8 per token, scales from each input (no calibration).
const std::string kInt8PerToken =
    R"({"num_bits": 8, "type": "dynamic", "block_sizes": {"-1": null}})";

QuantizeConfig make_cfg(const std::string& weight, const std::string& input,
                        const std::string& algorithm) {
  return QuantizeConfig::from_json(R"({"quant_cfg": {"*weight_quantizer": )" + weight +
                                   R"(, "*input_quantizer": )" + input + ", " + kDefaultDisabled +
                                   R"(}, "algorithm": )" + algorithm + "}");
}

std::string nvfp4(int block) {
  // appended piece by piece: GCC 12-14 warn (-Warray-bounds, a false positive) on a chain of
  // operator+ over raw string literals
  std::string s = R"({"num_bits": [2, 1], "block_sizes": {"-1": )";
  s += std::to_string(block);
  s += R"(, "type": "dynamic", "scale_bits": [4, 3]}, "axis": null, "enable": true})";
  return s;
}

std::string mx(const std::string& fmt) {
  return R"({"num_bits": )" + fmt +
         R"(, "block_sizes": {"-1": 32, "type": "dynamic", "scale_bits": [8, 0]}, "enable": true})";
}

const std::string kGptq =
    R"({"method": "gptq", "block_size": 128, "percdamp": 0.01, "act_order": false})";
// mopt's own GPTQ recipes visit columns by decreasing Hessian diagonal: on SmolLM2 with
// out-of-domain calibration this is what keeps GPTQ at or near RTN (docs/benchmarks.md)
const std::string kGptqActOrder =
    R"({"method": "gptq", "block_size": 128, "percdamp": 0.01, "act_order": true})";

// INT4 weights with zero points (asymmetric, min/max) in blocks of `block` inputs.
std::string int4_asym(int block) {
  return R"({"num_bits": 4, "block_sizes": {"-1": )" + std::to_string(block) +
         R"(}, "asymmetric": true, "enable": true})";
}
const std::string kInt4Static =
    R"({"num_bits": 4, "block_sizes": {"-1": 128, "type": "static"}, "enable": true})";

using ConfigFactory = QuantizeConfig (*)();

const std::vector<std::pair<std::string, ConfigFactory>>& factories() {
  static const std::vector<std::pair<std::string, ConfigFactory>> table = {
      {"INT8_DEFAULT_CFG", &configs::int8_default},
      {"INT8_SMOOTHQUANT_CFG", &configs::int8_smoothquant},
      {"INT8_WEIGHT_ONLY_CFG", &configs::int8_weight_only},
      {"INT8_DYNAMIC_CFG", &configs::int8_dynamic},
      {"INT8_SMOOTHQUANT_DYNAMIC_CFG", &configs::int8_smoothquant_dynamic},
      {"FP8_DEFAULT_CFG", &configs::fp8_default},
      {"FP8_PER_CHANNEL_PER_TOKEN_CFG", &configs::fp8_per_channel_per_token},
      {"FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG", &configs::fp8_2d_blockwise_weight_only},
      {"INT4_BLOCKWISE_WEIGHT_ONLY_CFG", &configs::int4_blockwise_weight_only},
      {"INT4_AWQ_CFG", &configs::int4_awq},
      {"INT4_BLOCKWISE_GPTQ_CFG", &configs::int4_blockwise_gptq},
      {"INT4_BLOCKWISE_FULL_RANGE_CFG", &configs::int4_blockwise_full_range},
      {"INT4_BLOCKWISE_GPTQ_FULL_RANGE_CFG", &configs::int4_blockwise_gptq_full_range},
      {"INT4_B32_WEIGHT_ONLY_CFG", &configs::int4_b32_weight_only},
      {"INT4_B32_FULL_RANGE_CFG", &configs::int4_b32_full_range},
      {"INT4_BLOCKWISE_ASYM_CFG", &configs::int4_blockwise_asym},
      {"INT4_AWQ_ASYM_CFG", &configs::int4_awq_asym},
      {"INT4_B32_ASYM_CFG", &configs::int4_b32_asym},
      {"INT4_B64_FULL_RANGE_CFG", &configs::int4_b64_full_range},
      {"INT4_B64_ASYM_CFG", &configs::int4_b64_asym},
      {"NVFP4_WEIGHT_ONLY_GPTQ_CFG", &configs::nvfp4_weight_only_gptq},
      {"NF4_WEIGHT_ONLY_CFG", &configs::nf4_weight_only},
      {"GGUF_Q8_0_CFG", &configs::gguf_q8_0},
      {"GGUF_Q4_0_CFG", &configs::gguf_q4_0},
      {"GGUF_Q4_K_CFG", &configs::gguf_q4_k},
      {"W4A8_AWQ_BETA_CFG", &configs::w4a8_awq_beta},
      {"NVFP4_DEFAULT_CFG", &configs::nvfp4_default},
      {"NVFP4_AWQ_LITE_CFG", &configs::nvfp4_awq_lite},
      {"NVFP4_AWQ_CLIP_CFG", &configs::nvfp4_awq_clip},
      {"NVFP4_AWQ_FULL_CFG", &configs::nvfp4_awq_full},
      {"W4A8_NVFP4_FP8_CFG", &configs::w4a8_nvfp4_fp8},
      {"MXFP8_DEFAULT_CFG", &configs::mxfp8_default},
      {"MXFP6_DEFAULT_CFG", &configs::mxfp6_default},
      {"MXFP4_DEFAULT_CFG", &configs::mxfp4_default},
      {"MXINT8_DEFAULT_CFG", &configs::mxint8_default},
      {"W4A8_MXFP4_FP8_CFG", &configs::w4a8_mxfp4_fp8},
      {"FP8_KV_CFG", &configs::fp8_kv},
  };
  return table;
}

}  // namespace

QuantCfgEntry QuantCfgEntry::make(std::string pattern, std::string attributes_json) {
  QuantCfgEntry e;
  e.pattern = std::move(pattern);
  e.kind = QuantCfgKind::kAttributes;
  e.attributes.push_back(std::move(attributes_json));
  return e;
}

QuantCfgEntry QuantCfgEntry::sequential(std::string pattern,
                                        std::vector<std::string> attributes_json) {
  QuantCfgEntry e;
  e.pattern = std::move(pattern);
  e.kind = QuantCfgKind::kSequential;
  e.attributes = std::move(attributes_json);
  return e;
}

QuantCfgEntry QuantCfgEntry::class_scoped(std::string class_name,
                                          std::vector<QuantCfgEntry> entries) {
  QuantCfgEntry e;
  e.pattern = std::move(class_name);
  e.kind = QuantCfgKind::kClassScoped;
  e.entries = std::move(entries);
  return e;
}

const std::vector<QuantClass>& quant_classes() {
  static const std::vector<QuantClass> classes = [] {
    std::vector<QuantClass> c = {{"nn.Linear", "linear"}};
    for (const char* d : {"1d", "2d", "3d"}) c.push_back({std::string("nn.Conv") + d, "conv"});
    for (const char* d : {"1d", "2d", "3d"}) {
      c.push_back({std::string("nn.ConvTranspose") + d, "conv_transpose"});
    }
    for (const char* base : {"BatchNorm", "InstanceNorm", "MaxPool", "AvgPool", "AdaptiveAvgPool"}) {
      for (const char* d : {"1d", "2d", "3d"}) {
        c.push_back({std::string("nn.") + base + d, "input_only"});
      }
    }
    c.push_back({"nn.LeakyReLU", "input_only"});
    return c;
  }();
  return classes;
}

bool is_quant_class_pattern(const std::string& pattern) {
  for (const auto& c : quant_classes()) {
    if (c.name == pattern) return true;
  }
  return false;
}

QuantizeConfig QuantizeConfig::from_json(const std::string& text) {
  const json j = parse_json(text, "quantize config");
  MOPT_CHECK_VALUE(j.is_object(), "a quantize config must be a dict with 'quant_cfg' and "
                   "'algorithm', got ", j.dump());
  std::vector<std::string> unknown;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() != "quant_cfg" && it.key() != "algorithm") unknown.push_back("'" + it.key() + "'");
  }
  if (!unknown.empty()) {
    std::string names;
    for (const auto& u : unknown) names += (names.empty() ? "" : ", ") + u;
    MOPT_CHECK_VALUE(false, "unknown quantize config key(s) [", names,
                     "]; expected 'quant_cfg' and 'algorithm'");
  }
  QuantizeConfig c;
  if (j.contains("quant_cfg")) {
    const json& q = j["quant_cfg"];
    MOPT_CHECK_VALUE(q.is_object(), "'quant_cfg' must be a dict of pattern -> attributes, got ",
                     q.dump());
    c.quant_cfg.clear();
    for (auto it = q.begin(); it != q.end(); ++it) {
      const std::string& pattern = it.key();
      const json& v = it.value();
      if (is_quant_class_pattern(pattern)) {
        MOPT_CHECK_VALUE(v.is_object(), "quant_cfg['", pattern,
                         "'] must be a dict of sub-patterns, got ", v.dump());
        std::vector<QuantCfgEntry> subs;
        for (auto s = v.begin(); s != v.end(); ++s) subs.push_back(parse_value(s.key(), s.value()));
        c.quant_cfg.push_back(QuantCfgEntry::class_scoped(pattern, std::move(subs)));
      } else {
        c.quant_cfg.push_back(parse_value(pattern, v));
      }
    }
  }
  if (j.contains("algorithm")) c.algorithm = j["algorithm"].dump();
  c.validate();
  return c;
}

std::string QuantizeConfig::to_json() const {
  json j;
  j["quant_cfg"] = json::object();
  for (const auto& e : quant_cfg) j["quant_cfg"][e.pattern] = value_json(e);
  j["algorithm"] = algorithm_json(algorithm);
  return j.dump();
}

void QuantizeConfig::validate() const {
  std::set<std::string> seen;
  for (const auto& e : quant_cfg) {
    MOPT_CHECK_VALUE(seen.insert(e.pattern).second, "quant_cfg names pattern '", e.pattern,
                     "' twice; use QuantizeConfig::set to replace an entry");
    MOPT_CHECK_VALUE(e.kind == QuantCfgKind::kClassScoped || !is_quant_class_pattern(e.pattern),
                     "quant_cfg['", e.pattern, "'] must be a dict of sub-patterns (a class-scoped "
                     "entry), got attributes");
    validate_entry(e, false);
  }
  check_algorithm_form(algorithm_json(algorithm));
}

QuantizeConfig& QuantizeConfig::set(QuantCfgEntry entry) {
  for (auto& e : quant_cfg) {
    if (e.pattern == entry.pattern) {
      e = std::move(entry);
      return *this;
    }
  }
  quant_cfg.push_back(std::move(entry));
  return *this;
}

const QuantCfgEntry* QuantizeConfig::find(const std::string& pattern) const {
  for (const auto& e : quant_cfg) {
    if (e.pattern == pattern) return &e;
  }
  return nullptr;
}

QuantizeConfig predefined_config(const std::string& name) {
  for (const auto& [n, factory] : factories()) {
    if (n == name) return factory();
  }
  std::string names;
  for (const auto& n : predefined_config_names()) names += (names.empty() ? "" : ", ") + n;
  MOPT_CHECK_VALUE(false, "unknown predefined config '", name, "'; available: ", names);
  return {};
}

const std::vector<std::string>& predefined_config_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (const auto& f : factories()) v.push_back(f.first);
    return v;
  }();
  return names;
}

const std::vector<Recipe>& recipes() {
  static const std::vector<Recipe> table = {
      {"int8", "INT8_DEFAULT_CFG", "INT8 W per channel + A per tensor, max", {}},
      {"int8_wo", "INT8_WEIGHT_ONLY_CFG", "INT8 weight-only per channel", {}},
      {"int8_sq", "INT8_SMOOTHQUANT_CFG", "INT8 W+A with SmoothQuant", {}},
      {"int8_dyn", "INT8_DYNAMIC_CFG", "INT8 W per channel + A per token (dynamic)", {}},
      {"int8_sq_dyn", "INT8_SMOOTHQUANT_DYNAMIC_CFG",
       "INT8 W per channel + A per token (dynamic), SmoothQuant 0.5", {}},
      {"int8_sq_auto", "INT8_SMOOTHQUANT_CFG", "INT8 W+A, SmoothQuant alpha searched per layer",
       R"({"method": "smoothquant", "alpha": "auto"})"},
      {"int8_sq_dyn_auto", "INT8_SMOOTHQUANT_DYNAMIC_CFG",
       "INT8 W per channel + A per token (dynamic), SmoothQuant alpha searched per layer",
       R"({"method": "smoothquant", "alpha": "auto"})"},
      {"int8_entropy", "INT8_DEFAULT_CFG", "INT8 W+A, entropy (KL) activation amax",
       R"("entropy")"},
      {"int8_percentile", "INT8_DEFAULT_CFG", "INT8 W+A, 99.99th percentile amax",
       R"({"method": "percentile", "percentile": 99.99})"},
      {"int8_hist_mse", "INT8_DEFAULT_CFG", "INT8 W+A, histogram-MSE amax",
       R"("histogram_mse")"},
      {"int8_mse", "INT8_DEFAULT_CFG", "INT8 W+A, MSE-searched amax", R"("mse")"},
      {"fp8", "FP8_DEFAULT_CFG", "FP8 E4M3 W+A per tensor", {}},
      {"fp8_pcpt", "FP8_PER_CHANNEL_PER_TOKEN_CFG", "FP8 W per channel + A per token (dynamic)",
       {}},
      {"fp8_2d", "FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG", "FP8 weight-only 128x128 blocks", {}},
      {"int4", "INT4_BLOCKWISE_WEIGHT_ONLY_CFG", "INT4 weight-only blocks of 128, RTN", {}},
      {"int4_awq", "INT4_AWQ_CFG", "INT4 weight-only blocks of 128, AWQ lite", {}},
      {"int4_gptq", "INT4_BLOCKWISE_GPTQ_CFG", "INT4 weight-only blocks of 128, GPTQ", {}},
      {"int4_full", "INT4_BLOCKWISE_FULL_RANGE_CFG",
       "INT4 weight-only blocks of 128, all 16 codes (amax/7.5), RTN", {}},
      {"int4_full_awq", "INT4_BLOCKWISE_FULL_RANGE_CFG",
       "INT4 weight-only blocks of 128, all 16 codes, AWQ lite",
       R"({"method": "awq_lite", "alpha_step": 0.1})"},
      {"int4_gptq_full", "INT4_BLOCKWISE_GPTQ_FULL_RANGE_CFG",
       "INT4 weight-only blocks of 128, all 16 codes, GPTQ act_order", {}},
      {"int4_b32", "INT4_B32_WEIGHT_ONLY_CFG", "INT4 weight-only blocks of 32, RTN", {}},
      {"int4_b32_full", "INT4_B32_FULL_RANGE_CFG",
       "INT4 weight-only blocks of 32, all 16 codes, RTN", {}},
      {"int4_b32_gptq", "INT4_B32_WEIGHT_ONLY_CFG",
       "INT4 weight-only blocks of 32, GPTQ act_order", kGptqActOrder},
      {"int4_b32_gptq_full", "INT4_B32_FULL_RANGE_CFG",
       "INT4 weight-only blocks of 32, all 16 codes, GPTQ act_order", kGptqActOrder},
      {"int4_asym", "INT4_BLOCKWISE_ASYM_CFG",
       "INT4 weight-only blocks of 128, zero points (min/max), RTN", {}},
      {"int4_awq_asym", "INT4_AWQ_ASYM_CFG",
       "INT4 weight-only blocks of 128, zero points, AWQ lite", {}},
      {"int4_awq_full_asym", "INT4_AWQ_ASYM_CFG",
       "INT4 weight-only blocks of 128, zero points, AWQ lite + clip",
       R"({"method": "awq_full", "alpha_step": 0.1})"},
      {"int4_gptq_asym", "INT4_BLOCKWISE_ASYM_CFG",
       "INT4 weight-only blocks of 128, zero points, GPTQ act_order", kGptqActOrder},
      {"int4_b32_asym", "INT4_B32_ASYM_CFG", "INT4 weight-only blocks of 32, zero points, RTN", {}},
      {"int4_b32_awq_asym", "INT4_B32_ASYM_CFG",
       "INT4 weight-only blocks of 32, zero points, AWQ lite",
       R"({"method": "awq_lite", "alpha_step": 0.1})"},
      {"int4_b32_awq_full_asym", "INT4_B32_ASYM_CFG",
       "INT4 weight-only blocks of 32, zero points, AWQ lite + clip",
       R"({"method": "awq_full", "alpha_step": 0.1})"},
      {"int4_b32_gptq_asym", "INT4_B32_ASYM_CFG",
       "INT4 weight-only blocks of 32, zero points, GPTQ act_order", kGptqActOrder},
      {"int4_b64_full", "INT4_B64_FULL_RANGE_CFG",
       "INT4 weight-only blocks of 64, all 16 codes, RTN", {}},
      {"int4_b64_gptq_full", "INT4_B64_FULL_RANGE_CFG",
       "INT4 weight-only blocks of 64, all 16 codes, GPTQ act_order", kGptqActOrder},
      {"int4_b64_asym", "INT4_B64_ASYM_CFG", "INT4 weight-only blocks of 64, zero points, RTN", {}},
      {"int4_b64_awq_asym", "INT4_B64_ASYM_CFG",
       "INT4 weight-only blocks of 64, zero points, AWQ lite",
       R"({"method": "awq_lite", "alpha_step": 0.1})"},
      {"int4_b64_gptq_asym", "INT4_B64_ASYM_CFG",
       "INT4 weight-only blocks of 64, zero points, GPTQ act_order", kGptqActOrder},
      {"w4a8_awq", "W4A8_AWQ_BETA_CFG", "INT4 blocks + FP8 W, FP8 A, AWQ lite", {}},
      {"nvfp4", "NVFP4_DEFAULT_CFG", "NVFP4 W+A (E2M1, E4M3 scales per 16)", {}},
      {"nvfp4_gptq", "NVFP4_WEIGHT_ONLY_GPTQ_CFG", "NVFP4 weight-only, GPTQ", {}},
      {"nvfp4_awq", "NVFP4_AWQ_LITE_CFG", "NVFP4 W+A, AWQ lite", {}},
      {"nvfp4_awq_clip", "NVFP4_AWQ_CLIP_CFG", "NVFP4 W+A, AWQ clip", {}},
      {"nvfp4_awq_full", "NVFP4_AWQ_FULL_CFG", "NVFP4 W+A, AWQ lite + clip", {}},
      {"w4a8_nvfp4_fp8", "W4A8_NVFP4_FP8_CFG", "NVFP4 W (blocks of 32) + FP8 A", {}},
      {"mxfp8", "MXFP8_DEFAULT_CFG", "MXFP8 W+A (E4M3, E8M0 scales per 32)", {}},
      {"mxfp6", "MXFP6_DEFAULT_CFG", "MXFP6 W+A (E3M2)", {}},
      {"mxfp4", "MXFP4_DEFAULT_CFG", "MXFP4 W+A (E2M1)", {}},
      {"mxint8", "MXINT8_DEFAULT_CFG", "MXINT8 W+A", {}},
      {"w4a8_mxfp4_fp8", "W4A8_MXFP4_FP8_CFG", "MXFP4 W + FP8 A", {}},
      {"nf4", "NF4_WEIGHT_ONLY_CFG", "NF4 weight-only, blocks of 64, int8 double-quantized scales",
       {}},
      {"gguf_q8_0", "GGUF_Q8_0_CFG", "llama.cpp Q8_0 weight-only (int8, fp16 scale per 32)", {}},
      {"gguf_q4_0", "GGUF_Q4_0_CFG", "llama.cpp Q4_0 weight-only (4-bit, fp16 scale per 32)", {}},
      {"gguf_q4_k", "GGUF_Q4_K_CFG",
       "llama.cpp Q4_K weight-only (4-bit, 6-bit scales/mins per 32, fp16 per 256)", {}},
      {"fp8_kv", "FP8_KV_CFG", "FP8 KV cache (k/v bmm quantizers) only", {}, true},
  };
  return table;
}

QuantizeConfig recipe_config(const Recipe& recipe) {
  QuantizeConfig config = predefined_config(recipe.config_name);
  if (recipe.algorithm) config.algorithm = *recipe.algorithm;
  return config;
}

namespace configs {

QuantizeConfig int8_default() {
  return make_cfg(R"({"num_bits": 8, "axis": 0})", R"({"num_bits": 8, "axis": null})", R"("max")");
}
QuantizeConfig int8_smoothquant() {
  return make_cfg(R"({"num_bits": 8, "axis": 0})", R"({"num_bits": 8, "axis": null})",
                  R"("smoothquant")");
}
QuantizeConfig int8_weight_only() {
  return make_cfg(R"({"num_bits": 8, "axis": 0})", kOff, R"("max")");
}
QuantizeConfig int8_dynamic() {
  return make_cfg(R"({"num_bits": 8, "axis": 0})", kInt8PerToken, R"("max")");
}
QuantizeConfig int8_smoothquant_dynamic() {
  return make_cfg(R"({"num_bits": 8, "axis": 0})", kInt8PerToken,
                  R"({"method": "smoothquant", "alpha": 0.5})");
}
QuantizeConfig fp8_default() { return make_cfg(kFp8PerTensor, kFp8PerTensor, R"("max")"); }
QuantizeConfig fp8_per_channel_per_token() {
  return make_cfg(R"({"num_bits": [4, 3], "axis": 0})",
                  R"({"num_bits": [4, 3], "type": "dynamic", "block_sizes": {"-1": null}})",
                  R"("max")");
}
QuantizeConfig fp8_2d_blockwise_weight_only() {
  return make_cfg(R"({"num_bits": [4, 3], "block_sizes": {"-1": 128, "-2": 128}, "enable": true})",
                  kOff, R"("max")");
}
QuantizeConfig int4_blockwise_weight_only() {
  return make_cfg(R"({"num_bits": 4, "block_sizes": {"-1": 128}, "enable": true})", kOff,
                  R"("max")");
}
QuantizeConfig int4_awq() {
  return make_cfg(kInt4Static, kOff, R"({"method": "awq_lite", "alpha_step": 0.1})");
}
QuantizeConfig int4_blockwise_gptq() {
  return make_cfg(R"({"num_bits": 4, "block_sizes": {"-1": 128}, "enable": true})", kOff, kGptq);
}
QuantizeConfig int4_blockwise_full_range() {
  return make_cfg(
      R"({"num_bits": 4, "block_sizes": {"-1": 128}, "full_range": true, "enable": true})", kOff,
      R"("max")");
}
QuantizeConfig int4_blockwise_gptq_full_range() {
  return make_cfg(
      R"({"num_bits": 4, "block_sizes": {"-1": 128}, "full_range": true, "enable": true})", kOff,
      kGptqActOrder);
}
QuantizeConfig int4_b32_weight_only() {
  return make_cfg(R"({"num_bits": 4, "block_sizes": {"-1": 32}, "enable": true})", kOff,
                  R"("max")");
}
QuantizeConfig int4_b32_full_range() {
  return make_cfg(
      R"({"num_bits": 4, "block_sizes": {"-1": 32}, "full_range": true, "enable": true})", kOff,
      R"("max")");
}
QuantizeConfig int4_blockwise_asym() { return make_cfg(int4_asym(128), kOff, R"("max")"); }
QuantizeConfig int4_awq_asym() {
  return make_cfg(int4_asym(128), kOff, R"({"method": "awq_lite", "alpha_step": 0.1})");
}
QuantizeConfig int4_b32_asym() { return make_cfg(int4_asym(32), kOff, R"("max")"); }
QuantizeConfig int4_b64_full_range() {
  return make_cfg(
      R"({"num_bits": 4, "block_sizes": {"-1": 64}, "full_range": true, "enable": true})", kOff,
      R"("max")");
}
QuantizeConfig int4_b64_asym() { return make_cfg(int4_asym(64), kOff, R"("max")"); }
QuantizeConfig nvfp4_weight_only_gptq() { return make_cfg(nvfp4(16), kOff, kGptq); }
QuantizeConfig nf4_weight_only() {
  return make_cfg(
      R"({"num_bits": 4, "block_sizes": {"-1": 64, "scale_bits": 8, "scale_block_sizes": {"-1": 256}},
          "enable": true})",
      kOff, R"("max")");
}
// llama.cpp's block types: weights only, scales from each block (nothing to calibrate).
static QuantizeConfig gguf_weight_only(int bits, int block, const char* type) {
  return make_cfg(R"({"num_bits": )" + std::to_string(bits) + R"(, "block_sizes": {"-1": )" +
                      std::to_string(block) + R"(, "type": "dynamic", "gguf": ")" + type +
                      R"("}, "enable": true})",
                  kOff, "null");
}
QuantizeConfig gguf_q8_0() { return gguf_weight_only(8, 32, "q8_0"); }
QuantizeConfig gguf_q4_0() { return gguf_weight_only(4, 32, "q4_0"); }
QuantizeConfig gguf_q4_k() { return gguf_weight_only(4, 256, "q4_k"); }
QuantizeConfig w4a8_awq_beta() {
  return make_cfg("[" + kInt4Static + R"(, {"num_bits": [4, 3], "axis": null, "enable": true}])",
                  kFp8PerTensorOn, R"("awq_lite")");
}
QuantizeConfig nvfp4_default() { return make_cfg(nvfp4(16), nvfp4(16), R"("max")"); }
QuantizeConfig nvfp4_awq_lite() { return make_cfg(nvfp4(16), nvfp4(16), R"("awq_lite")"); }
QuantizeConfig nvfp4_awq_clip() {
  return make_cfg(nvfp4(16), nvfp4(16), R"({"method": "awq_clip"})");
}
QuantizeConfig nvfp4_awq_full() {
  return make_cfg(nvfp4(16), nvfp4(16), R"({"method": "awq_full", "alpha_step": 0.1})");
}
QuantizeConfig w4a8_nvfp4_fp8() { return make_cfg(nvfp4(32), kFp8PerTensorOn, R"("max")"); }
QuantizeConfig mxfp8_default() { return make_cfg(mx("[4, 3]"), mx("[4, 3]"), "null"); }
QuantizeConfig mxfp6_default() { return make_cfg(mx("[3, 2]"), mx("[3, 2]"), "null"); }
QuantizeConfig mxfp4_default() { return make_cfg(mx("[2, 1]"), mx("[2, 1]"), "null"); }
QuantizeConfig mxint8_default() { return make_cfg(mx("8"), mx("8"), "null"); }
QuantizeConfig w4a8_mxfp4_fp8() { return make_cfg(mx("[2, 1]"), kFp8PerTensorOn, "null"); }
QuantizeConfig fp8_kv() {
  return QuantizeConfig::from_json(
      R"({"quant_cfg": {"*[kv]_bmm_quantizer": {"num_bits": [4, 3], "axis": null, "enable": true},
                        "default": {"enable": false}},
          "algorithm": "max"})");
}

}  // namespace configs
}  // namespace mopt
