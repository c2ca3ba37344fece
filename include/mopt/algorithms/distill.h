// Distillation losses on at::Tensor (quantization-aware distillation, QAD): the logit KL
// divergence of Hinton et al. 2015 as nvidia-modelopt's LogitsDistillationLoss computes it, and
// a hidden-state mean squared error. Each calls the torch.ops.mopt operator of the same name
// through the dispatcher; the ops are CompositeImplicitAutograd (built from ATen ops), so they
// run on every device, under autograd and torch.compile, from C++ and Python alike.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace mopt::distill {

/// KL(softmax(teacher / T) || softmax(student / T)) * T^2 over the last (vocabulary) dimension,
/// computed in fp32 (float64 stays float64); the teacher gets no gradient. reduction: "none"
/// (one value per token: shape of the logits without the last dimension), "sum", "token_mean"
/// (mean over tokens), "mean" (sum over tokens * vocab, as torch.nn.functional.kl_div and
/// ModelOpt's default), "batchmean" (sum / size(0)). ValueError for different shapes, T <= 0 or
/// not finite, an unknown reduction; TypeError for non-floating logits. The
/// torch.ops.mopt.logits_distillation_loss operator.
at::Tensor logits_distillation_loss(const at::Tensor& student_logits,
                                    const at::Tensor& teacher_logits, double temperature = 1.0,
                                    const std::string& reduction = "mean");

/// Mean over all elements of (student - teacher)^2 in fp32 (float64 stays float64), the teacher
/// without gradient: the hidden-state term of QAD. ValueError for different shapes, TypeError for
/// non-floating inputs. The torch.ops.mopt.hidden_state_distillation_loss operator.
at::Tensor hidden_state_distillation_loss(const at::Tensor& student_hidden,
                                          const at::Tensor& teacher_hidden);

}  // namespace mopt::distill
