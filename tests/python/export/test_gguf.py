"""GGUF export (mopt.export.gguf): stories260K float and in llama.cpp's Q8_0 / Q4_0 / Q4_K.

Two independent checks of the written file: the `gguf` package's own dequantizer reads back
exactly mopt's fake-quantized weights (bit for bit), and llama.cpp itself (llama-cpp-python)
loads the file and reaches mopt's fake-quantized perplexity on real text within 0.5%.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import mopt.quantization as mtq
from mopt.data import default_eval_text
from mopt.export import export_gguf
from mopt.export.files import ExportError
from mopt.export.gguf import gguf_tensor_types
from mopt.models.llama2c import Llama2cTokenizer, load_llama2c

gguf = pytest.importorskip("gguf")

N_TOKENS = 384  # tokens scored in one window (stories260K's context is 512)

CONFIGS = {
    "q8_0": mtq.GGUF_Q8_0_CFG,
    "q4_0": mtq.GGUF_Q4_0_CFG,
    "q4_k": mtq.GGUF_Q4_K_CFG,
}


@pytest.fixture(scope="module")
def tokenizer():
    return Llama2cTokenizer.from_file()


@pytest.fixture(scope="module")
def tokens(tokenizer):
    return tokenizer.encode(default_eval_text(), bos=True)[:N_TOKENS]


@pytest.fixture(scope="module")
def float_model():
    return load_llama2c()


def quantized(float_model, name):
    model = copy.deepcopy(float_model)
    return mtq.quantize(model, CONFIGS[name])


def mopt_perplexity(model, tokens) -> float:
    ids = torch.tensor([tokens])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].double()
    nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="mean")
    return math.exp(nll.item())


def llama_cpp_perplexity(path, tokens) -> float:
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=len(tokens),
                          n_batch=len(tokens), verbose=False)
    try:
        llm.eval(tokens)
        logits = np.asarray(llm.scores[: len(tokens) - 1], dtype=np.float64)
    finally:
        llm.close()
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -logp[np.arange(len(tokens) - 1), tokens[1:]].mean()
    return math.exp(nll)


def _fake_quant_weight(module) -> torch.Tensor:
    with torch.no_grad():
        q = getattr(module, "weight_quantizer", None)
        return q(module.weight) if q is not None and q.is_enabled else module.weight.detach()


def test_tensor_types_follow_llama_cpp_fallbacks(float_model):
    # llama-quant.cpp: a row that is not a multiple of the block falls back (Q4_K -> Q5_0 for
    # rows of 32k, anything -> unquantized for stories260K's 172-wide down projection)
    for name, want_64 in (("q8_0", "q8_0"), ("q4_0", "q4_0"), ("q4_k", "q5_0")):
        types = gguf_tensor_types(quantized(float_model, name))
        assert types["blk.0.attn_q.weight"] == want_64
        assert types["blk.4.ffn_up.weight"] == want_64
        assert types["blk.2.ffn_down.weight"] == "f32"
        assert types["token_embd.weight"] == "f32"
        assert types["blk.0.attn_norm.weight"] == "f32"
        assert "output.weight" not in types  # tied to the embedding
    # the fake-quantized down projection is left exactly as it was, as llama.cpp keeps it
    model = quantized(float_model, "q4_0")
    down = model.model.layers[1].mlp.down_proj
    assert torch.equal(_fake_quant_weight(down), down.weight)


@pytest.mark.parametrize("name", ["q8_0", "q4_0", "q4_k"])
def test_gguf_dequantize_equals_fake_quant_bit_for_bit(float_model, tokenizer, tmp_path, name):
    from gguf.quants import dequantize

    model = quantized(float_model, name)
    path = export_gguf(model, tmp_path / f"{name}.gguf", tokenizer=tokenizer)
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    cfg = model.config
    seen = set()
    for i, layer in enumerate(model.model.layers):
        for hf, gg in (("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
                       ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"),
                       ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
                       ("mlp.down_proj", "ffn_down")):
            t = tensors[f"blk.{i}.{gg}.weight"]
            seen.add(t.tensor_type.name)
            got = torch.from_numpy(
                dequantize(np.asarray(t.data), t.tensor_type).reshape(-1).copy()
            )
            want = _fake_quant_weight(layer.get_submodule(hf))
            heads = {"attn_q": cfg.num_attention_heads, "attn_k": cfg.num_key_value_heads}
            if gg in heads:  # back to llama.cpp's interleaved RoPE rows
                n = heads[gg]
                want = want.reshape(n, 2, want.shape[0] // n // 2, -1).transpose(1, 2)
            assert torch.equal(got, want.reshape(-1)), f"blk.{i}.{gg}"
    assert seen == {"F32", {"q4_k": "Q5_0"}.get(name, name.upper())}


def _check_perplexity(path, model, tokens, rtol):
    ppl_mopt = mopt_perplexity(model, tokens)
    ppl_llama = llama_cpp_perplexity(path, tokens)
    assert abs(ppl_llama - ppl_mopt) <= rtol * ppl_mopt, (ppl_llama, ppl_mopt)
    return ppl_mopt, ppl_llama


def test_llama_cpp_runs_the_float_export(float_model, tokenizer, tokens, tmp_path):
    # checks the writer, the RoPE row order and the metadata: F32 computes the same function
    path = export_gguf(float_model, tmp_path / "f32.gguf", tokenizer=tokenizer)
    ppl, _ = _check_perplexity(path, float_model, tokens, rtol=1e-3)
    assert 2.0 < ppl < 10.0  # stories260K on TinyStories (3.6 over the full eval text)


@pytest.mark.parametrize("name", ["q8_0", "q4_0", "q4_k"])
def test_llama_cpp_perplexity_matches_fake_quant(float_model, tokenizer, tokens, tmp_path, name):
    model = quantized(float_model, name)
    path = export_gguf(model, tmp_path / f"{name}.gguf", tokenizer=tokenizer)
    _check_perplexity(path, model, tokens, rtol=5e-3)


def test_tokenizer_in_file_matches_mopt(tokenizer, float_model, tmp_path):
    path = export_gguf(float_model, tmp_path / "tok.gguf", tokenizer=tokenizer)
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["tokenizer.ggml.model"].contents() == "llama"
    pieces = reader.fields["tokenizer.ggml.tokens"].contents()
    assert len(pieces) == tokenizer.vocab_size
    assert pieces[1] == "<s>" and pieces[2] == "</s>" and pieces[3] == "<0x00>"
    assert pieces[259] == "\u2581t"  # llama2.c's " t", SentencePiece's space marker
    assert reader.fields["llama.attention.head_count_kv"].contents() == 4


def test_refuses_non_llama_model(tmp_path):
    target = tmp_path / "x.gguf"
    with pytest.raises(ExportError, match="LlamaForCausalLM"):
        export_gguf(torch.nn.Linear(4, 4), target)
    assert list(tmp_path.iterdir()) == []


def test_refuses_non_gguf_format_naming_layer_and_format(float_model, tmp_path):
    model = mtq.quantize(copy.deepcopy(float_model), mtq.MXFP4_DEFAULT_CFG)
    with pytest.raises(ExportError, match=r"model\.layers\.0\.self_attn\.q_proj"):
        export_gguf(model, tmp_path / "x.gguf")
    cfg = copy.deepcopy(mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG)
    model = mtq.quantize(copy.deepcopy(float_model), cfg,
                         forward_loop=lambda m: m(torch.tensor([[1, 5, 9]])))
    with pytest.raises(ExportError, match=r"q_proj\.weight_quantizer is in format 'int4'"):
        export_gguf(model, tmp_path / "x.gguf")
    assert list(tmp_path.iterdir()) == []


def test_refuses_existing_file(float_model, tmp_path):
    target = tmp_path / "x.gguf"
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        export_gguf(float_model, target)
    assert target.read_bytes() == b"keep me"
    assert len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("attrs, match", [
    ({"num_bits": 8, "block_sizes": {-1: 32, "type": "dynamic", "gguf": "q4_0"}}, "num_bits 4"),
    ({"num_bits": 4, "block_sizes": {-1: 32, "gguf": "q4_0"}}, "dynamic"),
    ({"num_bits": 4, "block_sizes": {-1: 64, "type": "dynamic", "gguf": "q4_k"}}, "blocks of 256"),
    ({"num_bits": 4, "block_sizes": {-1: 32, "type": "dynamic", "gguf": "q3_k"}}, "q3_k"),
])
def test_gguf_config_validation(attrs, match):
    with pytest.raises(ValueError, match=match):
        mtq.nn.TensorQuantizer(attrs)(torch.randn(4, 256))
