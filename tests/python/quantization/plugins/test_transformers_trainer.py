"""QATTrainer / QADTrainer on the real stories260K (LlamaForCausalLM) with a few Trainer steps on
the shipped TinyStories training text: training moves the weights and lowers the loss, quantizers
stay enabled and calibrated, a checkpoint resumes into the same quantized model (learned scales
included), gradient accumulation and evaluate() work, and bad input is refused by name."""

import copy
import functools
import os

import pytest
import torch

pytest.importorskip("transformers")
from transformers import TrainingArguments  # noqa: E402

import mopt.quantization as mtq  # noqa: E402
from mopt.data import default_train_text  # noqa: E402
from mopt.models.llama2c import load_llama2c  # noqa: E402
from mopt.quantization.plugins.transformers_trainer import (  # noqa: E402
    QADTrainer,
    QATTrainer,
    QuantizationArguments,
    uncalibrated_quantizers,
)
from mopt.quantization.utils import named_quantizers  # noqa: E402

from .._stories import tokenizer  # noqa: E402

SEQ = 64


@functools.lru_cache(maxsize=1)
def _windows() -> torch.Tensor:
    ids = torch.tensor(tokenizer().encode(default_train_text()[:12_000]))
    n = ids.numel() // SEQ
    return ids[: n * SEQ].reshape(n, SEQ)


def dataset(start: int, count: int) -> list[dict]:
    w = _windows()[start : start + count]
    return [{"input_ids": row.clone(), "labels": row.clone()} for row in w]


def args(tmp_path, **kw) -> TrainingArguments:
    base = dict(output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=4,
                per_device_eval_batch_size=4, learning_rate=2e-3, lr_scheduler_type="constant",
                use_cpu=True, report_to=[], logging_steps=1, save_strategy="no",
                disable_tqdm=True, seed=0, dataloader_num_workers=0)
    base.update(kw)
    return TrainingArguments(**base)


def lsq_int4_b32() -> dict:
    config = copy.deepcopy(mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG)
    config["quant_cfg"]["*weight_quantizer"]["block_sizes"] = {-1: 32}
    config["algorithm"] = {"method": "lsq", "scale_algorithm": {"method": "max"}}
    return config


def losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_qat_trainer_calibrates_trains_and_evaluates(tmp_path):
    torch.manual_seed(0)
    model = load_llama2c()
    before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    trainer = QATTrainer(model=model, args=args(tmp_path, learning_rate=1e-3),
                         train_dataset=dataset(0, 20), eval_dataset=dataset(0, 20),
                         quant_args=QuantizationArguments(recipe="int8", calib_size=8))
    assert not mtq.is_quantized(model)  # quantized when training or evaluation starts
    first = trainer.evaluate()["eval_loss"]  # the quantized model on the 20 training windows
    q_proj = model.model.layers[0].self_attn.q_proj
    amax = q_proj.input_quantizer.amax.detach().clone()  # calibrated on the train data
    trainer.train()  # one epoch over the 20 windows
    assert q_proj.input_quantizer.is_enabled and q_proj.weight_quantizer.is_enabled
    assert torch.equal(amax, q_proj.input_quantizer.amax)  # frozen scales by default
    assert uncalibrated_quantizers(model) == [] and len(dict(named_quantizers(model))) > 0
    assert not torch.equal(before, q_proj.weight.detach())
    assert len(losses(trainer)) == 5
    assert trainer.evaluate()["eval_loss"] < first
    assert os.path.isfile(tmp_path / "modelopt_state_train.safetensors")


