"""mopt.distill: the C++ distillation losses against a float64 formula written here and against
nvidia-modelopt's LogitsDistillationLoss, opcheck, gradients, the no-grad teacher, bad input."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import mopt.distill as mtd


def reference(s, t, temperature):
    """Per-token KL(softmax(t/T) || softmax(s/T)) * T^2 in float64, softmax written out."""
    s = s.double() / temperature
    t = t.double() / temperature
    qs = torch.exp(s - s.max(-1, keepdim=True).values)
    qs = qs / qs.sum(-1, keepdim=True)
    qt = torch.exp(t - t.max(-1, keepdim=True).values)
    qt = qt / qt.sum(-1, keepdim=True)
    return (qt * (qt.log() - qs.log())).sum(-1) * temperature**2


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_logits_loss_matches_float64_formula(temperature, dtype):
    g = torch.Generator().manual_seed(0)
    s = (torch.randn(2, 6, 40, generator=g) * 3).to(dtype)
    t = (s.float() + torch.randn(2, 6, 40, generator=g)).to(dtype)
    ref = reference(s, t, temperature)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for reduction, want in [("none", ref), ("sum", ref.sum()), ("token_mean", ref.mean()),
                            ("batchmean", ref.sum() / 2), ("mean", ref.sum() / (12 * 40))]:
        got = mtd.LogitsDistillationLoss(temperature, reduction)(s, t)
        assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


_MODELOPT_LOSSES = """
import sys, torch
from modelopt.torch.distill.losses import LogitsDistillationLoss
s, t = torch.load(sys.argv[1], weights_only=True)
torch.save({r: LogitsDistillationLoss(2.0, r)(s, t) for r in ["mean", "sum", "batchmean", "none"]},
           sys.argv[2])
"""


def test_matches_modelopt_loss(tmp_path):
    # ModelOpt runs in its own process: importing it here would register its pickle globals
    # in this one (tests/python/opt/test_modelopt_files.py checks that none are)
    if importlib.util.find_spec("modelopt") is None:
        pytest.skip("nvidia-modelopt is not installed")
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(3, 5, 32, generator=g), torch.randn(3, 5, 32, generator=g)
    torch.save((s, t), tmp_path / "in.pt")
    subprocess.run([sys.executable, "-c", _MODELOPT_LOSSES, str(tmp_path / "in.pt"),
                    str(tmp_path / "out.pt")], check=True, timeout=600,
                   env={**os.environ, "PYTHONPATH": ""})
    theirs = torch.load(tmp_path / "out.pt", weights_only=True)
    for reduction in ["mean", "sum", "batchmean", "none"]:
        ours = mtd.LogitsDistillationLoss(2.0, reduction)(s, t)
        torch.testing.assert_close(ours, theirs[reduction], rtol=1e-5, atol=1e-6)


def test_opcheck_and_gradients():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(2, 3, 9, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randn(2, 3, 9, dtype=torch.float64, generator=g)
    torch.library.opcheck(torch.ops.mopt.logits_distillation_loss, (s, t, 1.5, "token_mean"))
    torch.library.opcheck(torch.ops.mopt.hidden_state_distillation_loss, (s, t))
    assert torch.autograd.gradcheck(
        lambda x: torch.ops.mopt.logits_distillation_loss(x, t, 1.5, "token_mean"), (s,))
    teacher = t.clone().requires_grad_(True)
    torch.ops.mopt.logits_distillation_loss(s, teacher, 1.0, "sum").backward()
    assert teacher.grad is None and s.grad is not None


def test_hidden_state_loss():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    want = ((s.double() - t.double()) ** 2).sum() / 28
    torch.testing.assert_close(mtd.HiddenStateDistillationLoss()(s, t).double(), want)


def test_teacher_runs_without_grad_and_keeps_its_mode():
    torch.manual_seed(4)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.5), nn.Linear(16, 10)).train()
    student = nn.Linear(8, 10)
    x = torch.randn(5, 8)
    logits = mtd.teacher_logits(teacher, x)
    assert not logits.requires_grad and logits.grad_fn is None
    assert teacher.training  # restored after the eval-mode forward
    torch.testing.assert_close(logits, teacher.eval()(x).detach())  # dropout off: deterministic
    teacher.train()
    loss = mtd.distillation_loss(student(x), teacher, x)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.weight.grad is not None and loss.detach().item() > 0


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        mtd.LogitsDistillationLoss(temperature=0)
    with pytest.raises(ValueError, match="reduction must be one of .* got 'avg'"):
        mtd.LogitsDistillationLoss(reduction="avg")
    with pytest.raises(ValueError, match="student and teacher need the same shape"):
        mtd.LogitsDistillationLoss()(torch.randn(2, 5), torch.randn(2, 6))
    with pytest.raises(TypeError, match="teacher must return a tensor"):
        mtd.teacher_logits(nn.Identity(), "text")
