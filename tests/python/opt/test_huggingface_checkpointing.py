"""mto.enable_huggingface_checkpointing(): save_pretrained writes modelopt_state.json next to the
weights and from_pretrained restores the modes before the weights load.

Every round trip checks the loading report (no missing, unexpected or mismatched keys), every
tensor of the state dict, every quantizer's properties and the outputs bit for bit against the
model that was saved. Models: the shipped stories260K as a LlamaForCausalLM (tied lm_head)
calibrated on TinyStories text, and GPT-2 (Conv1D layers, tied lm_head) and BERT built offline
from tiny configs.
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

import torch

transformers = pytest.importorskip("transformers")

import mopt.opt as mto
import mopt.quantization as mtq
from mopt.opt.plugins import huggingface as hf_ckpt
from mopt.quantization.nn.modules.tensor_quantizer import SequentialQuantizer, TensorQuantizer
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaForCausalLM,
    PreTrainedModel,
)

ROOT = pathlib.Path(__file__).resolve().parents[3]
STATE_FILE = "modelopt_state.json"
VOCAB = 96


@pytest.fixture(scope="module", autouse=True)
def checkpointing():
    """Enabled for this module only: other test modules see transformers unpatched."""
    mto.enable_huggingface_checkpointing()
    yield
    hf_ckpt.disable_huggingface_checkpointing()


def _with_lm_head(cfg: dict) -> dict:
    """`cfg` without its rule that leaves lm_head unquantized (lm_head is tied to the input
    embedding in every model here)."""
    cfg = copy.deepcopy(cfg)
    del cfg["quant_cfg"]["*lm_head*"]
    return cfg


# ---------------------------------------------------------------------------------------------
# Checks


def _quantizers(model) -> dict:
    """Every quantizer's properties and tensors, by name."""
    out = {}
    for name, q in model.named_modules():
        if isinstance(q, SequentialQuantizer):
            out[name] = ("sequential", len(q))
        elif isinstance(q, TensorQuantizer):
            out[name] = (q.is_enabled, q.get_modelopt_state(), q.amax, q.pre_quant_scale)
    return out


def _assert_same_quantizers(loaded, saved) -> None:
    a, b = _quantizers(loaded), _quantizers(saved)
    assert a.keys() == b.keys() and a
    for name, props in b.items():
        if props[0] == "sequential":
            assert a[name] == props, name
            continue
        enabled, state, amax, pqs = a[name]
        assert (enabled, state) == props[:2], name
        for got, want in ((amax, props[2]), (pqs, props[3])):
            assert (got is None) == (want is None), name
            if want is not None:
                assert got.dtype == want.dtype and torch.equal(got, want), name


def _roundtrip(model, tmp_path, cls, inputs, run, save_kwargs=None, **load_kwargs):
    """save_pretrained `model`, load it back with `cls.from_pretrained(dir, ...)`; checks
    everything is equal and returns the loaded model."""
    expected = run(model, inputs)
    saved_state = json.loads(json.dumps(mto.modelopt_state(model)))
    model.save_pretrained(tmp_path, **(save_kwargs or {}))
    text = (tmp_path / STATE_FILE).read_text(encoding="utf-8")
    assert json.loads(text)["modelopt_state_dict"]  # JSON text, never a pickle
    assert not any(p.suffix in (".pth", ".pkl", ".bin") for p in tmp_path.iterdir())

    loaded, info = cls.from_pretrained(tmp_path, output_loading_info=True, **load_kwargs)
    assert type(loaded) is type(model)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info[key], (key, info[key])
    assert mto.is_converted(loaded)
    assert json.loads(json.dumps(mto.modelopt_state(loaded))) == saved_state
    _assert_same_quantizers(loaded, model)
    want, got = model.state_dict(), loaded.state_dict()
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    # the class of every module is what the saved model has (no loading-time class left over)
    assert [type(m) for m in loaded.modules()] == [type(m) for m in model.modules()]
    assert torch.equal(run(loaded, inputs), expected)
    return loaded