def test_checkpoint_resume_restores_learned_scales(tmp_path):
    torch.manual_seed(0)
    model = load_llama2c()
    trainer = QATTrainer(model=model, args=args(tmp_path, max_steps=4, save_strategy="steps",
                                                save_steps=2),
                         train_dataset=dataset(0, 40), quant_cfg=lsq_int4_b32())
    trainer.train()
    q = model.model.layers[0].mlp.down_proj.weight_quantizer
    assert q.learnable_amax == ["post"]
    trained_amax = q.amax.detach().clone()
    probe = _windows()[45:47]
    with torch.no_grad():
        want = model(probe).logits
    assert (tmp_path / "checkpoint-2").is_dir()

    # a fresh model resumed from step 2 trains steps 3 and 4 into the same model: weights,
    # learned scales and optimizer state (the amax parameters' moments included) all came back
    fresh = load_llama2c()
    resumed = QATTrainer(model=fresh, args=args(tmp_path, max_steps=4), quant_cfg=lsq_int4_b32(),
                         train_dataset=dataset(0, 40))
    assert mtq.is_quantized(fresh)  # restored from output_dir, not calibrated again
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert resumed.state.global_step == 4
    rq = fresh.model.layers[0].mlp.down_proj.weight_quantizer
    assert rq.learnable_amax == ["post"] and rq.is_enabled
    torch.testing.assert_close(rq.amax, trained_amax, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(fresh(probe).logits, want, rtol=1e-4, atol=1e-5)


def test_learned_scales_train_with_the_weights(tmp_path):
    torch.manual_seed(0)
    model = load_llama2c()
    trainer = QATTrainer(model=model, args=args(tmp_path, max_steps=2),
                         train_dataset=dataset(0, 40), quant_cfg=lsq_int4_b32())
    trainer._prepare_quantized()
    q = model.model.layers[0].mlp.down_proj.weight_quantizer
    start = q.amax.detach().clone()
    trainer.train()
    assert not torch.equal(start, q.amax.detach())  # the optimizer got the amax parameters


def test_gradient_accumulation(tmp_path):
    torch.manual_seed(0)
    model = load_llama2c()
    trainer = QATTrainer(model=model, args=args(tmp_path, max_steps=3,
                                                gradient_accumulation_steps=2),
                         train_dataset=dataset(0, 40), quant_cfg="int4_b32")
    trainer.train()
    assert trainer.state.global_step == 3
    assert all(torch.isfinite(torch.tensor(v)) for v in losses(trainer))


def test_qad_trainer_distills_from_the_float_teacher(tmp_path):
    torch.manual_seed(0)
    teacher = load_llama2c()
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = load_llama2c()
    trainer = QADTrainer(model=student, args=args(tmp_path, max_steps=3, learning_rate=5e-4,
                                                  gradient_accumulation_steps=2),
                         train_dataset=dataset(0, 24), eval_dataset=dataset(0, 24),
                         quant_cfg="int4_b32",
                         distill_args={"teacher_model": teacher, "criterion": "logits_loss"})
    eval_before = trainer.evaluate()["eval_loss"]
    trainer.train()
    eval_after = trainer.evaluate()["eval_loss"]
    assert eval_before > 0 and eval_after < eval_before  # the KD loss on the 24 windows
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    assert all(p.grad is None for p in teacher.parameters())

    # the logged loss of step 1 is the mean of its two micro-batches' KL (8 of the 24 windows
    # eval_before averages over), not their sum
    assert 0.5 * eval_before < losses(trainer)[0] < 1.5 * eval_before


def test_bad_input_is_refused_by_name(tmp_path):
    model = load_llama2c()
    with pytest.raises(ValueError, match="neither a train_dataset nor an eval_dataset"):
        QATTrainer(model=model, args=args(tmp_path), quant_cfg="int8")
    assert not mtq.is_quantized(model)
    with pytest.raises(ValueError, match="unknown config name"):
        QATTrainer(model=model, args=args(tmp_path), quant_cfg="int3_magic",
                   train_dataset=dataset(0, 8))
    with pytest.raises(ValueError, match="ModelOpt recipe file"):
        QATTrainer(model=model, args=args(tmp_path),
                   quant_args=QuantizationArguments(recipe="general/ptq/nvfp4.yaml"))
    with pytest.raises(TypeError, match="teacher_model must be a loaded nn.Module"):
        QADTrainer(model=model, args=args(tmp_path), distill_args={"teacher_model": "gpt2"})
    assert not mtq.is_quantized(model)

    # a model quantized without calibration data: the activation quantizers have no amax
    mtq.quantize(model, mtq.INT8_DEFAULT_CFG, None)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = QATTrainer(model=model, args=args(tmp_path), train_dataset=dataset(0, 8))
    with pytest.raises(RuntimeError, match=r"no calibrated amax: model\.layers\.0\.self_attn\."
                                           r"q_proj\.input_quantizer"):
        trainer.train()
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k


def test_save_model_reloads_with_huggingface_checkpointing(tmp_path):
    from transformers import LlamaForCausalLM

    import mopt.opt as mto
    from mopt.opt.plugins.huggingface import disable_huggingface_checkpointing

    torch.manual_seed(0)
    model = load_llama2c()
    trainer = QATTrainer(model=model, args=args(tmp_path, max_steps=2),
                         train_dataset=dataset(0, 16), quant_cfg="int4_b32")
    trainer.train()
    mto.enable_huggingface_checkpointing()
    try:
        trainer.save_model(str(tmp_path / "final"))
        back = LlamaForCausalLM.from_pretrained(str(tmp_path / "final"))
    finally:
        disable_huggingface_checkpointing()
    assert (tmp_path / "final" / "modelopt_state.json").is_file()
    assert mtq.is_quantized(back)
    probe = _windows()[45:47]
    with torch.no_grad():
        torch.testing.assert_close(back(probe).logits, model(probe).logits, rtol=0, atol=0)
