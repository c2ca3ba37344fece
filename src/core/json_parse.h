// JSON text -> nlohmann::ordered_json for the config parsers (quantizer attributes, quantize
// config, calibration algorithm), with the errors a user of either API expects.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "mopt/core/error.h"

namespace mopt::core {

/// Deepest nesting a config may have. The deepest real one (a class-scoped entry's
/// scale_block_sizes) is 5 levels; the bound keeps hostile input from recursing without limit
/// when a value is copied, compared or printed in an error message.
constexpr int kMaxJsonDepth = 64;

/// Parses `text`; ValueError naming `what` for invalid JSON or nesting beyond kMaxJsonDepth.
inline nlohmann::ordered_json parse_json(const std::string& text, const char* what) {
  using json = nlohmann::ordered_json;
  const json::parser_callback_t limit_depth = [what](int depth, json::parse_event_t, json&) {
    MOPT_CHECK_VALUE(depth <= kMaxJsonDepth, what, " nests deeper than ", kMaxJsonDepth,
                     " levels; no config does");
    return true;
  };
  try {
    return json::parse(text, limit_depth);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for a number like 1e400
    // nlohmann quotes the bytes it last read, which may be anything: escape them so the message
    // stays valid UTF-8 (Python decodes it).
    std::string message;
    for (const char ch : std::string(e.what())) {
      const auto c = static_cast<unsigned char>(ch);
      if (c >= 0x20 && c < 0x7f) {
        message += ch;
      } else {
        static const char* hex = "0123456789abcdef";
        message += "\\x";
        message += hex[c >> 4];
        message += hex[c & 15];
      }
    }
    MOPT_CHECK_VALUE(false, what, " is not valid JSON: ", message);
  }
  return json();
}

}  // namespace mopt::core
