// Shape agreement for calibrators combining statistics across processes (internal to libmopt).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "mopt/core/distributed.h"

namespace mopt::calib {

/// The shape the ranks that hold statistics agree on (nullopt when no rank holds any); a rank
/// without statistics passes nullopt. RuntimeError when two ranks hold different shapes.
std::optional<std::vector<int64_t>> agree_on_shape(const ProcessGroup& group,
                                                   const std::optional<std::vector<int64_t>>& mine);

}  // namespace mopt::calib