def _logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def _hidden(model, ids):
    with torch.no_grad():
        return model(ids).last_hidden_state


def _assert_unpatched_init(cls, init) -> None:
    assert cls.__init__ is init and not hf_ckpt._init_hooks
    assert not getattr(hf_ckpt._local, "pending", [])


# ---------------------------------------------------------------------------------------------
# stories260K (llama2.c) as a Hugging Face LlamaForCausalLM, calibrated on TinyStories text


@pytest.fixture(scope="module")
def stories():
    from conftest import SHARED_DATA
    from mopt import data as mdata
    from mopt.eval import make_forward_loop, text_calibration_batches
    from mopt.models import Llama2cTokenizer, load_llama2c

    text_file = SHARED_DATA / "tinystories_val_dev.txt"
    text = (text_file.read_text(encoding="utf-8") if text_file.exists()
            else mdata.default_calib_text())[:6000]
    tok_file = SHARED_DATA / "tok512.bin"
    tok = Llama2cTokenizer.from_file(tok_file if tok_file.exists() else None)
    ids = torch.tensor(tok.encode(text))
    model_file = SHARED_DATA / "stories260K.bin"
    model = load_llama2c(model_file if model_file.exists() else None)
    calib = text_calibration_batches(ids[:1024], 4, 48, seed=0)
    return SimpleNamespace(
        model=model,
        loop=make_forward_loop(calib, batch_size=2),
        eval_ids=ids[1024:1024 + 2 * 64].reshape(2, 64),  # text the calibration did not see
    )


# the class is named, not its from_pretrained: a bound method taken before enable bypasses it
@pytest.mark.parametrize("name, cfg, cls", [
    ("int8", mtq.INT8_DEFAULT_CFG, AutoModelForCausalLM),
    ("int8_lm_head", _with_lm_head(mtq.INT8_DEFAULT_CFG), LlamaForCausalLM),
    ("int4_awq", mtq.INT4_AWQ_CFG, AutoModelForCausalLM),
])
def test_stories260k_roundtrip(stories, tmp_path, name, cfg, cls):
    model = copy.deepcopy(stories.model)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    mtq.quantize(model, cfg, stories.loop)
    loaded = _roundtrip(model, tmp_path, cls, stories.eval_ids, _logits)
    # save_pretrained stored the tied matrix once; the loaded model ties it again
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    if name == "int8_lm_head":  # a quantizer on the tied module came back calibrated
        assert loaded.lm_head.weight_quantizer.is_enabled
        assert torch.equal(loaded.lm_head.weight_quantizer.amax, model.lm_head.weight_quantizer.amax)
    if name == "int4_awq":  # AWQ's per-channel pre-quant scales came back
        scales = [m.input_quantizer.pre_quant_scale for m in loaded.modules()
                  if hasattr(m, "input_quantizer")]
        assert any(s is not None and not torch.all(s == 1) for s in scales)


# ---------------------------------------------------------------------------------------------
# GPT-2 (Conv1D, tied lm_head) and BERT from tiny configs


def tiny_gpt2():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def tiny_bert():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=96, max_position_embeddings=64)
    return BertModel(cfg, add_pooling_layer=False).eval()


def _ids(n: int, seq: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (n, seq), generator=g)


def _loop(ids):
    def forward_loop(model):
        with torch.no_grad():
            for rows in ids.split(2):
                model(rows)

    return forward_loop


@pytest.mark.parametrize("cfg", [
    pytest.param(_with_lm_head(mtq.INT8_DEFAULT_CFG), id="int8_lm_head"),
    pytest.param(mtq.NVFP4_DEFAULT_CFG, id="nvfp4"),
    pytest.param(mtq.INT4_AWQ_CFG, id="int4_awq"),
])
def test_gpt2_roundtrip(tmp_path, cfg):
    from mopt.quantization.plugins.huggingface import QuantConv1D

    model = tiny_gpt2()
    mtq.quantize(model, cfg, _loop(_ids(4, 24, seed=1)))
    loaded = _roundtrip(model, tmp_path, AutoModelForCausalLM, _ids(2, 20, 2), _logits)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    c_attn = loaded.transformer.h[0].attn.c_attn
    assert isinstance(c_attn, QuantConv1D) and c_attn._parameters["weight"].shape == (64, 192)
    assert c_attn.weight.shape == (192, 64)  # the quantized view reads [out, in] again


