// The quantizer attribute config (SPEC §1 "Config schema") as C++ types, with JSON in and out
// under the same keys and defaults as the Python dicts. One parser validates both APIs.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace mopt {

/// Number format: an integer width (`num_bits: 8`) or a minifloat (`num_bits: [E, M]`).
struct NumBits {
  int bits = 8;       // integer width, or 1 + E + M for a minifloat
  int exponent = 0;   // E of a minifloat
  int mantissa = 0;   // M of a minifloat
  bool is_float = false;

  /// Integer format of `b` bits.
  static NumBits integer(int b) { return NumBits{b, 0, 0, false}; }
  /// Minifloat format (E, M).
  static NumBits minifloat(int e, int m) { return NumBits{1 + e + m, e, m, true}; }
  bool operator==(const NumBits& o) const {
    return bits == o.bits && exponent == o.exponent && mantissa == o.mantissa &&
           is_float == o.is_float;
  }
};

/// One `axis: size` entry of block_sizes; size nullopt means the whole axis.
using BlockAxis = std::pair<int64_t, std::optional<int64_t>>;

/// `block_sizes`: block size per axis, static (calibrated) or dynamic (computed per call),
/// with optional quantization of the block scales.
struct BlockSizes {
  std::vector<BlockAxis> axes;
  std::string type = "static";                // "static" | "dynamic"
  std::optional<NumBits> scale_bits;          // format of the per-block scales
  std::vector<BlockAxis> scale_block_sizes;   // blocks of scales sharing a second-level scale
  /// llama.cpp block type ("q8_0", "q4_0", "q4_k"): the block holds ggml's exact layout and
  /// scale rounding (JSON key "gguf"); empty for mopt's own block formats.
  std::string gguf;

  bool dynamic() const { return type == "dynamic"; }
  /// True when every size is nullopt: the entry means "reduce over these axes" (e.g. per token).
  bool all_whole_axes() const;
};

/// The attributes of one TensorQuantizer (QuantizerAttributeConfig).
struct QuantizerAttributeConfig {
  bool enable = true;
  NumBits num_bits = NumBits::integer(8);
  std::optional<std::vector<int64_t>> axis;   // axes kept in amax; nullopt = per tensor
  bool fake_quant = true;
  bool is_unsigned = false;                   // JSON key "unsigned"
  bool narrow_range = false;
  /// Signed integers over all 2^b codes: amax maps to 2^(b-1) - 1/2 (scale amax / 7.5 at 4 bits,
  /// codes -8..7), where ModelOpt's default maps it to 2^(b-1) - 1 (amax / 7, codes -7..7 in
  /// practice). A mopt extension (llm-compressor's and AutoGPTQ's symmetric rounding).
  bool full_range = false;
  /// Signed integers with a zero point per amax entry (min/max calibration): codes
  /// -2^(b-1) .. 2^(b-1)-1 cover [lo, hi] (widened to hold 0), amax is the half width (hi-lo)/2
  /// with full-range scaling and the zero point, an integer code, is stored next to amax
  /// (llm-compressor's / AutoAWQ's asymmetric weights). A mopt extension.
  bool asymmetric = false;
  std::string type = "static";                // "static" | "dynamic"
  std::optional<BlockSizes> block_sizes;
  std::string calibrator = "max";             // "max" | "histogram" | "custom" (Python class)
  bool pass_through_bwd = false;
  std::string trt_high_precision_dtype = "Float";
  bool rotate = false;
  bool learn_amax = false;

  /// True when amax maps to 2^(b-1) - 1/2 (full_range, or asymmetric which implies it).
  bool uses_full_range() const { return full_range || asymmetric; }

  /// Parses and validates a JSON object; keys it omits take their defaults. Unknown keys, wrong
  /// types and invalid combinations raise ValueError naming the key; accepted settings mopt
  /// cannot run raise NotImplementedError.
  static QuantizerAttributeConfig from_json(const std::string& json);
  /// Applies the keys present in `json` on top of this config (set_quantizer_attribute).
  QuantizerAttributeConfig updated(const std::string& json) const;
  /// Serializes every field (the normalized form).
  std::string to_json() const;

  bool operator==(const QuantizerAttributeConfig& o) const { return to_json() == o.to_json(); }
};

/// Parses `json` once per distinct string and returns the cached config (thread safe).
const QuantizerAttributeConfig& parse_quantizer_config_cached(const std::string& json);

/// Field names of QuantizerAttributeConfig in JSON, in declaration order.
const std::vector<std::string>& quantizer_attribute_keys();

}  // namespace mopt
