"""mopt.distill (``import mopt.distill as mtd``): distillation losses for quantization-aware
distillation (QAD), with the names of ``modelopt.torch.distill``.

The numerics are the C++ ops ``torch.ops.mopt.logits_distillation_loss`` and
``torch.ops.mopt.hidden_state_distillation_loss`` (CompositeImplicitAutograd: built from ATen
ops, so they run on every device and under autograd). The teacher runs without gradients through
``teacher_logits`` / ``distillation_loss``, whose teacher outputs live only inside the call.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.loss import _Loss

from .. import _C  # noqa: F401  (registers torch.ops.mopt.*)

__all__ = [
    "HiddenStateDistillationLoss",
    "LogitsDistillationLoss",
    "distillation_loss",
    "teacher_logits",
]

REDUCTIONS = ("none", "sum", "mean", "token_mean", "batchmean")


class LogitsDistillationLoss(_Loss):
    """KL(softmax(teacher / T) || softmax(student / T)) * T^2 over the last dimension (Hinton et
    al. 2015), ModelOpt's ``LogitsDistillationLoss``: ``reduction`` "mean" divides the sum by
    tokens * vocabulary as ``F.kl_div`` (ModelOpt's default), "token_mean" by the tokens,
    "batchmean" by ``size(0)``, "sum" sums, "none" gives one value per token."""

    def __init__(self, temperature: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        if not (isinstance(temperature, (int, float)) and 0 < float(temperature) < float("inf")):
            raise ValueError(f"mopt: temperature must be finite and > 0, got {temperature!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(
                f"mopt: reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        self._temperature = float(temperature)
        self._reduction = reduction

    def forward(self, logits_s: torch.Tensor, logits_t: torch.Tensor) -> torch.Tensor:
        """Loss of student logits `logits_s` against teacher logits `logits_t` (no gradient)."""
        return torch.ops.mopt.logits_distillation_loss(logits_s, logits_t, self._temperature,
                                                       self._reduction)


class HiddenStateDistillationLoss(_Loss):
    """Mean squared error between student and teacher hidden states (the teacher without
    gradient), the optional intermediate term of QAD."""

    def forward(self, hidden_s: torch.Tensor, hidden_t: torch.Tensor) -> torch.Tensor:
        return torch.ops.mopt.hidden_state_distillation_loss(hidden_s, hidden_t)


def _logits(outputs: Any) -> torch.Tensor:
    logits = getattr(outputs, "logits", outputs)
    if isinstance(outputs, dict) and "logits" in outputs:
        logits = outputs["logits"]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            "mopt: the teacher must return a tensor or an output with .logits, got "
            f"{type(outputs).__name__}")
    return logits


def teacher_logits(teacher: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The teacher's logits for these inputs, computed in eval mode under ``torch.no_grad()``
    (no graph is kept); every other output of the teacher is dropped before returning."""
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            return _logits(teacher(*args, **kwargs))
    finally:
        teacher.train(was_training)


def distillation_loss(student_logits: torch.Tensor, teacher: nn.Module, *args: Any,
                      criterion: nn.Module | None = None, **kwargs: Any) -> torch.Tensor:
    """`criterion` (default ``LogitsDistillationLoss(reduction="token_mean")``) of
    `student_logits` against the teacher's logits for the inputs `args` / `kwargs`. The teacher
    runs without gradients and its logits are freed when this returns."""
    criterion = criterion or LogitsDistillationLoss(reduction="token_mean")
    return criterion(student_logits, teacher_logits(teacher, *args, **kwargs))
