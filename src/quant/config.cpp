#include "mopt/quant/config.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>

#include "core/json_parse.h"
#include "mopt/core/error.h"

namespace mopt {

using json = nlohmann::ordered_json;

namespace {

const char* kBlockSpecialKeys[] = {"type", "scale_bits", "scale_block_sizes", "gguf"};

std::string join(const std::vector<std::string>& v) {
  std::ostringstream os;
  for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  return os.str();
}

bool get_bool(const json& v, const char* key) {
  MOPT_CHECK_VALUE(v.is_boolean(), "quantizer attribute '", key, "' must be a bool, got ",
                   v.dump());
  return v.get<bool>();
}

std::string get_choice(const json& v, const char* key, const std::vector<std::string>& choices) {
  MOPT_CHECK_VALUE(v.is_string() && std::find(choices.begin(), choices.end(),
                                              v.get<std::string>()) != choices.end(),
                   "quantizer attribute '", key, "' must be one of ", join(choices), ", got ",
                   v.dump());
  return v.get<std::string>();
}

// A JSON integer as int64. nlohmann keeps 2**63 .. 2**64-1 as unsigned, which get<int64_t>()
// would wrap to a negative number; such values are rejected instead.
int64_t get_int64(const json& v, const char* key) {
  constexpr auto kMax = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  MOPT_CHECK_VALUE(!v.is_number_unsigned() || v.get<uint64_t>() <= kMax, "'", key, "' = ",
                   v.dump(), " does not fit in a 64-bit integer");
  return v.get<int64_t>();
}

NumBits parse_num_bits(const json& v, const char* key) {
  // Compared as int64 before narrowing: through get<int>(), 2**32 + 4 would read as 4.
  if (v.is_number_integer()) {
    const int64_t b = get_int64(v, key);
    MOPT_CHECK_VALUE(b >= 2 && b <= 16, "'", key, "' as an integer must be in [2, 16], got ", b);
    return NumBits::integer(static_cast<int>(b));
  }
  MOPT_CHECK_VALUE(v.is_array() && v.size() == 2 && v[0].is_number_integer() &&
                       v[1].is_number_integer(),
                   "'", key, "' must be an integer or an (E, M) pair, got ", v.dump());
  const int64_t e = get_int64(v[0], key), m = get_int64(v[1], key);
  static const std::vector<std::pair<int64_t, int64_t>> supported = {
      {4, 3}, {5, 2}, {2, 1}, {3, 2}, {2, 3}, {1, 2}, {8, 0}};
  static const std::vector<std::pair<int64_t, int64_t>> accepted_not_run = {{0, 3}, {3, 0}};
  const auto em = std::make_pair(e, m);
  MOPT_CHECK_IMPLEMENTED(
      std::find(accepted_not_run.begin(), accepted_not_run.end(), em) == accepted_not_run.end(),
      "'", key, "' = (", e, ", ", m, ") has no minifloat kernel in mopt (formats without "
      "exponent or mantissa bits); use (4, 3), (5, 2), (2, 1), (3, 2), (2, 3) or (1, 2)");
  MOPT_CHECK_VALUE(std::find(supported.begin(), supported.end(), em) != supported.end(), "'", key,
                   "' = (", e, ", ", m, ") is not a supported format; use (4, 3) or (5, 2) for "
                   "FP8, (3, 2) or (2, 3) for FP6, (2, 1) for FP4, (8, 0) for E8M0 scales");
  return NumBits::minifloat(static_cast<int>(e), static_cast<int>(m));
}

json num_bits_json(const NumBits& n) {
  if (n.is_float) return json::array({n.exponent, n.mantissa});
  return json(n.bits);
}

std::vector<BlockAxis> parse_block_axes(const json& obj, const char* key, bool allow_special) {
  std::vector<BlockAxis> axes;
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    const std::string& k = it.key();
    if (allow_special && std::find(std::begin(kBlockSpecialKeys), std::end(kBlockSpecialKeys), k) !=
                             std::end(kBlockSpecialKeys)) {
      continue;
    }
    int64_t axis = 0;
    size_t used = 0;
    try {
      axis = std::stoll(k, &used);
    } catch (...) {
      used = 0;
    }
    MOPT_CHECK_VALUE(used == k.size() && !k.empty(), "unknown key '", k, "' in ", key,
                     "; expected an integer axis or one of type, scale_bits, scale_block_sizes, gguf");
    const json& v = it.value();
    if (v.is_null()) {
      axes.emplace_back(axis, std::nullopt);
    } else {
      MOPT_CHECK_VALUE(v.is_number_integer() && get_int64(v, key) > 0, key, "[", k,
                       "] must be a positive block size or None, got ", v.dump());
      axes.emplace_back(axis, v.get<int64_t>());
    }
  }
  return axes;
}

json block_axes_json(const std::vector<BlockAxis>& axes, json obj) {
  for (const auto& [axis, size] : axes) {
    obj[std::to_string(axis)] = size ? json(*size) : json(nullptr);
  }
  return obj;
}

BlockSizes parse_block_sizes(const json& v) {
  MOPT_CHECK_VALUE(v.is_object(), "'block_sizes' must be a dict or None, got ", v.dump());
  BlockSizes b;
  b.axes = parse_block_axes(v, "block_sizes", true);
  if (v.contains("type")) b.type = get_choice(v["type"], "block_sizes.type", {"static", "dynamic"});
  if (v.contains("scale_bits") && !v["scale_bits"].is_null()) {
    b.scale_bits = parse_num_bits(v["scale_bits"], "block_sizes.scale_bits");
  }
  if (v.contains("scale_block_sizes") && !v["scale_block_sizes"].is_null()) {
    MOPT_CHECK_VALUE(v["scale_block_sizes"].is_object(),
                     "'block_sizes.scale_block_sizes' must be a dict, got ",
                     v["scale_block_sizes"].dump());
    b.scale_block_sizes = parse_block_axes(v["scale_block_sizes"], "scale_block_sizes", false);
  }
  if (v.contains("gguf") && !v["gguf"].is_null()) {
    b.gguf = get_choice(v["gguf"], "block_sizes.gguf", {"q8_0", "q4_0", "q4_k"});
  }
  MOPT_CHECK_VALUE(!b.axes.empty(), "'block_sizes' names no axis: ", v.dump());
  MOPT_CHECK_VALUE(!b.dynamic() || b.axes.size() == 1,
                   "dynamic block quantization supports exactly one blocked axis, got ",
                   b.axes.size());
  return b;
}

std::vector<int64_t> parse_axis(const json& v) {
  if (v.is_number_integer()) return {get_int64(v, "axis")};
  MOPT_CHECK_VALUE(v.is_array(), "'axis' must be None, an int or a tuple of ints, got ", v.dump());
  std::vector<int64_t> axes;
  for (const auto& a : v) {
    MOPT_CHECK_VALUE(a.is_number_integer(), "'axis' must contain ints, got ", v.dump());
    axes.push_back(get_int64(a, "axis"));
  }
  return axes;
}

void apply_keys(QuantizerAttributeConfig& c, const json& j) {
  MOPT_CHECK_VALUE(j.is_object(), "a quantizer attribute config must be a dict, got ", j.dump());
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    const json& v = it.value();
    if (k == "enable") c.enable = get_bool(v, "enable");
    else if (k == "num_bits") c.num_bits = parse_num_bits(v, "num_bits");
    else if (k == "axis") c.axis = v.is_null() ? std::nullopt : std::optional(parse_axis(v));
    else if (k == "fake_quant") c.fake_quant = get_bool(v, "fake_quant");
    else if (k == "unsigned") c.is_unsigned = get_bool(v, "unsigned");
    else if (k == "narrow_range") c.narrow_range = get_bool(v, "narrow_range");
    else if (k == "full_range") c.full_range = get_bool(v, "full_range");
    else if (k == "asymmetric") c.asymmetric = get_bool(v, "asymmetric");
    else if (k == "type") c.type = get_choice(v, "type", {"static", "dynamic"});
    else if (k == "block_sizes")
      c.block_sizes = v.is_null() ? std::nullopt : std::optional(parse_block_sizes(v));
    else if (k == "calibrator") {
      // "custom" marks a Python calibrator class (Python writes it; users write a tuple)
      MOPT_CHECK_VALUE(v.is_string() && (v == "max" || v == "histogram" || v == "custom"),
                       "quantizer attribute 'calibrator' must be \"max\", \"histogram\" or (from "
                       "Python) a (cls, args, kwargs) tuple, got ", v.dump());
      c.calibrator = v.get<std::string>();
    }
    else if (k == "pass_through_bwd") c.pass_through_bwd = get_bool(v, "pass_through_bwd");
    else if (k == "trt_high_precision_dtype")
      c.trt_high_precision_dtype =
          get_choice(v, "trt_high_precision_dtype", {"Float", "Half", "BFloat16"});
    else if (k == "rotate") c.rotate = get_bool(v, "rotate");
    else if (k == "learn_amax") c.learn_amax = get_bool(v, "learn_amax");
    else if (k == "bias") {
      MOPT_CHECK_IMPLEMENTED(v.is_null(), "quantizer attribute 'bias' (affine offset) is not "
                             "implemented in mopt; only bias=None is accepted, got ", v.dump());
    } else {
      MOPT_CHECK_VALUE(false, "unknown quantizer attribute '", k, "'; valid attributes are: ",
                       join(quantizer_attribute_keys()));
    }
  }
}

