"""mto save / restore of sparsified models and of sparsify -> quantize chains: the restored model
is bit-identical (masks, weights, quantizers, outputs) and its masks keep holding."""

from __future__ import annotations

import mopt.opt as mto
import mopt.quantization as mtq
import mopt.sparsity as mts
import pytest
from quantization.algorithms._sq_awq_common import calib_batches, forward_loop, fresh_model

import torch

from . import _oracles as ref


def _outputs(model):
    with torch.no_grad():
        return model(calib_batches()[:2]).logits


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("mode", ["sparse_magnitude", "wanda", "sparsegpt"])
def test_sparse_model_round_trip(tmp_path, mode):
    cfg = {} if mode == "sparse_magnitude" else {"forward_loop": forward_loop()}
    model = mts.sparsify(fresh_model(), mode, cfg)
    path = tmp_path / "sparse.safetensors"
    mto.save(model, path)
    restored = mto.restore(fresh_model(), path)
    assert [m for m, _ in mto.modelopt_state(restored)["modelopt_state_dict"]] == [mode]
    _same_state(model, restored)
    assert torch.equal(_outputs(model), _outputs(restored))
    names = {n for n, m in restored.named_modules() if mts.is_sparse(m)}
    assert names == {n for n, m in model.named_modules() if mts.is_sparse(m)}
    # the restored masks hold through a training step
    opt = torch.optim.SGD(restored.parameters(), lr=0.1, momentum=0.9)
    ids = calib_batches()[:2]
    restored(ids).logits.square().mean().backward()
    opt.step()
    for n in names:
        assert ref.holds_pattern(restored.get_submodule(n).weight, 2, 4), n


@pytest.mark.parametrize("cfg_name", ["INT8_DEFAULT_CFG", "FP8_DEFAULT_CFG", "INT4_AWQ_CFG",
                                      "NVFP4_DEFAULT_CFG", "INT8_SMOOTHQUANT_CFG"])
def test_sparsify_then_quantize_round_trip(tmp_path, cfg_name):
    loop = forward_loop()
    model = mts.sparsify(fresh_model(), "sparsegpt", {"forward_loop": loop})
    mtq.quantize(model, getattr(mtq, cfg_name), loop)
    path = tmp_path / "chain.safetensors"
    mto.save(model, path)
    restored = mto.restore(fresh_model(), path)
    modes = [m for m, _ in mto.modelopt_state(restored)["modelopt_state_dict"]]
    assert modes[:2] == ["sparsegpt", "quantize"]
    _same_state(model, restored)
    assert torch.equal(_outputs(model), _outputs(restored))
    layer = restored.get_submodule("model.layers.0.mlp.up_proj")
    assert mts.is_sparse(layer) and hasattr(layer, "weight_quantizer")


def test_exported_model_round_trip(tmp_path):
    model = mts.export(mts.sparsify(fresh_model(), "sparse_magnitude"))
    path = tmp_path / "exported.safetensors"
    mto.save(model, path)
    restored = mto.restore(fresh_model(), path)
    assert not any(isinstance(m, mts.SparseModule) for m in restored.modules())
    _same_state(model, restored)
    assert torch.equal(_outputs(model), _outputs(restored))


def test_restore_onto_a_sparsified_model_is_refused(tmp_path):
    model = mts.sparsify(fresh_model(), "sparse_magnitude")
    path = tmp_path / "s.safetensors"
    mto.save(model, path)
    other = mts.sparsify(fresh_model(), "sparse_magnitude")
    with pytest.raises(ValueError, match="already optimized"):
        mto.restore(other, path)


def test_restore_of_a_file_from_another_model_leaves_the_model_dense(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    mts.sparsify(model, "sparse_magnitude")
    path = tmp_path / "small.safetensors"
    mto.save(model, path)
    target = fresh_model()
    with pytest.raises(ValueError):
        mto.restore(target, path)
    assert not any(isinstance(m, mts.SparseModule) for m in target.modules())