@pytest.mark.parametrize("cfg", [
    pytest.param(mtq.INT8_DEFAULT_CFG, id="int8"),
    pytest.param(mtq.NVFP4_DEFAULT_CFG, id="nvfp4"),
])
def test_bert_roundtrip(tmp_path, cfg):
    model = tiny_bert()
    mtq.quantize(model, cfg, _loop(_ids(4, 16, seed=3)))
    # from_pretrained builds the model from config.json plus these arguments: without
    # add_pooling_layer=False it would have a pooler the saved model does not have
    _roundtrip(model, tmp_path, BertModel, _ids(2, 16, 4), _hidden,
               add_pooling_layer=False)


def test_sharded_checkpoint(tmp_path):
    model = tiny_gpt2()
    mtq.quantize(model, mtq.INT4_AWQ_CFG, _loop(_ids(4, 24, seed=1)))
    _roundtrip(model, tmp_path, GPT2LMHeadModel, _ids(2, 20, 2), _logits,
               save_kwargs={"max_shard_size": "60KB"})
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "model.safetensors.index.json").exists()


def test_user_subclass_roundtrip_and_init_is_given_back(tmp_path):
    class MyGPT2(GPT2LMHeadModel):
        pass

    torch.manual_seed(0)
    model = MyGPT2(tiny_gpt2().config).eval()
    mtq.quantize(model, mtq.INT8_DEFAULT_CFG, _loop(_ids(4, 24, seed=1)))
    _roundtrip(model, tmp_path, MyGPT2, _ids(2, 20, 2), _logits)
    assert "__init__" not in MyGPT2.__dict__  # the class inherits its __init__ again
    _assert_unpatched_init(MyGPT2, GPT2LMHeadModel.__init__)
    # a model of the class built directly afterwards is a plain one
    assert not mto.is_converted(MyGPT2(model.config))


# ---------------------------------------------------------------------------------------------
# Folders without a state, stale states


def test_unquantized_model_roundtrips_without_a_state_file(tmp_path):
    model = tiny_gpt2()
    ids = _ids(2, 20, 2)
    model.save_pretrained(tmp_path)
    assert not (tmp_path / STATE_FILE).exists()
    loaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert not mto.is_converted(loaded)
    assert not any(isinstance(m, TensorQuantizer) for m in loaded.modules())
    assert type(loaded.transformer.h[0].attn.c_attn) is transformers.pytorch_utils.Conv1D
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))


def test_stale_state_is_removed_and_save_modelopt_state_false(tmp_path):
    quantized = tiny_gpt2()
    mtq.quantize(quantized, mtq.INT8_DEFAULT_CFG, _loop(_ids(4, 24, seed=1)))
    quantized.save_pretrained(tmp_path)
    assert (tmp_path / STATE_FILE).exists()
    # a float model saved into the same folder: the state would describe other weights
    tiny_gpt2().save_pretrained(tmp_path)
    assert not (tmp_path / STATE_FILE).exists()
    assert not mto.is_converted(GPT2LMHeadModel.from_pretrained(tmp_path))

    quantized.save_pretrained(tmp_path / "no_state", save_modelopt_state=False)
    assert not (tmp_path / "no_state" / STATE_FILE).exists()
    quantized.save_pretrained(tmp_path / "not_main", is_main_process=False)
    assert not (tmp_path / "not_main" / STATE_FILE).exists()


# ---------------------------------------------------------------------------------------------
# Bad state files


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    """A quantized tiny GPT-2 saved with its state; tests copy it before editing."""
    folder = tmp_path_factory.mktemp("gpt2_int8")
    model = tiny_gpt2()
    mtq.quantize(model, mtq.INT8_DEFAULT_CFG, _loop(_ids(4, 24, seed=1)))
    model.save_pretrained(folder)
    return folder