void validate(const QuantizerAttributeConfig& c) {
  MOPT_CHECK_VALUE(!(c.axis.has_value() && c.block_sizes.has_value()),
                   "'axis' and 'block_sizes' cannot both be set; use axis for per-channel "
                   "scales or block_sizes for blocks");
  MOPT_CHECK_VALUE(!c.learn_amax, "'learn_amax' must be False (it is reserved); learned "
                   "scales are the calibration algorithm {'method': 'lsq'}");
  MOPT_CHECK_IMPLEMENTED(!c.rotate, "'rotate' (Hadamard rotation before quantization) is not "
                         "implemented in mopt");
  MOPT_CHECK_IMPLEMENTED(c.fake_quant, "'fake_quant': False (real quantized storage) is not "
                         "implemented by the quantizer; quantize with fake_quant and export");
  if (c.full_range) {
    MOPT_CHECK_VALUE(!c.num_bits.is_float, "'full_range' applies to integer formats only, "
                     "num_bits is (", c.num_bits.exponent, ", ", c.num_bits.mantissa, ")");
    MOPT_CHECK_VALUE(!c.is_unsigned, "'full_range' applies to signed integers; an unsigned "
                     "format already uses every code");
    MOPT_CHECK_VALUE(!c.narrow_range, "'full_range' and 'narrow_range' contradict each other "
                     "(full_range uses the most negative code, narrow_range drops it)");
  }
  if (c.asymmetric) {
    MOPT_CHECK_VALUE(!c.num_bits.is_float, "'asymmetric' (integer zero points) applies to "
                     "integer formats only, num_bits is (", c.num_bits.exponent, ", ",
                     c.num_bits.mantissa, ")");
    MOPT_CHECK_VALUE(!c.is_unsigned, "'asymmetric' formats are signed codes with a zero point; "
                     "drop 'unsigned' (the zero point already shifts the range)");
    MOPT_CHECK_VALUE(!c.narrow_range, "'asymmetric' uses every code; drop 'narrow_range'");
    MOPT_CHECK_IMPLEMENTED(c.calibrator == "max", "'asymmetric' quantizers calibrate with "
                           "\"max\" (min/max) only; calibrator \"", c.calibrator,
                           "\" has no zero-point rule in mopt");
  }
  MOPT_CHECK_VALUE(!(c.is_unsigned && c.num_bits.is_float),
                   "'unsigned' applies to integer formats only, num_bits is (",
                   c.num_bits.exponent, ", ", c.num_bits.mantissa, ")");
  if (c.num_bits.is_float && c.num_bits.exponent == 8) {
    MOPT_CHECK_VALUE(false, "num_bits (8, 0) is a scale format (E8M0); use it as "
                     "block_sizes.scale_bits");
  }
}

