#include "mopt/core/distributed.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>

#include <mutex>

#include "mopt/core/error.h"

namespace mopt {
namespace {

std::optional<ProcessGroup>& current_group() {
  static std::optional<ProcessGroup> group;
  return group;
}

const c10::OperatorHandle& functional_op(const char* name) {
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  const auto handle = c10::Dispatcher::singleton().findSchema({name, ""});
  MOPT_CHECK_IMPLEMENTED(handle.has_value(), "calibration across processes needs torch's "
                         "functional collectives (", name, "), which this torch build lacks");
  static std::vector<std::pair<std::string, c10::OperatorHandle>> cache;
  for (const auto& [n, h] : cache) {
    if (n == name) return h;
  }
  cache.emplace_back(name, *handle);
  return cache.back().second;
}

}  // namespace

at::Tensor ProcessGroup::all_reduce(const at::Tensor& t, ReduceOp op) const {
  if (size <= 1) return t.clone();
  // group_name is declared `Any` (a name or a group object): pass the name as an IValue
  static const auto reduce =
      functional_op("_c10d_functional::all_reduce")
          .typed<at::Tensor(const at::Tensor&, std::string, const c10::IValue&)>();
  static const auto wait =
      functional_op("_c10d_functional::wait_tensor").typed<at::Tensor(const at::Tensor&)>();
  const at::Tensor out =
      reduce.call(t.to(device).contiguous(), op == ReduceOp::kSum ? "sum" : "max",
                  c10::IValue(name));
  return wait.call(out).to(t.device());
}

at::Tensor ProcessGroup::broadcast_from_rank0(const at::Tensor& t) const {
  if (size <= 1) return t.clone();
  // A sum in which every rank but 0 contributes zeros: rank 0's values, bit for bit.
  return all_reduce(rank == 0 ? t : at::zeros_like(t), ReduceOp::kSum);
}

const std::optional<ProcessGroup>& calibration_group() { return current_group(); }

CalibrationGroupScope::CalibrationGroupScope(std::optional<ProcessGroup> group)
    : previous_(current_group()) {
  if (group) {
    MOPT_CHECK_VALUE(group->size >= 1 && group->rank >= 0 && group->rank < group->size,
                     "process group '", group->name, "': rank ", group->rank,
                     " is outside a group of ", group->size);
  }
  current_group() = std::move(group);
}

CalibrationGroupScope::~CalibrationGroupScope() { current_group() = std::move(previous_); }

}  // namespace mopt
