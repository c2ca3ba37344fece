"""A state naming quantizers the model does not have: nvidia-modelopt inserts disabled
quantizers where mopt inserts none (an Embedding's, attention's softmax bmm), and such a state
restores; an absent quantizer that is enabled or holds tensors still fails the name check."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mopt.opt as mto
import mopt.quantization as mtq


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(16, 8), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))


def _state_with_extra(extra: dict) -> tuple[dict, dict]:
    model = _model()
    mtq.quantize(model, mtq.INT8_DEFAULT_CFG, lambda m: m(torch.arange(16).view(2, 8)))
    state = mto.modelopt_state(model)
    qs = state["modelopt_state_dict"][-1][1]["metadata"]["quantizer_state"]
    template = copy.deepcopy(qs["1.weight_quantizer"])
    for name, changes in extra.items():
        qs[name] = {**copy.deepcopy(template), **changes}
    return state, model.state_dict()


def _outputs(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.arange(16).view(2, 8))


def test_disabled_quantizers_the_model_lacks_are_skipped():
    no_tensors = {"_pytorch_state_metadata": {"buffers": {}, "params": {}}}
    state, sd = _state_with_extra({"0.weight_quantizer": {"_disabled": True, **no_tensors},
                                   "0.input_quantizer": {"_disabled": True, **no_tensors}})
    reference = _model()
    mto.restore_from_modelopt_state(reference, state)
    reference.load_state_dict(sd)
    assert not hasattr(reference[0], "weight_quantizer")
    quantized = _model()
    mtq.quantize(quantized, mtq.INT8_DEFAULT_CFG, lambda m: m(torch.arange(16).view(2, 8)))
    assert torch.equal(_outputs(reference), _outputs(quantized))


@pytest.mark.parametrize("changes", [
    {"_disabled": False, "_pytorch_state_metadata": {"buffers": {}, "params": {}}},  # enabled
    {"_disabled": True},  # disabled, but the state holds an amax for it
])
def test_an_enabled_quantizer_the_model_lacks_is_refused(changes):
    state, _ = _state_with_extra({"0.weight_quantizer": changes})
    model = _model()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"not in the model: 0\.weight_quantizer"):
        mto.restore_from_modelopt_state(model, state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not mto.is_converted(model)