json to_json_obj(const QuantizerAttributeConfig& c) {
  json j;
  j["enable"] = c.enable;
  j["num_bits"] = num_bits_json(c.num_bits);
  j["axis"] = c.axis ? json(*c.axis) : json(nullptr);
  j["fake_quant"] = c.fake_quant;
  j["unsigned"] = c.is_unsigned;
  j["narrow_range"] = c.narrow_range;
  j["full_range"] = c.full_range;
  j["asymmetric"] = c.asymmetric;
  j["type"] = c.type;
  if (c.block_sizes) {
    json b = block_axes_json(c.block_sizes->axes, json::object());
    b["type"] = c.block_sizes->type;
    b["scale_bits"] = c.block_sizes->scale_bits ? num_bits_json(*c.block_sizes->scale_bits)
                                                : json(nullptr);
    b["scale_block_sizes"] = c.block_sizes->scale_block_sizes.empty()
                                 ? json(nullptr)
                                 : block_axes_json(c.block_sizes->scale_block_sizes,
                                                   json::object());
    if (!c.block_sizes->gguf.empty()) b["gguf"] = c.block_sizes->gguf;
    j["block_sizes"] = b;
  } else {
    j["block_sizes"] = nullptr;
  }
  j["bias"] = nullptr;
  j["calibrator"] = c.calibrator;
  j["pass_through_bwd"] = c.pass_through_bwd;
  j["trt_high_precision_dtype"] = c.trt_high_precision_dtype;
  j["rotate"] = c.rotate;
  j["learn_amax"] = c.learn_amax;
  return j;
}

json parse_text(const std::string& text) { return core::parse_json(text, "quantizer config"); }

}  // namespace

bool BlockSizes::all_whole_axes() const {
  return std::all_of(axes.begin(), axes.end(), [](const BlockAxis& a) { return !a.second; });
}

const std::vector<std::string>& quantizer_attribute_keys() {
  static const std::vector<std::string> keys = {
      "enable", "num_bits",   "axis",  "fake_quant", "unsigned",
      "narrow_range", "full_range", "asymmetric", "type", "block_sizes", "bias", "calibrator",
      "pass_through_bwd", "trt_high_precision_dtype", "rotate", "learn_amax"};
  return keys;
}

QuantizerAttributeConfig QuantizerAttributeConfig::from_json(const std::string& text) {
  return QuantizerAttributeConfig().updated(text);
}

QuantizerAttributeConfig QuantizerAttributeConfig::updated(const std::string& text) const {
  QuantizerAttributeConfig c = *this;
  apply_keys(c, parse_text(text));
  validate(c);
  return c;
}

std::string QuantizerAttributeConfig::to_json() const { return to_json_obj(*this).dump(); }

const QuantizerAttributeConfig& parse_quantizer_config_cached(const std::string& text) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<QuantizerAttributeConfig>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(text);
  if (it != cache.end()) return *it->second;
  auto parsed = std::make_unique<QuantizerAttributeConfig>(QuantizerAttributeConfig::from_json(text));
  return *cache.emplace(text, std::move(parsed)).first->second;
}

}  // namespace mopt
