// Calibration across processes: a data-parallel group created by torch.distributed (Python) or
// c10d (C++) and reached through torch's functional collectives, so every rank ends calibration
// with identical statistics without a transport of mopt's own. While a CalibrationGroupScope is
// alive, calibrators and layer solvers reduce what they collected over its group.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <optional>
#include <string>

namespace mopt {

/// How all_reduce combines the ranks' tensors.
enum class ReduceOp { kSum, kMax };

/// A process group registered with torch under `name` (torch.distributed's group_name; "0" is
/// the default group after init_process_group), with this process's rank and the group's size.
struct ProcessGroup {
  std::string name;
  int64_t rank = 0;
  int64_t size = 1;
  /// Where the backend reduces: CPU for gloo, the rank's GPU for NCCL. Tensors are moved there
  /// for the collective and the result moved back to the caller's device.
  c10::Device device = c10::Device(c10::kCPU);

  /// The element-wise reduction of `t` over every rank (a new tensor; `t` is unchanged). Every
  /// rank must call it with a tensor of the same shape and dtype, in the same order.
  at::Tensor all_reduce(const at::Tensor& t, ReduceOp op) const;
  /// `t` from rank 0 on every rank (same shape and dtype everywhere).
  at::Tensor broadcast_from_rank0(const at::Tensor& t) const;
};

/// The group calibration reduces over, or nullopt (one process).
const std::optional<ProcessGroup>& calibration_group();

/// Makes `group` the calibration group until the scope ends (restoring the previous one).
class CalibrationGroupScope {
 public:
  explicit CalibrationGroupScope(std::optional<ProcessGroup> group);
  ~CalibrationGroupScope();
  CalibrationGroupScope(const CalibrationGroupScope&) = delete;
  CalibrationGroupScope& operator=(const CalibrationGroupScope&) = delete;

 private:
  std::optional<ProcessGroup> previous_;
};

}  // namespace mopt