def _copy(folder: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    import shutil

    return pathlib.Path(shutil.copytree(folder, dst / "ckpt"))


def _edited_state(text: str) -> str:
    state = json.loads(text)
    quantizers = state["modelopt_state_dict"][-1][1]["metadata"]["quantizer_state"]
    name = next(iter(quantizers))
    quantizers[name.replace("transformer.", "decoder.")] = quantizers.pop(name)
    return json.dumps(state)


@pytest.mark.parametrize("content", [
    pytest.param(b"{\"modelopt_state_dict\": [[\"quantize\"", id="truncated"),
    pytest.param(b"\x80\x04\x95", id="pickle-bytes"),
    pytest.param(b"[]", id="not-an-object"),
    pytest.param(lambda t: t.replace('"quantize"', '"quantise"', 1), id="unknown-mode"),
    pytest.param(_edited_state, id="other-quantizer-names"),
])
def test_bad_state_file_raises_naming_it(gpt2_folder, tmp_path, content):
    folder = _copy(gpt2_folder, tmp_path)
    state = folder / STATE_FILE
    if callable(content):
        state.write_text(content(state.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        state.write_bytes(content)
    init = GPT2LMHeadModel.__init__
    with pytest.raises(ValueError, match=re.escape(str(state))):
        AutoModelForCausalLM.from_pretrained(folder)
    _assert_unpatched_init(GPT2LMHeadModel, init)
    # nothing was left half done: the intact checkpoint still loads
    assert mto.is_converted(AutoModelForCausalLM.from_pretrained(gpt2_folder))


def test_bad_amax_in_the_weights_raises_naming_the_quantizer(gpt2_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(gpt2_folder, tmp_path)
    weights = load_file(str(folder / "model.safetensors"))
    key = "transformer.h.1.mlp.c_fc.input_quantizer._amax"
    weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"transformer\.h\.1\.mlp\.c_fc\.input_quantizer\._amax"):
        GPT2LMHeadModel.from_pretrained(folder)


# ---------------------------------------------------------------------------------------------
# enable / disable


def test_enable_is_idempotent_and_disable_undoes_it(gpt2_folder, tmp_path):
    patched = {n: PreTrainedModel.__dict__[n] for n in ("from_pretrained", "save_pretrained")}
    mto.enable_huggingface_checkpointing()
    assert {n: PreTrainedModel.__dict__[n] for n in patched} == patched
    assert hf_ckpt.is_huggingface_checkpointing_enabled()
    try:
        hf_ckpt.disable_huggingface_checkpointing()
        hf_ckpt.disable_huggingface_checkpointing()  # a no-op once disabled
        assert not hf_ckpt.is_huggingface_checkpointing_enabled()
        for name, patch in patched.items():
            original = PreTrainedModel.__dict__[name]
            assert original is not patch
            assert "mopt" not in getattr(original, "__func__", original).__module__
        model = tiny_gpt2()
        mtq.quantize(model, mtq.INT8_DEFAULT_CFG, _loop(_ids(4, 24, seed=1)))
        model.save_pretrained(tmp_path)
        assert not (tmp_path / STATE_FILE).exists()
        # transformers alone loads the float weights and reports the quantizer tensors
        loaded, info = GPT2LMHeadModel.from_pretrained(gpt2_folder, output_loading_info=True)
        assert not mto.is_converted(loaded)
        assert info["unexpected_keys"] and all("_quantizer." in k for k in info["unexpected_keys"])
    finally:
        mto.enable_huggingface_checkpointing()
    assert mto.is_converted(GPT2LMHeadModel.from_pretrained(gpt2_folder))


def test_import_does_not_import_transformers():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "python"), os.environ.get("PYTHONPATH", "")])}
    code = "import sys, mopt.opt as mto; print('transformers' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False"]
