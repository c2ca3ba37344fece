// The kernels' format enum for a row of the format table (internal to libmopt).
#pragma once

#include "common/format.h"
#include "mopt/quant/formats.h"

namespace mopt {

static_assert(static_cast<int>(FormatFamily::kInt) == static_cast<int>(kernels::Format::kInt) &&
                  static_cast<int>(FormatFamily::kMinifloat) ==
                      static_cast<int>(kernels::Format::kMinifloat) &&
                  static_cast<int>(FormatFamily::kNVFP4) ==
                      static_cast<int>(kernels::Format::kNVFP4) &&
                  static_cast<int>(FormatFamily::kMX) == static_cast<int>(kernels::Format::kMX) &&
                  static_cast<int>(FormatFamily::kNF4) == static_cast<int>(kernels::Format::kNF4) &&
                  static_cast<int>(FormatFamily::kGGUF) == static_cast<int>(kernels::Format::kGGUF),
              "FormatFamily and mopt::kernels::Format list the formats in the same order");

/// The kernel format computing `family`.
inline kernels::Format kernel_format(FormatFamily family) {
  return static_cast<kernels::Format>(family);
}

}  // namespace mopt
