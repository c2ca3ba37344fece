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

/// ValueError naming `what` when `text` opens more than kMaxJsonDepth arrays or objects inside
/// each other (brackets inside strings do not count). A linear scan before the parse: the
/// parser's per-event callback, the other way to bound the depth, makes parsing several times
/// slower, and a restore parses every quantizer's state.
inline void check_json_depth(const std::string& text, const char* what) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      MOPT_CHECK_VALUE(++depth <= kMaxJsonDepth, what, " nests deeper than ", kMaxJsonDepth,
                       " levels; no config does");
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
}

/// Parses `text`; ValueError naming `what` for invalid JSON or nesting beyond kMaxJsonDepth.
inline nlohmann::ordered_json parse_json(const std::string& text, const char* what) {
  using json = nlohmann::ordered_json;
  check_json_depth(text, what);
  try {
    return json::parse(text);
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
