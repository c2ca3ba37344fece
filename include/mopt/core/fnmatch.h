// Shell-style wildcard matching with the semantics of Python's fnmatch.fnmatchcase, so a
// quant_cfg pattern selects the same quantizers from C++ as from Python.
#pragma once

#include <string>

namespace mopt {

/// True when `name` matches `pattern`: `*` any run (dots included), `?` one character,
/// `[seq]` / `[!seq]` a character class with ranges (`[a-z]`); an unclosed `[` is literal and
/// nothing is an escape. Case sensitive; both strings are UTF-8 and compared by code point.
bool fnmatch(const std::string& name, const std::string& pattern);

}  // namespace mopt
