// torch.ops.mopt distillation losses (logits_distillation_loss, hidden_state_distillation_loss):
// schemas and CompositeImplicitAutograd implementations from ATen ops, so autograd, Meta and
// every device come from the ops they are built of; and the C++ entry points.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/div.h>
#include <ATen/ops/kl_div.h>
#include <ATen/core/Reduction.h>
#include <ATen/ops/log_softmax.h>
#include <torch/library.h>

#include <cmath>
#include <string>

#include "mopt/algorithms/distill.h"
#include "mopt/core/error.h"

namespace mopt {
namespace ops {

namespace {

// Half and bfloat16 logits are widened: the KL of two nearly equal distributions is a small
// difference of large terms.
at::Tensor widened(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? x : x.to(at::kFloat);
}

void check_pair(const at::Tensor& student, const at::Tensor& teacher, const char* what) {
  MOPT_CHECK_TYPE(at::isFloatingType(student.scalar_type()), what,
                  ": student needs floating values, got ", student.scalar_type());
  MOPT_CHECK_TYPE(at::isFloatingType(teacher.scalar_type()), what,
                  ": teacher needs floating values, got ", teacher.scalar_type());
  MOPT_CHECK_VALUE(student.sym_sizes() == teacher.sym_sizes(), what,
                   ": student and teacher need the same shape, got ", student.sym_sizes(),
                   " and ", teacher.sym_sizes());
  MOPT_CHECK_VALUE(student.device() == teacher.device(), what,
                   ": student and teacher need the same device, got ", student.device(), " and ",
                   teacher.device());
}

at::Tensor logits_distillation_loss_impl(const at::Tensor& student, const at::Tensor& teacher,
                                         double temperature, c10::string_view reduction) {
  check_pair(student, teacher, "logits_distillation_loss");
  MOPT_CHECK_VALUE(student.dim() >= 1 && student.sym_size(-1) > 0,
                   "logits_distillation_loss: logits need a non-empty last (vocabulary) "
                   "dimension, got shape ",
                   student.sym_sizes());
  MOPT_CHECK_VALUE(std::isfinite(temperature) && temperature > 0,
                   "logits_distillation_loss: temperature must be finite and > 0, got ",
                   temperature);
  const bool known = reduction == "none" || reduction == "sum" || reduction == "mean" ||
                     reduction == "token_mean" || reduction == "batchmean";
  MOPT_CHECK_VALUE(known, "logits_distillation_loss: reduction must be one of none, sum, mean, ",
                   "token_mean, batchmean, got '", std::string(reduction), "'");
  at::Tensor s = widened(student);
  at::Tensor t = widened(teacher.detach()).to(s.scalar_type());
  if (temperature != 1.0) {
    s = s / temperature;
    t = t / temperature;
  }
  const at::Tensor log_p_s = at::log_softmax(s, -1);
  const at::Tensor log_p_t = at::log_softmax(t, -1);
  // p_t (log p_t - log p_s) with the teacher as log probabilities: one fused ATen kernel with
  // its own backward, reducing as it goes; a teacher probability that underflows to 0
  // contributes 0 because log p_t stays finite.
  const double t2 = temperature * temperature;
  if (reduction == "none") {
    return at::kl_div(log_p_s, log_p_t, at::Reduction::None, /*log_target=*/true).sum(-1) * t2;
  }
  if (reduction == "mean") {  // kl_div's elementwise mean (tokens * vocabulary)
    return at::kl_div(log_p_s, log_p_t, at::Reduction::Mean, /*log_target=*/true) * t2;
  }
  const at::Tensor sum = at::kl_div(log_p_s, log_p_t, at::Reduction::Sum, /*log_target=*/true);
  if (reduction == "sum") return sum * t2;
  // "batchmean": sum / size(0), as kl_div; "token_mean": sum / tokens
  const c10::SymInt count = reduction == "batchmean"
                                ? student.sym_size(0)
                                : student.sym_numel() / student.sym_size(-1);
  return at::div(sum * t2, c10::Scalar(count));
}

at::Tensor hidden_state_distillation_loss_impl(const at::Tensor& student,
                                               const at::Tensor& teacher) {
  check_pair(student, teacher, "hidden_state_distillation_loss");
  const at::Tensor s = widened(student);
  const at::Tensor t = widened(teacher.detach()).to(s.scalar_type());
  return (s - t).square().mean();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mopt, m) {
  m.def(
      "logits_distillation_loss(Tensor student_logits, Tensor teacher_logits, "
      "float temperature=1.0, str reduction=\"mean\") -> Tensor");
  m.def("hidden_state_distillation_loss(Tensor student_hidden, Tensor teacher_hidden) -> Tensor");
}

TORCH_LIBRARY_IMPL(mopt, CompositeImplicitAutograd, m) {
  m.impl("logits_distillation_loss", &logits_distillation_loss_impl);
  m.impl("hidden_state_distillation_loss", &hidden_state_distillation_loss_impl);
}

}  // namespace ops

namespace distill {

at::Tensor logits_distillation_loss(const at::Tensor& student_logits,
                                    const at::Tensor& teacher_logits, double temperature,
                                    const std::string& reduction) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mopt::logits_distillation_loss", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double,
                                         c10::string_view)>();
  return op.call(student_logits, teacher_logits, temperature, reduction);
}

at::Tensor hidden_state_distillation_loss(const at::Tensor& student_hidden,
                                          const at::Tensor& teacher_hidden) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mopt::hidden_state_distillation_loss", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(student_hidden, teacher_hidden);
}

}  // namespace distill
}  // namespace mopt
