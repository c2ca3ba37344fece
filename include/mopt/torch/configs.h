// The quantize config (SPEC §1 "Config schema") as C++ types, with JSON in and out under exactly
// the keys of the Python dict `{"quant_cfg": {pattern: attrs}, "algorithm": ...}`, and the
// predefined configs of mopt.quantization.config (INT8_DEFAULT_CFG, FP8_DEFAULT_CFG, ...).
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace mopt {

/// How one quant_cfg value reads.
enum class QuantCfgKind {
  kAttributes,   // {"num_bits": 8, ...}: the attributes of one TensorQuantizer
  kSequential,   // [{...}, {...}]: a SequentialQuantizer, one quantizer per element
  kClassScoped,  // "nn.Linear": {sub_pattern: attrs}: only quantizers whose parent is that class
};

/// One `pattern: value` entry of quant_cfg.
struct QuantCfgEntry {
  /// fnmatch wildcard on full quantizer names, "default" (= "*", applied first), or a module
  /// class name such as "nn.Linear" for a class-scoped entry.
  std::string pattern;
  QuantCfgKind kind = QuantCfgKind::kAttributes;
  /// kAttributes: one JSON object; kSequential: one per quantizer. Kept as written: inside
  /// mopt::quantize omitted keys take their defaults, in set_quantizer_by_cfg they stay as is.
  std::vector<std::string> attributes;
  /// kClassScoped: the sub-pattern entries, in order.
  std::vector<QuantCfgEntry> entries;

  /// `pattern: {attributes}`.
  static QuantCfgEntry make(std::string pattern, std::string attributes_json);
  /// `pattern: [{...}, {...}]` (a SequentialQuantizer).
  static QuantCfgEntry sequential(std::string pattern, std::vector<std::string> attributes_json);
  /// `"nn.Linear": {sub_pattern: attrs, ...}`.
  static QuantCfgEntry class_scoped(std::string class_name, std::vector<QuantCfgEntry> entries);
};

/// `{"quant_cfg": ..., "algorithm": ...}`. Defaults as in Python's QuantizeConfig: quant_cfg
/// `{"default": {"num_bits": 8, "axis": null}}` and algorithm "max".
struct QuantizeConfig {
  /// In dict order (the order matters: the last match wins).
  std::vector<QuantCfgEntry> quant_cfg = {
      QuantCfgEntry::make("default", R"({"num_bits": 8, "axis": null})")};
  /// JSON: a method name ("max"), {"method": name, ...options}, a list of those, or null (no
  /// calibration). A bare name without quotes is accepted as shorthand.
  std::string algorithm = R"("max")";

  /// Parses and validates a JSON config; unknown top-level keys and invalid attributes raise
  /// ValueError naming the key or pattern.
  static QuantizeConfig from_json(const std::string& json);
  /// Serializes with the Python dict's keys and order.
  std::string to_json() const;
  /// Validates every attribute entry and the algorithm's form (ValueError naming the pattern).
  void validate() const;
  /// Assigns like a dict item: replaces the entry with the same pattern in place, else appends.
  QuantizeConfig& set(QuantCfgEntry entry);
  /// The entry for `pattern`, or nullptr.
  const QuantCfgEntry* find(const std::string& pattern) const;
};

/// A module class mopt quantizes, by its config name, and which quantizers it gets.
struct QuantClass {
  std::string name;  // "nn.Linear", "nn.Conv2d", "nn.BatchNorm1d", ...
  std::string kind;  // "linear", "conv", "conv_transpose" (input, weight, output quantizers) or
                     // "input_only" (norms, pooling, LeakyReLU: an input quantizer)
};
/// The built-in quantized classes (Python's QuantModuleRegistry starts from this list).
const std::vector<QuantClass>& quant_classes();

/// True for the class names that make a quant_cfg entry class-scoped (quant_classes() names).
bool is_quant_class_pattern(const std::string& pattern);

/// The predefined config `name` (e.g. "INT8_DEFAULT_CFG"), equal to the Python dict of the same
/// name in mopt.quantization.config. ValueError for an unknown name.
QuantizeConfig predefined_config(const std::string& name);
/// Names accepted by predefined_config.
const std::vector<std::string>& predefined_config_names();

/// A named recipe (the rows of `mopt ptq`): a predefined config, optionally calibrated with
/// another algorithm.
struct Recipe {
  std::string name;                      // short name: "int8", "int8_entropy", "nvfp4_awq", ...
  std::string config_name;               // the predefined config: "INT8_DEFAULT_CFG"
  std::string description;               // one line for tables
  std::optional<std::string> algorithm;  // JSON replacing the config's algorithm, if any
  bool needs_kv_quantizers = false;      // only meaningful for models with KV-cache quantizers
};
/// Every recipe, in table order.
const std::vector<Recipe>& recipes();
/// The recipe's quantize config (the predefined config with the recipe's algorithm).
QuantizeConfig recipe_config(const Recipe& recipe);

namespace configs {

/// INT8 weights per output channel, INT8 activations per tensor, max calibration.
QuantizeConfig int8_default();
/// INT8_DEFAULT with the smoothquant algorithm (runs from Python only).
QuantizeConfig int8_smoothquant();
/// INT8 weights per output channel, activations in float.
QuantizeConfig int8_weight_only();
/// INT8 weights per output channel, INT8 activations per token computed from each input
/// (dynamic, as torchao and vLLM run W8A8); max calibration of the weights only.
QuantizeConfig int8_dynamic();
/// int8_dynamic with SmoothQuant (alpha 0.5) folded into the weights first.
QuantizeConfig int8_smoothquant_dynamic();
/// FP8 E4M3 weights and activations, per tensor.
QuantizeConfig fp8_default();
/// FP8 E4M3 weights per output channel, activations per token (dynamic).
QuantizeConfig fp8_per_channel_per_token();
/// FP8 E4M3 weights in 128x128 blocks, activations in float.
QuantizeConfig fp8_2d_blockwise_weight_only();
/// INT4 weights in blocks of 128 along the input dimension, activations in float.
QuantizeConfig int4_blockwise_weight_only();
/// INT4 blocks with AWQ lite (runs from Python only).
QuantizeConfig int4_awq();
/// INT4 blocks of 128 with GPTQ (runs from Python only).
QuantizeConfig int4_blockwise_gptq();
/// INT4 blocks of 128 over all 16 codes (full_range: scale amax / 7.5), RTN / GPTQ (act_order).
QuantizeConfig int4_blockwise_full_range();
QuantizeConfig int4_blockwise_gptq_full_range();
/// INT4 weight-only blocks of 32 (ModelOpt's range / all 16 codes), RTN.
QuantizeConfig int4_b32_weight_only();
QuantizeConfig int4_b32_full_range();
/// INT4 weights with zero points ("asymmetric": min/max ranges, codes -8..7 shifted by an integer
/// zero point per block): blocks of 128 (RTN / AWQ lite), 32 and 64; blocks of 64 over all 16
/// codes (symmetric).
QuantizeConfig int4_blockwise_asym();
QuantizeConfig int4_awq_asym();
QuantizeConfig int4_b32_asym();
QuantizeConfig int4_b64_full_range();
QuantizeConfig int4_b64_asym();
/// NVFP4 weights with GPTQ, activations in float (runs from Python only).
QuantizeConfig nvfp4_weight_only_gptq();
/// NF4 weights in blocks of 64 with 8-bit double-quantized scales (blocks of 256), max.
QuantizeConfig nf4_weight_only();
/// llama.cpp's GGUF Q8_0 / Q4_0 / Q4_K weights (block_sizes "gguf"), dynamic, no calibration;
/// rows llama.cpp cannot store in the type fall back as llama.cpp does (gguf_row_type).
QuantizeConfig gguf_q8_0();
QuantizeConfig gguf_q4_0();
QuantizeConfig gguf_q4_k();
/// INT4 blocks then FP8 weights, FP8 activations, AWQ lite (runs from Python only).
QuantizeConfig w4a8_awq_beta();
/// NVFP4 weights and activations, max calibration of the tensor scale.
QuantizeConfig nvfp4_default();
/// NVFP4 with AWQ lite / clip / full (run from Python only).
QuantizeConfig nvfp4_awq_lite();
QuantizeConfig nvfp4_awq_clip();
QuantizeConfig nvfp4_awq_full();
/// NVFP4 weights with blocks of 32, FP8 activations per tensor.
QuantizeConfig w4a8_nvfp4_fp8();
/// OCP MX formats for weights and activations (no calibration).
QuantizeConfig mxfp8_default();
QuantizeConfig mxfp6_default();
QuantizeConfig mxfp4_default();
QuantizeConfig mxint8_default();
/// MXFP4 weights, FP8 activations per tensor.
QuantizeConfig w4a8_mxfp4_fp8();
/// FP8 K and V caches (`*[kv]_bmm_quantizer`).
QuantizeConfig fp8_kv();

}  // namespace configs
}  // namespace mopt
