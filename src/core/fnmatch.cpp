#include "mopt/core/fnmatch.h"

#include <cstddef>
#include <utility>
#include <vector>

namespace mopt {
namespace {

// Code points of a UTF-8 string; an invalid byte stands for itself, so any byte string matches
// deterministically.
std::u32string decode_utf8(const std::string& s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const auto b = static_cast<unsigned char>(s[i]);
    const size_t len = b < 0x80           ? 1
                       : (b >> 5) == 0x6  ? 2
                       : (b >> 4) == 0xE  ? 3
                       : (b >> 3) == 0x1E ? 4
                                          : 0;
    char32_t cp = len > 1 ? (b & (0xFF >> (len + 1))) : b;
    bool ok = len != 0 && i + len <= s.size();
    for (size_t k = 1; ok && k < len; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      ok = (c & 0xC0) == 0x80;
      cp = (cp << 6) | (c & 0x3F);
    }
    out.push_back(ok ? cp : b);
    i += ok ? len : 1;
  }
  return out;
}

struct CharClass {
  bool negated = false;
  std::vector<std::pair<char32_t, char32_t>> ranges;  // inclusive; single chars are [c, c]

  bool contains(char32_t c) const {
    bool in = false;
    for (const auto& [lo, hi] : ranges) in = in || (lo <= c && c <= hi);
    return in != negated;
  }
};

struct Token {
  enum Kind { kLiteral, kAny, kClass, kStar };

  explicit Token(Kind k, char32_t c = 0) : kind(k), literal(c) {}

  Kind kind;
  char32_t literal;
  CharClass cls;

  bool matches(char32_t c) const {
    switch (kind) {
      case kLiteral: return c == literal;
      case kAny: return true;
      case kClass: return cls.contains(c);
      case kStar: break;
    }
    return false;
  }
};

// Tokenizes like fnmatch.translate: consecutive stars collapse; `[` opens a class only when a
// closing `]` follows (a `]` right after `[` or `[!` is a member); inside a class `a-b` is a
// range (empty when a > b), and a `-` first, last or right after a range is a member.
std::vector<Token> compile(const std::u32string& p) {
  std::vector<Token> tokens;
  const size_t n = p.size();
  size_t i = 0;
  while (i < n) {
    const char32_t c = p[i++];
    if (c == U'*') {
      if (tokens.empty() || tokens.back().kind != Token::kStar) tokens.emplace_back(Token::kStar);
    } else if (c == U'?') {
      tokens.emplace_back(Token::kAny);
    } else if (c == U'[') {
      size_t j = i;
      if (j < n && p[j] == U'!') ++j;
      if (j < n && p[j] == U']') ++j;
      while (j < n && p[j] != U']') ++j;
      if (j >= n) {
        tokens.emplace_back(Token::kLiteral, U'[');
        continue;
      }
      Token t(Token::kClass);
      size_t k = i;
      if (p[k] == U'!') {
        t.cls.negated = true;
        ++k;
      }
      while (k < j) {
        if (k + 2 < j && p[k + 1] == U'-') {
          if (p[k] <= p[k + 2]) t.cls.ranges.emplace_back(p[k], p[k + 2]);
          k += 3;
        } else {
          t.cls.ranges.emplace_back(p[k], p[k]);
          ++k;
        }
      }
      tokens.push_back(std::move(t));
      i = j + 1;
    } else {
      tokens.emplace_back(Token::kLiteral, c);
    }
  }
  return tokens;
}

}  // namespace

bool fnmatch(const std::string& name, const std::string& pattern) {
  const std::u32string s = decode_utf8(name);
  const std::vector<Token> tokens = compile(decode_utf8(pattern));
  // Greedy matching with one backtrack point: every non-star token consumes exactly one
  // character, so resuming after the last star is enough.
  size_t si = 0, ti = 0;
  size_t star_ti = std::string::npos, star_si = 0;
  while (si < s.size()) {
    if (ti < tokens.size() && tokens[ti].kind == Token::kStar) {
      star_ti = ti++;
      star_si = si;
    } else if (ti < tokens.size() && tokens[ti].matches(s[si])) {
      ++ti;
      ++si;
    } else if (star_ti != std::string::npos) {
      ti = star_ti + 1;
      si = ++star_si;
    } else {
      return false;
    }
  }
  while (ti < tokens.size() && tokens[ti].kind == Token::kStar) ++ti;
  return ti == tokens.size();
}

}  // namespace mopt
