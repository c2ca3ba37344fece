#include "mopt/algorithms/layer_solver.h"

#include <optional>
#include <string>
#include <vector>

#include "mopt/core/error.h"

namespace mopt::algorithms {

std::vector<std::optional<std::string>> tied_weight_skip_reasons(
    const std::string& algorithm, const std::vector<std::string>& names,
    const std::vector<at::Tensor>& weights) {
  MOPT_CHECK_VALUE(names.size() == weights.size(), "tied_weight_skip_reasons: ", names.size(),
                   " names for ", weights.size(), " weights");
  const size_t n = names.size();
  std::vector<int64_t> group(n, -1);  // index of the first layer sharing the weight's storage
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < i && group[i] < 0; ++j) {
      if (weights[i].defined() && weights[j].defined() && weights[i].is_alias_of(weights[j])) {
        group[i] = group[j] >= 0 ? group[j] : static_cast<int64_t>(j);
      }
    }
  }
  std::vector<std::optional<std::string>> reasons(n);
  for (size_t i = 0; i < n; ++i) {
    const auto first = group[i] >= 0 ? static_cast<size_t>(group[i]) : i;
    std::vector<std::string> members;
    for (size_t j = 0; j < n; ++j) {
      if (j == first || group[j] == static_cast<int64_t>(first)) members.push_back(names[j]);
    }
    if (members.size() < 2) continue;
    std::string list;
    for (const auto& m : members) list += (list.empty() ? "'" : ", '") + m + "'";
    reasons[i] = algorithm + ": layer '" + names[i] + "' shares its weight with another layer (" +
                 "tied: " + list + "); " + algorithm + " changes each layer's weight, which would " +
                 "change a shared weight once per layer, so it gets max calibration instead";
  }
  return reasons;
}

}  // namespace mopt::algorithms
