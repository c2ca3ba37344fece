"""`mopt.ptq.qat.train_quantized`: the distillation loss mixes with the next-token loss by
`kd_loss_weight`, and `mopt qat`'s default training windows follow the evaluation window."""

import copy
import json

import pytest
import torch
from mopt import cli
from mopt import data as mdata
from mopt.models import llama2c
from mopt.ptq.qat import train_quantized


@pytest.fixture(scope="module")
def model_and_ids():
    model = llama2c.load_llama2c()
    tokenizer = llama2c.Llama2cTokenizer.from_file()
    ids = torch.tensor(tokenizer.encode(mdata.default_train_text()[:4000]))
    return model, ids


def params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_weight_zero_is_next_token_training(model_and_ids):
    base, ids = model_and_ids
    plain, mixed = copy.deepcopy(base), copy.deepcopy(base)
    ce, kd = train_quantized(plain, ids, 3, 1e-3, batch_size=2, seq_len=32, progress=False)
    ce2, kd2 = train_quantized(mixed, ids, 3, 1e-3, batch_size=2, seq_len=32, progress=False,
                               teacher=base, kd_loss_weight=0.0)
    assert kd == [] and len(kd2) == 3 and kd2[0] == 0.0  # the student starts as the teacher
    assert ce2 == ce
    for name, value in params(plain).items():
        assert torch.equal(value, params(mixed)[name]), name


def test_weight_one_is_distillation_alone(model_and_ids):
    # One AdamW step from fresh moments moves each parameter by lr * g / (|g| + eps); with
    # kd_loss_weight 1, g must be the gradient of the logit KL alone, computed here directly on
    # the window train_quantized draws first (its seeded generator).
    import mopt.distill as mtd

    base, ids = model_and_ids
    torch.manual_seed(0)
    student = copy.deepcopy(base)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    trained = copy.deepcopy(student)
    lr, seq_len = 1e-3, 32
    train_quantized(trained, ids, 1, lr, batch_size=2, seq_len=seq_len, progress=False,
                    teacher=base, kd_loss_weight=1.0)

    gen = torch.Generator().manual_seed(0)
    starts = torch.randint(0, ids.numel() - seq_len - 1, (2,), generator=gen).tolist()
    inputs = torch.stack([ids[s : s + seq_len] for s in starts])
    student.train()
    with torch.no_grad():
        teacher_logits = base(inputs, use_cache=False).logits
    kd = mtd.LogitsDistillationLoss(temperature=1.0, reduction="token_mean")(
        student(inputs, use_cache=False).logits, teacher_logits)
    kd.backward()
    after = params(trained)
    for name, p in student.named_parameters():
        expected = p.detach() - lr * p.grad / (p.grad.abs() + 1e-8)
        assert torch.allclose(after[name], expected, atol=2e-6, rtol=0), name


@pytest.mark.parametrize("weight", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_bad_weight_is_refused_before_training(model_and_ids, weight):
    base, ids = model_and_ids
    model = copy.deepcopy(base)
    with pytest.raises(ValueError, match="kd_loss_weight must be a number in"):
        train_quantized(model, ids, 1, 1e-3, batch_size=2, seq_len=32, progress=False,
                        teacher=base, kd_loss_weight=weight)
    assert all(torch.equal(v, params(base)[k]) for k, v in params(model).items())


def test_default_windows_follow_the_evaluation_window(capsys, tmp_path):
    (tmp_path / "eval.txt").write_text(mdata.default_eval_text()[:3000])
    out_dir = tmp_path / "out"
    rc = cli.main(["qat", "--seq-len", "128", "--calib-samples", "4", "--no-progress",
                   "--steps", "1", "--no-qad", "--no-plot", "--eval-text",
                   str(tmp_path / "eval.txt"), "--out", str(out_dir)])
    assert rc == 0, capsys.readouterr().err
    setup = json.loads((out_dir / "results.json").read_text())["setup"]
    assert setup["train_seq_len"] == 128 and setup["train_batch_size"] == 1024 // 128
    assert setup["kd_loss_weight"] == 0.5
