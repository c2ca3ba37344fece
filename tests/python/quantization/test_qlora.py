"""QLoRA: LoRA adapters (peft) over a base packed by mtq.compress (NF4, double quantization) on
the shipped stories260K."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")

import mopt.quantization as mtq  # noqa: E402
from mopt import data as mdata  # noqa: E402
from mopt.models.llama2c import load_llama2c  # noqa: E402
from mopt.ptq.models import resolve_model  # noqa: E402
from mopt.quantization.qlora import merge_adapters, packed_linear  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.tensor(resolve_model("default").encode(mdata.default_eval_text())[:256]).view(
        2, 128)


def _packed_nf4() -> nn.Module:
    model = load_llama2c()
    mtq.quantize(model, mtq.NF4_WEIGHT_ONLY_CFG, None)
    mtq.compress(model)
    return model


def _lora(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                                                      lora_dropout=0.0))


def test_input_gradient_equals_the_float_op_and_no_weight_is_saved():
    model = _packed_nf4()
    lin = model.model.layers[0].mlp.down_proj
    w = lin.packed_weight.dequantize(torch.float32)
    x = torch.randn(3, 5, lin.in_features, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = packed_linear(x, lin, None)
    assert not any(t.shape == w.shape for t in saved)  # the weight is rebuilt in backward
    g = torch.randn_like(y)
    y.backward(g)
    x2 = x.detach().clone().requires_grad_()
    y2 = nn.functional.linear(x2, w)
    y2.backward(g)
    assert torch.equal(y, y2) and torch.equal(x.grad, x2.grad)


def test_lora_trains_over_the_packed_base(ids):
    model = _packed_nf4()
    with torch.no_grad():
        before = model(ids).logits
    packed = {n: b.clone() for n, b in model.named_buffers() if "packed_" in n}
    pm = _lora(model)
    with torch.no_grad():  # B starts at zero: the adapted model is the packed model
        assert torch.equal(pm(ids).logits, before)
    trainable = [p for p in pm.parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n, p in pm.named_parameters() if p.requires_grad)
    opt = torch.optim.AdamW(trainable, lr=2e-3)
    losses = []
    for _ in range(8):
        loss = pm(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.95
    after = {n.removeprefix("base_model.model.").replace(".base_layer", ""): b
             for n, b in pm.named_buffers()
             if "packed_" in n}
    assert all(torch.equal(packed[n], after[n]) for n in packed)  # the base stayed frozen

    reference = copy.deepcopy(pm)
    merged = merge_adapters(pm)
    lin = merged.model.layers[0].self_attn.q_proj
    assert type(lin) is nn.Linear
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, reference(ids).logits, rtol=1e-4,
                                   atol=1e-4)


def test_bad_input_is_refused():
    model = _packed_nf4()
    with pytest.raises(ValueError, match="not found in the base model|matches no module|"
                                         "Target modules"):
        peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["no_such_proj"]))
    with pytest.raises(RuntimeError, match="compressed.*frozen"):
        model.model.layers[0].self_attn.q_proj.weight = nn.Parameter(torch.zeros(64, 64))
    with pytest.raises(ValueError, match="no LoRA layers"):
        merge_adapters(model)


def test_a_compressed_model_deep_copies(ids):
    model = _packed_nf4()
    with torch.no_grad():
        expected = model(ids).logits
    twin = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(twin(ids).logits, expected)
